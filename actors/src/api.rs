//! The wire API between `x0tta6bl4-ebpf` (CLI) and `x0tta6bl4-ebpfd` (daemon).
//!
//! A frame is a 4-byte big-endian length, then a version byte, then a bincode 2 (serde)
//! payload; the length counts the version byte and the payload. One request gets one
//! response. These types also define the CLI's `--json` output, so their field names are a
//! stable contract: add fields, never rename them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Version byte of every frame. Bump it when a change to these types is not compatible.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest request frame (version byte + payload) the daemon accepts: what protects it from
/// a client's mistake.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Largest response frame the CLI accepts: the daemon is trusted, and a listing of a large
/// rule set is bigger than a request may be.
pub const MAX_RESPONSE_LEN: usize = 64 << 20;
/// Length prefix + version byte.
pub const FRAME_HEADER_LEN: usize = 5;
/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/x0tta6bl4/ebpf.sock";
/// Rules per frame when a large rule set is sent in `Stage` chunks: far below the frame cap
/// even for rules with two IPv6 CIDRs and port ranges.
pub const RULES_PER_FRAME: usize = 4_000;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native XDP in the driver.
    Drv,
    /// Generic XDP on the skb path; works on every interface.
    Skb,
    /// Offloaded to the NIC.
    Hw,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Drv => "drv",
            AttachMode::Skb => "skb",
            AttachMode::Hw => "hw",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drv" | "native" => Ok(AttachMode::Drv),
            "skb" | "generic" => Ok(AttachMode::Skb),
            "hw" | "offload" => Ok(AttachMode::Hw),
            other => Err(format!("unknown attach mode {other:?}: use drv, skb or hw")),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProgramType {
    Xdp,
    Tc,
    CgroupSkb,
    SocketFilter,
    Tracepoint,
    Other,
}

impl ProgramType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProgramType::Xdp => "xdp",
            ProgramType::Tc => "tc",
            ProgramType::CgroupSkb => "cgroup_skb",
            ProgramType::SocketFilter => "socket_filter",
            ProgramType::Tracepoint => "tracepoint",
            ProgramType::Other => "other",
        }
    }
}

impl fmt::Display for ProgramType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    /// Loads a built-in program by name or a `.o` from `programs_dir`; `mode` becomes the
    /// program's default attach mode.
    Load {
        name: String,
        mode: Option<AttachMode>,
    },
    /// Attaches a loaded program: an XDP program to `interface` (in `mode`); a TC program to
    /// `interface`'s TCX hook in `direction`; a socket filter to an AF_PACKET socket the
    /// daemon opens on `interface`; a cgroup_skb program to `cgroup` (then `interface` is
    /// empty).
    Attach {
        program_id: String,
        interface: String,
        mode: Option<AttachMode>,
        /// Replace an XDP program on the interface that this daemon does not manage.
        force: bool,
        /// A cgroup v2 directory, for cgroup_skb programs.
        cgroup: Option<String>,
        /// `category/name`, for tracepoint programs.
        tracepoint: Option<String>,
        /// `cgroup_counter` only: drop the packets of the cgroup's sockets (counted).
        deny: bool,
        /// TC programs: ingress (the default) or egress.
        direction: Option<Direction>,
        /// `socket_counter` only: pass one packet in N up to the daemon as a sample.
        sample_every: Option<u32>,
    },
    Detach {
        program_id: String,
        interface: String,
        cgroup: Option<String>,
        tracepoint: Option<String>,
        direction: Option<Direction>,
    },
    /// Attachments other than XDP (TC, cgroup_skb, socket filter) with their counters.
    Hooks,
    /// The mesh routes of `xdp_router`: `None` lists them, `Some` replaces them all.
    Routes(Option<Vec<Route>>),
    Unload {
        program_id: String,
    },
    Programs,
    Stats,
    Health,
    Rules(RulesRequest),
    Flows(FlowQuery),
    Debug(DebugRequest),
    Alerts,
    /// The same values `/metrics` serves.
    Metrics,
    /// What the TCP probe saw, per peer.
    Tcp,
    /// Metrics exported from the maps of loaded programs (`metrics add|list|remove`).
    CustomMetrics(CustomMetricsRequest),
    /// The MAPE-K loop: what it sees now and what it did.
    Mapek,
    /// The supervision tree: every actor, its state, restarts and latest failure.
    Supervisor,
    /// The TC shaper (`shaper set|show|clear`).
    Shaper(ShaperRequest),
}

/// `shaper set|show|clear`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ShaperRequest {
    /// Shapes `interface`'s egress to `rate` ("100mbit") with queueing delay bounded by
    /// `latency` ("50ms"); replaces the interface's earlier setting.
    Set {
        interface: String,
        rate: String,
        latency: String,
    },
    Show,
    Clear {
        interface: String,
    },
}

/// One shaped interface: its setting, what the classifier put into the class, and what the
/// class's queue did with it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ShaperStatus {
    pub interface: String,
    pub rate_bits_per_second: u64,
    pub latency_target_us: u64,
    /// How far the class may run ahead of its rate (bytes).
    pub burst_bytes: u64,
    /// The class's queue: rate × latency target (bytes), so that no packet waits longer.
    pub queue_limit_bytes: u64,
    /// Packets and bytes the classifier put into the class.
    pub classified_packets: u64,
    pub classified_bytes: u64,
    /// From the class's queue: sent, dropped (queue full: the latency bound at work), waiting.
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub dropped_packets: u64,
    pub backlog_bytes: u64,
    /// `active`, or what is wrong (the daemon retries).
    pub state: String,
}

/// One actor of the supervision tree (or beside it), in tree order.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ActorNode {
    pub name: String,
    /// 0 for the root and the actors beside the tree, 1 for its children, …
    pub depth: u8,
    /// What it is: `supervisor (rest_for_one)`, `worker`, …
    pub role: String,
    /// `running`, `restarting`, `off`, or why it is not running.
    pub state: String,
    pub restarts: u64,
    /// RFC 3339, and why it last died.
    pub last_failure_at: Option<String>,
    pub last_failure: Option<String>,
}

/// What the MAPE-K loop did about a symptom, and whether it helped.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MapekEntry {
    /// RFC 3339, UTC.
    pub at: String,
    /// What was wrong, e.g. `flow_table_pressure:xdp_firewall-1`.
    pub symptom: String,
    /// What was done: `age_out_flows`, `retry_attachment`, `escalate`, `observe`.
    pub action: String,
    /// Why this action (which step of the policy, and what the knowledge said).
    pub reason: String,
    /// What the action reported (e.g. how many flows it removed).
    pub detail: String,
    /// `pending` until the next cycle, then `resolved` (the symptom is gone) or `persisted`.
    pub outcome: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MapekReport {
    /// False with `enable_mapek_integration = false`.
    pub enabled: bool,
    pub interval_seconds: f64,
    pub cycles: u64,
    /// Symptoms found by the latest cycle.
    pub symptoms: Vec<String>,
    /// The knowledge: symptom → action → outcome, oldest first (bounded).
    pub history: Vec<MapekEntry>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum CustomMetricsRequest {
    Add(CustomMetric),
    List,
    Remove { name: String },
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    Counter,
    Gauge,
}

impl fmt::Display for MetricKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
        })
    }
}

/// A metric whose series are the entries of a map of a loaded program: each key becomes the
/// label values, each value (CPUs summed) the sample.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CustomMetric {
    pub name: String,
    pub kind: MetricKind,
    pub description: String,
    /// `name` or `name:type` (u8, u16, u32, u64, be16, be32, ipv4, ipv6, ifindex, hex): how
    /// the key's bytes, in order, become label values.
    pub labels: Vec<String>,
    pub program_id: String,
    pub map: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CustomMetricStatus {
    pub metric: CustomMetric,
    /// Series it exports now; `None` with `problem` when its map cannot be read.
    pub series: Option<usize>,
    pub problem: Option<String>,
}

/// Connections this host opened to one peer, as the TCP probe saw them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TcpPeer {
    pub peer: std::net::IpAddr,
    pub port: u16,
    pub connects: u64,
    /// Mean SYN_SENT → ESTABLISHED time, µs.
    pub connect_avg_us: f64,
    pub failed: u64,
    pub resets: u64,
    pub closes: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TcpReport {
    /// False when no `tcp_state` program is loaded.
    pub enabled: bool,
    pub peers: Vec<TcpPeer>,
    /// Connects by log2 of their nanoseconds.
    pub connect_latency_ns_log2: Vec<u64>,
}

/// One value of a metric (histograms give their `_count` and `_sum`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// RFC 3339, UTC.
    pub taken_at: String,
    pub samples: Vec<MetricSample>,
    /// The Prometheus text format, as `/metrics` serves it.
    pub prometheus_text: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Critical,
}

/// A condition the daemon watches for; active while it holds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// `high_latency`, `program_load_failure`, `attach_failure`, `map_memory`, `drop_rate`.
    pub id: String,
    pub severity: Severity,
    /// RFC 3339, UTC: when it became active.
    pub since: String,
    pub message: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum DebugRequest {
    /// Sets the daemon's log filter (`tracing` syntax, e.g. `debug`, `actors=trace`); `None`
    /// goes back to the level it started with.
    LogLevel(Option<String>),
    /// Makes an actor panic, to watch its supervisor repair it: `loader`, `interfaces`, or
    /// `attach:IFACE`. Refused unless the daemon runs with `--enable-fault-injection`.
    Crash(String),
}

/// Which flows to list; every filter given must match.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct FlowQuery {
    pub source: Option<Cidr>,
    pub dest: Option<Cidr>,
    pub protocol: Option<Protocol>,
    /// Either port.
    pub port: Option<u16>,
    pub source_port: Option<u16>,
    pub dest_port: Option<u16>,
    pub min_packets: Option<u64>,
    pub verdict: Option<FlowVerdict>,
    pub interface: Option<String>,
    pub sort: FlowSort,
    pub limit: Option<usize>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FlowVerdict {
    Forwarded,
    Dropped,
}

impl fmt::Display for FlowVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FlowVerdict::Forwarded => "forwarded",
            FlowVerdict::Dropped => "dropped",
        })
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FlowSort {
    #[default]
    Packets,
    Bytes,
    LastSeen,
}

/// One flow, as `flows --json` prints it (the first four names are the original design's).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FlowRecord {
    pub source: std::net::IpAddr,
    pub destination: std::net::IpAddr,
    pub source_port: u16,
    pub destination_port: u16,
    pub protocol: String,
    pub packets: u64,
    pub bytes: u64,
    /// RFC 3339, UTC, with nanoseconds.
    pub first_seen: String,
    pub last_seen: String,
    pub verdict: FlowVerdict,
    pub interface: String,
    pub direction: String,
    /// TCP flags seen, e.g. `SYN|ACK`; empty for other protocols.
    pub tcp_flags: String,
    pub program_id: String,
    /// Rates between the daemon's last two reads of the table (0 until it has read it twice
    /// while the flow was present).
    pub packets_per_second: f64,
    pub bytes_per_second: f64,
    /// Nanoseconds since boot of the last packet, for sorting in the daemon; not sent (the
    /// same time is in `last_seen`).
    #[serde(skip)]
    pub last_seen_ns: u64,
}

/// The flow table of one loaded firewall.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FlowTable {
    pub program_id: String,
    /// The table's size (`flow_table_size`): how many flows it is sized to track. Each
    /// CPU's cache in front of it holds some flows that are not (yet) in the table, which is
    /// slack; fill (`entries` / `capacity`) counts every tracked flow.
    pub capacity: u32,
    /// Flows tracked: in the table, a CPU's cache, or both.
    pub entries: u64,
    /// Flows with an entry in the table itself (what `capacity` limits).
    #[serde(default)]
    pub table_entries: u64,
    pub inserts: u64,
    pub insert_failures: u64,
    /// Flows the LRU pushed out to make room (inserts − table entries − removed from it).
    pub evicted: u64,
    /// Flows the daemon removed after `flow_idle_timeout_seconds` without a packet.
    pub aged_out: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FlowList {
    /// False when the daemon runs with `enable_flow_observability = false`.
    pub enabled: bool,
    pub flows: Vec<FlowRecord>,
    pub tables: Vec<FlowTable>,
}

impl FlowQuery {
    pub fn matches(&self, f: &FlowFacts<'_>) -> bool {
        self.source.is_none_or(|c| c.contains(&f.source))
            && self.dest.is_none_or(|c| c.contains(&f.destination))
            && self
                .protocol
                .is_none_or(|p| p.number().is_none_or(|n| n == f.protocol))
            && self
                .port
                .is_none_or(|p| p == f.source_port || p == f.destination_port)
            && self.source_port.is_none_or(|p| p == f.source_port)
            && self.dest_port.is_none_or(|p| p == f.destination_port)
            && self.min_packets.is_none_or(|n| f.packets >= n)
            && self.verdict.is_none_or(|v| v == f.verdict)
            && self.interface.as_deref().is_none_or(|i| i == f.interface)
    }
}

/// What a `FlowQuery` filters a flow on.
#[derive(Debug, Clone, Copy)]
pub struct FlowFacts<'a> {
    pub source: std::net::IpAddr,
    pub destination: std::net::IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    pub source_port: u16,
    pub destination_port: u16,
    pub packets: u64,
    pub verdict: FlowVerdict,
    pub interface: &'a str,
}

/// `SYN|ACK` from the TCP flag byte.
pub fn tcp_flag_names(flags: u32) -> String {
    const NAMES: [(u32, &str); 8] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

/// The firewall rule set of the daemon (applied to every loaded `xdp_firewall`). Rule numbers
/// are 1-based, as `rules list` shows them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum RulesRequest {
    List,
    /// Inserts before rule `position` (1-based); appends when `None`.
    Add {
        rule: FirewallRule,
        position: Option<usize>,
    },
    Delete {
        number: usize,
    },
    /// Replaces the whole rule set (and the default policy, when given). With `staged`, the
    /// rules staged under that token come first: a set too large for one frame travels in
    /// `Stage` chunks and still replaces the old set in one step.
    Apply {
        rules: Vec<FirewallRule>,
        default_policy: Option<RuleAction>,
        staged: Option<u64>,
    },
    /// Appends rules to those staged under `token`, for a later `Apply`. Staged rules not
    /// applied within a minute are discarded.
    Stage {
        token: u64,
        rules: Vec<FirewallRule>,
    },
    Explain(PacketQuery),
}

/// A packet to explain: what the firewall would do with it and why.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PacketQuery {
    pub source: std::net::IpAddr,
    pub dest: std::net::IpAddr,
    pub protocol: Protocol,
    pub source_port: Option<u16>,
    pub dest_port: Option<u16>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    pub default_policy: RuleAction,
    pub rules: Vec<FirewallRule>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub action: RuleAction,
    /// The deciding rule's number (1-based); `None` when the default policy decided.
    pub rule_number: Option<usize>,
    pub rule: Option<FirewallRule>,
    /// Later rules that match too but do not decide, by number.
    pub also_matching: Vec<usize>,
    pub reason: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Response {
    Status(Status),
    Loaded(ProgramInfo),
    Attached(Attachment),
    Detached(Attachment),
    Unloaded {
        program_id: String,
    },
    Programs(Vec<ProgramInfo>),
    Stats(Vec<ProgramStats>),
    Health(Health),
    Rules(RuleSet),
    Explained(Explanation),
    Flows(FlowList),
    /// A debug request was carried out; the text says what happened.
    Done(String),
    Alerts(Vec<Alert>),
    Metrics(MetricsSnapshot),
    Tcp(TcpReport),
    CustomMetrics(Vec<CustomMetricStatus>),
    Mapek(MapekReport),
    Supervisor(Vec<ActorNode>),
    Shaper(Vec<ShaperStatus>),
    Hooked(Hook),
    Unhooked(Hook),
    Hooks(Vec<HookStats>),
    Routes(Vec<RouteStatus>),
    Error(ApiError),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub program_id: String,
    pub interface: String,
    /// The mode the program runs in.
    pub mode: AttachMode,
    pub program_type: ProgramType,
    /// The mode that was asked for; differs from `mode` when driver mode failed and the
    /// attachment degraded to skb (`enable_dynamic_fallback`).
    pub requested_mode: AttachMode,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub version: String,
    pub uptime_seconds: u64,
    pub programs_loaded: usize,
    pub attachments: Vec<Attachment>,
    pub processed_packets: u64,
    pub passed_packets: u64,
    pub blocked_packets: u64,
    /// What the daemon found in the kernel when it started (or its actors restarted) and
    /// what it did about it.
    pub reconciliation: Vec<ReconcileStep>,
}

/// One thing reconciliation did.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReconcileStep {
    /// RFC 3339, UTC.
    pub at: String,
    /// `adopted` (taken over as it was), `recreated` (gone; made anew), `removed` (ours, no
    /// longer wanted), `foreign` (not ours: left alone), `failed`.
    pub kind: String,
    pub detail: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAttachment {
    pub interface: String,
    pub mode: AttachMode,
    pub requested_mode: AttachMode,
}

/// One mesh route: packets to `prefix` leave through `interface` to `next_hop_mac`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// IPv4 prefix, `10.3.0.0/24` (a bare address is a /32).
    pub prefix: String,
    pub interface: String,
    /// The next hop's MAC on `interface`, `aa:bb:cc:dd:ee:ff`.
    pub next_hop_mac: String,
}

/// A route and what the fast path forwarded by it since the routes were last updated.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RouteStatus {
    pub route: Route,
    pub packets: u64,
    pub bytes: u64,
}

/// Which way packets go through a TC or cgroup hook.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// Where a hook attachment is.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum HookTarget {
    /// A cgroup v2 directory; both directions unless the program is for one.
    Cgroup { path: String },
    /// The TCX hook of an interface.
    Tc {
        interface: String,
        direction: Direction,
    },
    /// An AF_PACKET socket the daemon holds open on an interface.
    Socket { interface: String },
    /// A kernel tracepoint, `category/name` (a user's tracepoint program).
    Tracepoint { category: String, name: String },
}

impl std::fmt::Display for HookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookTarget::Cgroup { path } => write!(f, "cgroup {path}"),
            HookTarget::Tc {
                interface,
                direction,
            } => write!(f, "tcx {direction} on {interface}"),
            HookTarget::Socket { interface } => write!(f, "AF_PACKET socket on {interface}"),
            HookTarget::Tracepoint { category, name } => write!(f, "tracepoint {category}/{name}"),
        }
    }
}

/// A program attached somewhere other than an interface's XDP hook.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub program_id: String,
    pub program_type: ProgramType,
    pub target: HookTarget,
    /// cgroup_skb: the directions attached.
    pub directions: Vec<Direction>,
    /// `cgroup_counter`: the cgroup's packets are dropped.
    pub deny: bool,
    /// `socket_counter`: one packet in N is passed up as a sample (0: none).
    pub sample_every: u32,
}

/// One line of a hook's counters: what (`cgroup /x egress`, `veth0 udp`) and how much.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HookCounter {
    pub what: String,
    pub packets: u64,
    pub bytes: u64,
    /// Packets dropped by a deny.
    pub denied: u64,
}

/// A hook and what its program counted (programs the daemon knows: `cgroup_counter`,
/// `socket_counter`; others' maps can be exported with `metrics add`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HookStats {
    pub hook: Hook,
    pub counters: Vec<HookCounter>,
    /// Socket filters: samples the daemon received on the socket, and their bytes.
    pub samples: u64,
    pub sample_bytes: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProgramInfo {
    /// Stable, readable id: `<name>-<n>`.
    pub id: String,
    /// The program's name in its object (the function name).
    pub name: String,
    pub program_type: ProgramType,
    /// The kernel's program id, as `bpftool prog show` lists it.
    pub kernel_id: u32,
    /// RFC 3339, UTC.
    pub loaded_at: String,
    /// Where the program came from: `built-in` or the object file's path.
    pub source: String,
    /// The attach mode used when `attach` is given none.
    pub default_mode: AttachMode,
    pub attachments: Vec<InterfaceAttachment>,
    /// Attachments other than XDP: cgroups, TCX hooks, sockets.
    #[serde(default)]
    pub hooks: Vec<Hook>,
    /// Names of the program's maps.
    pub maps: Vec<String>,
}

/// Counters of one program, summed over CPUs. Programs without the firewall's counter map
/// report `counters: None`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub program_id: String,
    pub interfaces: Vec<String>,
    pub counters: Option<PacketCounters>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct PacketCounters {
    pub processed_packets: u64,
    pub processed_bytes: u64,
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    /// Drop reason (`malformed`, `too_many_headers`, `rule`, `default_policy`) → packets.
    pub dropped_by_reason: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: HealthStatus,
    pub message: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The worst status of any check.
    pub status: HealthStatus,
    pub checks: BTreeMap<String, Check>,
}

impl Health {
    pub fn from_checks(checks: BTreeMap<String, Check>) -> Self {
        let status = checks
            .values()
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Healthy);
        Health { status, checks }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The frame could not be read: bad length, version or payload.
    Protocol,
    /// The request is well-formed but asks for something impossible.
    InvalidRequest,
    UnknownProgram,
    UnknownInterface,
    InvalidObject,
    /// The kernel or the device cannot do it (e.g. native XDP on a driver without it).
    Unsupported,
    /// Something else holds the resource.
    Busy,
    PermissionDenied,
    Internal,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

/// A firewall rule. The original design's per-program JSON writes them as
/// `{"action": "drop", "source_ip": "192.168.1.100"}` and
/// `{"action": "allow", "protocol": "tcp", "port": 443}`; beyond that a rule may give
/// addresses as CIDRs, a destination address, source and destination ports or port ranges
/// (`"1000-2000"`), and combine all of them. Rules are evaluated in order; the first that
/// matches decides.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct FirewallRule {
    pub action: RuleAction,
    #[serde(default)]
    pub source_ip: Option<Cidr>,
    #[serde(default)]
    pub dest_ip: Option<Cidr>,
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// The destination port, as the original design writes it; same as `dest_port`.
    #[serde(default)]
    pub port: Option<PortRange>,
    #[serde(default)]
    pub source_port: Option<PortRange>,
    #[serde(default)]
    pub dest_port: Option<PortRange>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    #[default]
    #[serde(alias = "pass", alias = "accept")]
    Allow,
    #[serde(alias = "deny", alias = "block")]
    Drop,
}

impl fmt::Display for RuleAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuleAction::Allow => "allow",
            RuleAction::Drop => "drop",
        })
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    /// Any protocol: the same as leaving `protocol` out.
    Any,
}

impl Protocol {
    /// The IP protocol number; `None` for `any`.
    pub fn number(self) -> Option<u8> {
        match self {
            Protocol::Icmp => Some(1),
            Protocol::Tcp => Some(6),
            Protocol::Udp => Some(17),
            Protocol::Icmpv6 => Some(58),
            Protocol::Any => None,
        }
    }

    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp | Protocol::Any)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Icmpv6 => "icmpv6",
            Protocol::Any => "any",
        })
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" | "6" => Ok(Protocol::Tcp),
            "udp" | "17" => Ok(Protocol::Udp),
            "icmp" | "1" => Ok(Protocol::Icmp),
            "icmpv6" | "ipv6-icmp" | "58" => Ok(Protocol::Icmpv6),
            "any" | "all" => Ok(Protocol::Any),
            other => Err(format!(
                "unknown protocol {other:?}: use tcp, udp, icmp, icmpv6 or any"
            )),
        }
    }
}

/// An IPv4 or IPv6 network; a bare address means the one host (`/32`, `/128`). Host bits
/// below the prefix are cleared (`10.1.2.3/8` is `10.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr(pub ipnet::IpNet);

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Cidr(net.trunc()));
        }
        s.parse::<std::net::IpAddr>()
            .map(|ip| Cidr(ipnet::IpNet::from(ip)))
            .map_err(|_| {
                format!("{s:?} is not an IP address or CIDR (e.g. 10.0.0.1, 10.0.0.0/8, fd00::/64)")
            })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.prefix_len() == self.0.max_prefix_len() {
            write!(f, "{}", self.0.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl Cidr {
    pub fn contains(&self, ip: &std::net::IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A port or an inclusive range of ports, `443` or `"1000-2000"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port or port range (e.g. 443 or 1000-2000)");
        let (a, b) = match s.trim().split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let first: u16 = a.parse().map_err(|_| bad())?;
        let last: u16 = b.parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(format!("{s:?}: ports run from 1 to 65535, low to high"));
        }
        Ok(PortRange { first, last })
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            if self.first == self.last {
                s.serialize_u16(self.first)
            } else {
                s.collect_str(self)
            }
        } else {
            (self.first, self.last).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // JSON and TOML write `443` or `"1000-2000"`; the binary wire format (which cannot
        // ask "number or string?") carries the pair.
        if !d.is_human_readable() {
            let (first, last) = <(u16, u16)>::deserialize(d)?;
            return Ok(PortRange { first, last });
        }
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (443) or a port range (\"1000-2000\")")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortRange, E> {
                match u16::try_from(v) {
                    Ok(p) if p > 0 => Ok(PortRange::single(p)),
                    _ => Err(E::custom(format!("port {v} is outside 1-65535"))),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortRange, E> {
                self.visit_u64(
                    u64::try_from(v)
                        .map_err(|_| E::custom(format!("port {v} is outside 1-65535")))?,
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl FirewallRule {
    /// The destination port constraint, from `port` or `dest_port`.
    pub fn dest_ports(&self) -> Option<PortRange> {
        self.dest_port.or(self.port)
    }

    /// The protocol constraint, `None` for any.
    pub fn protocol_number(&self) -> Option<u8> {
        self.protocol.and_then(Protocol::number)
    }

    /// Checks that the rule can match something and means one thing.
    pub fn validate(&self) -> Result<(), String> {
        if self.port.is_some() && self.dest_port.is_some() {
            return Err("\"port\" and \"dest_port\" are the same thing: give one".into());
        }
        let has_ports = self.dest_ports().is_some() || self.source_port.is_some();
        if let Some(p) = self.protocol
            && has_ports
            && !p.has_ports()
        {
            return Err(format!(
                "{p} has no ports: remove the port from the rule, or use tcp or udp"
            ));
        }
        if let (Some(s), Some(d)) = (self.source_ip, self.dest_ip)
            && s.0.addr().is_ipv4() != d.0.addr().is_ipv4()
        {
            return Err(format!(
                "source {s} and destination {d} are of different IP versions: no packet can match"
            ));
        }
        let family = self
            .source_ip
            .or(self.dest_ip)
            .map(|c| c.0.addr().is_ipv4());
        match (self.protocol, family) {
            (Some(Protocol::Icmp), Some(false)) => {
                Err("icmp is IPv4's; for IPv6 addresses use icmpv6".into())
            }
            (Some(Protocol::Icmpv6), Some(true)) => {
                Err("icmpv6 is IPv6's; for IPv4 addresses use icmp".into())
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for FirewallRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.action)?;
        if let Some(p) = self.protocol {
            write!(f, " {p}")?;
        }
        if let Some(s) = self.source_ip {
            write!(f, " from {s}")?;
        }
        if let Some(p) = self.source_port {
            write!(f, " sport {p}")?;
        }
        if let Some(d) = self.dest_ip {
            write!(f, " to {d}")?;
        }
        if let Some(p) = self.dest_ports() {
            write!(f, " dport {p}")?;
        }
        if self.source_ip.is_none()
            && self.dest_ip.is_none()
            && self.protocol.is_none()
            && self.source_port.is_none()
            && self.dest_ports().is_none()
        {
            write!(f, " everything")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is larger than the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("empty frame (no version byte)")]
    Empty,
    #[error(
        "protocol version {got} is not supported (this side speaks {PROTOCOL_VERSION}): use a CLI and daemon of the same release"
    )]
    Version { got: u8 },
    #[error("undecodable payload: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("unencodable payload: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

fn bincode_config() -> impl bincode::config::Config {
    // The frame length is checked against the caller's limit before any of it is read.
    bincode::config::standard().with_limit::<MAX_RESPONSE_LEN>()
}

/// Encodes a request as a whole frame: length, version, payload.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    encode_frame_within(value, MAX_FRAME_LEN)
}

/// Encodes a response, which may be larger than a request.
pub fn encode_response(value: &Response) -> Result<Vec<u8>, FrameError> {
    encode_frame_within(value, MAX_RESPONSE_LEN)
}

fn encode_frame_within<T: Serialize>(value: &T, limit: usize) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0u8; FRAME_HEADER_LEN];
    frame[4] = PROTOCOL_VERSION;
    bincode::serde::encode_into_std_write(value, &mut frame, bincode_config())?;
    let len = frame.len() - 4;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// Reads the length prefix of a frame that may be at most `limit` bytes (`MAX_FRAME_LEN`
/// for requests, `MAX_RESPONSE_LEN` for responses); the caller then reads that many bytes and
/// calls [`decode_body`].
pub fn frame_len(prefix: [u8; 4], limit: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    Ok(len)
}

/// Decodes the body of a frame (version byte + payload).
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (&version, payload) = body.split_first().ok_or(FrameError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version { got: version });
    }
    let (value, _) = bincode::serde::decode_from_slice(payload, bincode_config())?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + fmt::Debug>(v: T) {
        let frame = encode_frame(&v).unwrap();
        let len = frame_len(frame[..4].try_into().unwrap(), MAX_FRAME_LEN).unwrap();
        assert_eq!(len, frame.len() - 4);
        let back: T = decode_body(&frame[4..]).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn requests_round_trip() {
        round_trip(Request::Status);
        round_trip(Request::Load {
            name: "xdp_firewall".into(),
            mode: Some(AttachMode::Skb),
        });
        round_trip(Request::Attach {
            program_id: "xdp_firewall-1".into(),
            interface: "veth0".into(),
            mode: None,
            force: false,
            cgroup: None,
            tracepoint: None,
            deny: false,
            direction: None,
            sample_every: None,
        });
        round_trip(Request::Attach {
            program_id: "cgroup_counter-1".into(),
            interface: String::new(),
            mode: None,
            force: false,
            cgroup: Some("/sys/fs/cgroup/unified/app".into()),
            tracepoint: None,
            deny: true,
            direction: Some(Direction::Egress),
            sample_every: Some(10),
        });
    }

    #[test]
    fn responses_round_trip() {
        let mut checks = BTreeMap::new();
        checks.insert(
            "programs".to_string(),
            Check {
                status: HealthStatus::Degraded,
                message: "x".into(),
            },
        );
        round_trip(Response::Health(Health::from_checks(checks)));
        round_trip(Response::Error(ApiError::new(
            ErrorKind::UnknownInterface,
            "no",
        )));
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        let prefix = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(
            frame_len(prefix, MAX_FRAME_LEN),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(
            frame_len(prefix, MAX_RESPONSE_LEN).is_ok(),
            "a response may be larger"
        );
        assert!(matches!(
            frame_len([0; 4], MAX_FRAME_LEN),
            Err(FrameError::Empty)
        ));
    }

    #[test]
    fn wrong_version_and_garbage_are_errors() {
        let mut frame = encode_frame(&Request::Status).unwrap();
        frame[4] = 99;
        assert!(matches!(
            decode_body::<Request>(&frame[4..]),
            Err(FrameError::Version { got: 99 })
        ));
        assert!(matches!(
            decode_body::<Request>(&[PROTOCOL_VERSION, 0xff, 0xff, 0xff]),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn health_status_is_the_worst_check() {
        let mut checks = BTreeMap::new();
        for (name, status) in [("a", HealthStatus::Healthy), ("b", HealthStatus::Unhealthy)] {
            checks.insert(
                name.to_string(),
                Check {
                    status,
                    message: String::new(),
                },
            );
        }
        assert_eq!(Health::from_checks(checks).status, HealthStatus::Unhealthy);
        assert_eq!(
            Health::from_checks(BTreeMap::new()).status,
            HealthStatus::Healthy
        );
    }

    #[test]
    fn rules_from_the_original_design_parse_and_validate() {
        let rules: Vec<FirewallRule> = serde_json::from_str(
            r#"[{"action": "drop", "source_ip": "192.168.1.100"},
                {"action": "allow", "protocol": "tcp", "port": 443}]"#,
        )
        .unwrap();
        assert!(rules.iter().all(|r| r.validate().is_ok()));
        assert_eq!(rules[0].source_ip.unwrap().to_string(), "192.168.1.100");
        assert_eq!(rules[1].dest_ports(), Some(PortRange::single(443)));
        assert_eq!(rules[1].to_string(), "allow tcp dport 443");
    }

    #[test]
    fn cidrs_ranges_and_combinations_parse() {
        let r: FirewallRule = serde_json::from_str(
            r#"{"action": "deny", "source_ip": "10.1.2.3/8", "dest_ip": "10.9.0.0/16",
                "protocol": "udp", "source_port": "1000-2000", "dest_port": 53}"#,
        )
        .unwrap();
        assert_eq!(
            r.source_ip.unwrap().to_string(),
            "10.0.0.0/8",
            "host bits cleared"
        );
        assert_eq!(
            r.source_port,
            Some(PortRange {
                first: 1000,
                last: 2000
            })
        );
        assert!(r.validate().is_ok());
        assert_eq!(
            r.to_string(),
            "drop udp from 10.0.0.0/8 sport 1000-2000 to 10.9.0.0/16 dport 53"
        );
        // The binary wire format round-trips what JSON wrote.
        let frame = encode_frame(&r).unwrap();
        assert_eq!(decode_body::<FirewallRule>(&frame[4..]).unwrap(), r);
    }

    #[test]
    fn rules_that_cannot_match_or_say_two_things_are_refused() {
        let parse = |j: &str| serde_json::from_str::<FirewallRule>(j);
        let invalid = |j: &str| parse(j).unwrap().validate().unwrap_err();
        assert!(
            invalid(r#"{"action":"drop","protocol":"icmp","port":1}"#)
                .contains("icmp has no ports")
        );
        assert!(invalid(r#"{"action":"drop","port":1,"dest_port":2}"#).contains("same thing"));
        assert!(
            invalid(r#"{"action":"drop","source_ip":"10.0.0.1","dest_ip":"fd00::1"}"#)
                .contains("different IP versions")
        );
        assert!(
            invalid(r#"{"action":"drop","source_ip":"fd00::1","protocol":"icmp"}"#)
                .contains("icmpv6")
        );
        assert!(parse(r#"{"action":"drop","port":0}"#).is_err());
        assert!(parse(r#"{"action":"drop","port":"20-10"}"#).is_err());
        assert!(parse(r#"{"action":"drop","source_ip":"10.0.0.300"}"#).is_err());
        assert!(parse(r#"{"action":"drop","sorce_ip":"10.0.0.1"}"#).is_err());
        let everything: FirewallRule = parse(r#"{"action":"drop"}"#).unwrap();
        assert!(everything.validate().is_ok());
        assert_eq!(everything.to_string(), "drop everything");
    }
}
