//! Everything the kernel programs and user space must agree on, byte for byte.
//!
//! Map names, key/value layouts and constants live here and nowhere else. Every type is
//! `#[repr(C)]` with explicit padding so that the layout does not depend on the compiler.
#![no_std]

/// Names of the maps of `xdp_firewall`, as they appear in the ELF object.
///
/// The rule maps exist twice, generation 0 and 1 (suffix `_0`/`_1`): user space fills the
/// generation the kernel is not reading, then flips `FirewallConfig::generation`, so a packet
/// sees the old rule set or the new one, never half of each.
pub mod maps {
    pub const FW_CONFIG: &str = "FW_CONFIG";
    pub const FW_STATS: &str = "FW_STATS";
    /// `LruPerCpuHashMap<FlowKeyV4, FlowValue>`: IPv4 flows (when flows are on).
    pub const FW_FLOWS4: &str = "FW_FLOWS4";
    /// `LruPerCpuHashMap<FlowKey, FlowValue>`: IPv6 flows.
    pub const FW_FLOWS: &str = "FW_FLOWS";
    /// `PerCpuArray<FlowCacheEntry<FlowKeyV4>>`, `FLOW_CACHE_SLOTS` entries: each CPU's
    /// direct-mapped cache in front of `FW_FLOWS4` (see `FlowCacheEntry`).
    pub const FW_FLOW_CACHE4: &str = "FW_FLOW_CACHE4";
    /// `PerCpuArray<FlowCacheEntry<FlowKey>>`: the same in front of `FW_FLOWS`.
    pub const FW_FLOW_CACHE: &str = "FW_FLOW_CACHE";
    /// `PerCpuArray<FlowTableStats>`: entry 0 the kernel's counts; entry 1 user space's (CPU 0's
    /// `inserts` = flows it removed).
    pub const FW_FLOW_STATS: &str = "FW_FLOW_STATS";
    /// `PerCpuArray<u64>`, `LATENCY_BUCKETS` entries: packets by log2 of processing ns.
    pub const FW_LATENCY: &str = "FW_LATENCY";
    /// `PerCpuArray<VerdictBlock>`, `VERDICT_BLOCKS` entries: each CPU's IPv4 verdict cache,
    /// with the counts of the packets the fast path answered (the rest of `FW_STATS`).
    pub const FW_VERDICTS4: &str = "FW_VERDICTS4";
    /// The program's `.bss`, which holds one `FastPath` (`FW_FAST_PATH`).
    pub const FW_FAST_PATH: &str = ".bss";

    /// The rule maps of each generation; index with the constants below.
    pub const RULE_MAPS: [[&str; RULE_MAP_COUNT]; 2] = [
        [
            "FW_SRC_V4_0",
            "FW_SRC_V6_0",
            "FW_DST_V4_0",
            "FW_DST_V6_0",
            "FW_SRC_V4_EXACT_0",
            "FW_SRC_V6_EXACT_0",
            "FW_DST_V4_EXACT_0",
            "FW_DST_V6_EXACT_0",
            "FW_PROTO_0",
            "FW_SPORT_TCP_0",
            "FW_SPORT_UDP_0",
            "FW_DPORT_TCP_0",
            "FW_DPORT_UDP_0",
            "FW_SPORT_CLASS_0",
            "FW_DPORT_CLASS_0",
            "FW_MISC_0",
            "FW_HEADER_0",
        ],
        [
            "FW_SRC_V4_1",
            "FW_SRC_V6_1",
            "FW_DST_V4_1",
            "FW_DST_V6_1",
            "FW_SRC_V4_EXACT_1",
            "FW_SRC_V6_EXACT_1",
            "FW_DST_V4_EXACT_1",
            "FW_DST_V6_EXACT_1",
            "FW_PROTO_1",
            "FW_SPORT_TCP_1",
            "FW_SPORT_UDP_1",
            "FW_DPORT_TCP_1",
            "FW_DPORT_UDP_1",
            "FW_SPORT_CLASS_1",
            "FW_DPORT_CLASS_1",
            "FW_MISC_1",
            "FW_HEADER_1",
        ],
    ];
    pub const RULE_MAP_COUNT: usize = 17;
    /// `LpmTrie<u32 | [u32; 4], FieldMatch>`: networks shorter than a host address.
    pub const SRC_V4: usize = 0;
    pub const SRC_V6: usize = 1;
    pub const DST_V4: usize = 2;
    pub const DST_V6: usize = 3;
    /// `HashMap<u32 | [u32; 4], FieldMatch>`: host addresses (/32, /128), looked up first.
    pub const SRC_V4_EXACT: usize = 4;
    pub const SRC_V6_EXACT: usize = 5;
    pub const DST_V4_EXACT: usize = 6;
    pub const DST_V6_EXACT: usize = 7;
    /// `Array<FieldMatch>` indexed by IP protocol number.
    pub const PROTO: usize = 8;
    /// `Array<u64>` indexed by port: `epoch << 32 | class` (see `RuleSetHeader::port_epoch`).
    pub const SPORT_TCP: usize = 9;
    pub const SPORT_UDP: usize = 10;
    pub const DPORT_TCP: usize = 11;
    pub const DPORT_UDP: usize = 12;
    /// `Array<FieldMatch>` indexed by port class; class 0 is "no port rule here".
    pub const SPORT_CLASS: usize = 13;
    pub const DPORT_CLASS: usize = 14;
    /// `Array<FieldMatch>`: the value of each address field when its tables have no entry for
    /// the packet (index = `field::*`), then the complex-rule slots (see `MISC_SLOTS`).
    pub const MISC: usize = 15;
    /// `Array<RuleSetHeader>`, one entry: the generation's settings.
    pub const HEADER: usize = 16;
}

/// Load-time constants of `xdp_firewall` (globals in `.rodata`, set with aya's
/// `override_global`); the verifier drops the code they switch off.
pub mod globals {
    /// Non-zero: account flows and time packets.
    pub const FLOWS_ENABLED: &str = "FLOWS_ENABLED";
    /// Non-zero (the object's default): cache verdicts per CPU (`enable_verdict_cache`).
    pub const VERDICT_CACHE_ENABLED: &str = "VERDICT_CACHE_ENABLED";
}

/// Default size of each flow table, IPv4 and IPv6 (`flow_table_size` in the config).
pub const FLOW_TABLE_DEFAULT_SIZE: u32 = 65_536;
/// Buckets of the processing-time histogram: bucket `i` counts packets that took
/// `[2^i, 2^(i+1))` ns (bucket 0 also takes 0 ns).
pub const LATENCY_BUCKETS: u32 = 32;
/// One packet in this many is timed for the histogram: a precise clock read costs more than
/// the firewall's whole verdict here, so the histogram is a sample (a power of two).
pub const LATENCY_SAMPLE_EVERY: u64 = 64;

/// A flow: the 5-tuple seen on an interface in a direction. Addresses as in the packet
/// (network-order words, IPv4 in word 0), ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub source_port: u16,
    pub dest_port: u16,
    pub ifindex: u32,
    pub protocol: u8,
    /// 4 or 6.
    pub family: u8,
    /// 0 ingress, 1 egress.
    pub direction: u8,
    pub _pad: u8,
}

/// An IPv4 flow: as `FlowKey`, in 20 bytes rather than 44 (the key is hashed per packet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKeyV4 {
    pub src: u32,
    pub dst: u32,
    pub source_port: u16,
    pub dest_port: u16,
    pub ifindex: u32,
    pub protocol: u8,
    pub direction: u8,
    pub _pad: u16,
}

/// One CPU's share of a flow; user space sums packets and bytes, takes the earliest
/// `first_seen_ns` and the latest `last_seen_ns`, ORs the flags. Times are CLOCK_MONOTONIC
/// read with the coarse clock (one tick, at most 4 ms, of resolution): a flow table needs to
/// know "when, roughly", and the precise clock costs more than the rest of the packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// TCP flags seen (the header's flag byte, ORed).
    pub tcp_flags: u32,
    /// `Outcome` of the latest packet.
    pub outcome: u32,
}

/// Slots of each CPU's flow cache (a power of two).
pub const FLOW_CACHE_SLOTS: u32 = 1024;

/// Fibonacci hashing of a folded key onto the cache's slots.
#[inline(always)]
fn cache_slot(folded: u32) -> u32 {
    folded.wrapping_mul(0x9E37_79B1) >> (32 - FLOW_CACHE_SLOTS.trailing_zeros())
}

impl FlowKeyV4 {
    /// The flow's slot in each CPU's cache: the kernel and user space both use this.
    #[inline(always)]
    pub fn cache_slot(&self) -> u32 {
        cache_slot(
            self.src
                ^ self.dst.rotate_left(16)
                ^ (((self.source_port as u32) << 16) | self.dest_port as u32)
                ^ self.ifindex.rotate_left(8)
                ^ self.protocol as u32,
        )
    }
}

impl FlowKey {
    /// As `FlowKeyV4::cache_slot`, for the IPv6 cache.
    #[inline(always)]
    pub fn cache_slot(&self) -> u32 {
        let mut folded = (((self.source_port as u32) << 16) | self.dest_port as u32)
            ^ self.ifindex.rotate_left(8)
            ^ self.protocol as u32;
        let mut i = 0;
        while i < 4 {
            folded ^= self.src[i] ^ self.dst[i].rotate_left(16);
            i += 1;
        }
        cache_slot(folded)
    }
}

/// One slot of a CPU's flow cache. A packet's flow hashes to one slot; while the flow holds
/// that slot, its packets update `value` here (an array lookup, which the verifier inlines)
/// instead of looking the flow up in the LRU table (a hash of the key and a helper call).
/// When another flow takes the slot, `value`, this CPU's whole share of the flow, is written
/// back to the table. So the table holds each flow's share as of its last write-back, the
/// cache the newer one: a reader takes, per flow and CPU, the share with more packets,
/// reading the cache before the table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheEntry<K> {
    /// Empty slot: `packets == 0`.
    pub value: FlowValue,
    pub key: K,
    /// 1 once the flow has an entry in the table (found there, or written back).
    pub in_table: u32,
}

// No implicit padding in the cache slots (the kernel and user space copy them whole).
const _: () = assert!(size_of::<FlowCacheEntry<FlowKeyV4>>() == 40 + 20 + 4);
const _: () = assert!(size_of::<FlowCacheEntry<FlowKey>>() == 40 + 44 + 4);

/// Flow-table bookkeeping per CPU: entries evicted by the LRU are `inserts` minus the
/// entries present (minus those user space removed).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTableStats {
    pub inserts: u64,
    pub insert_failures: u64,
    /// Packets seen with flows on; every `LATENCY_SAMPLE_EVERY`-th is timed.
    pub packets: u64,
}

/// `xdp_exceptions`: the tracepoint `xdp/xdp_exception`, which the kernel fires when an XDP
/// program returns XDP_ABORTED (or an action it cannot carry out).
pub mod xdp_exceptions {
    /// `LruPerCpuHashMap<u32, u64>`: ifindex → XDP_ABORTED returns seen there.
    pub const XDP_ABORTS: &str = "XDP_ABORTS";
    pub const ABORTS_MAX: u32 = 4096;
    /// Offsets in the tracepoint's record (`events/xdp/xdp_exception/format`).
    pub const OFF_ACT: usize = 12;
    pub const OFF_IFINDEX: usize = 16;
    /// XDP_ABORTED.
    pub const ACT_ABORTED: u32 = 0;
}

/// `tc_shaper`: a TCX egress classifier that puts an interface's traffic into the HTB class
/// the daemon made for it (by setting `skb->priority` to the class id).
pub mod shaper {
    /// `HashMap<u32, u32>`: ifindex → HTB class id (`major << 16 | minor`).
    pub const SHAPER_CLASS: &str = "SHAPER_CLASS";
    /// `PerCpuHashMap<u32, [u64; 2]>`: ifindex → packets and bytes put into the class.
    pub const SHAPER_STATS: &str = "SHAPER_STATS";
    pub const SHAPER_MAX: u32 = 1024;
}

/// `cgroup_counter`: a cgroup_skb program that counts each cgroup's packets and bytes by
/// direction, and drops those of cgroups that are denied.
pub mod cgroup {
    /// `PerCpuHashMap<CgroupKey, [u64; 3]>`: packets, bytes, and packets denied.
    pub const CG_STATS: &str = "CG_STATS";
    /// `HashMap<u64, u8>`: cgroup id → 1 when its sockets' packets (and those of the cgroups
    /// below it) are to be dropped.
    pub const CG_DENY: &str = "CG_DENY";
    /// `Array<u32>`, one entry: non-zero while `CG_DENY` has any entry, so that packets skip
    /// the ancestor walk when nothing is denied.
    pub const CG_DENY_ANY: &str = "CG_DENY_ANY";
    pub const CG_MAX: u32 = 4096;
    /// How many levels of ancestors a packet's cgroup is checked against `CG_DENY`.
    pub const DENY_DEPTH: i32 = 8;
    pub const INGRESS: u32 = 0;
    pub const EGRESS: u32 = 1;

    /// A cgroup (its id: the inode number of its directory in cgroup2) and a direction.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct CgroupKey {
        pub cgroup_id: u64,
        pub direction: u32,
        pub _pad: u32,
    }

    #[cfg(feature = "user")]
    // SAFETY: plain old data, no padding left implicit.
    unsafe impl aya::Pod for CgroupKey {}
}

/// `socket_counter`: a socket filter for an AF_PACKET socket the daemon opens on an
/// interface. It counts what the socket sees by IP protocol, and passes one packet in
/// `sample_every` up to the socket (0: none).
pub mod socket {
    /// `PerCpuHashMap<[u32; 2], [u64; 2]>`: `[ifindex, IP protocol (0: not IP)]` → packets,
    /// bytes.
    pub const SF_STATS: &str = "SF_STATS";
    /// `Array<u32>`, one entry: pass one packet in N up to the socket (0: none).
    pub const SF_SAMPLE_EVERY: &str = "SF_SAMPLE_EVERY";
    pub const SF_MAX: u32 = 1024;
}

/// `xdp_router`: the mesh fast path. An IPv4 packet whose destination has a route is
/// forwarded by XDP (TTL decremented, MACs rewritten, redirected to the next hop's
/// interface); everything else goes to the kernel stack.
pub mod routes {
    /// `LpmTrie<[u8; 4], u32>`: IPv4 prefix → route slot (`LOCAL`: this node's own address).
    pub const ROUTES: &str = "ROUTES";
    /// `Array<NextHop>`, indexed by route slot.
    pub const ROUTE_NEXT: &str = "ROUTE_NEXT";
    /// `PerCpuArray<[u64; 2]>`, indexed by route slot: packets and bytes forwarded.
    pub const ROUTE_STATS: &str = "ROUTE_STATS";
    pub const ROUTES_MAX: u32 = 16384;
    /// The slot of this node's own addresses: such packets are the stack's.
    pub const LOCAL: u32 = u32::MAX;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct NextHop {
        pub ifindex: u32,
        pub dst_mac: [u8; 6],
        pub src_mac: [u8; 6],
    }

    #[cfg(feature = "user")]
    // SAFETY: plain old data, no padding (4 + 6 + 6 bytes).
    unsafe impl aya::Pod for NextHop {}
}

/// Maps of `tcp_state`, the TCP connection probe (tracepoint `sock/inet_sock_set_state`).
pub mod tcp {
    /// `LruHashMap<u64, u64>`: socket address → when it entered SYN_SENT (ns).
    pub const TCP_CONNECTING: &str = "TCP_CONNECTING";
    /// `LruPerCpuHashMap<TcpPeerKey, TcpPeerStats>`.
    pub const TCP_PEERS: &str = "TCP_PEERS";
    /// `PerCpuArray<u64>`, `LATENCY_BUCKETS` entries: connects by log2 of their ns.
    pub const TCP_CONNECT_LATENCY: &str = "TCP_CONNECT_LATENCY";
    pub const PEERS_MAX: u32 = 16_384;
    pub const CONNECTING_MAX: u32 = 65_536;

    /// Fields of the tracepoint record (see
    /// /sys/kernel/tracing/events/sock/inet_sock_set_state/format).
    pub const OFF_SKADDR: usize = 8;
    pub const OFF_OLDSTATE: usize = 16;
    pub const OFF_NEWSTATE: usize = 20;
    pub const OFF_DPORT: usize = 26;
    pub const OFF_FAMILY: usize = 28;
    pub const OFF_PROTOCOL: usize = 30;
    pub const OFF_DADDR: usize = 36;
    pub const OFF_DADDR_V6: usize = 56;

    pub const TCP_ESTABLISHED: i32 = 1;
    pub const TCP_SYN_SENT: i32 = 2;
    pub const TCP_CLOSE: i32 = 7;
    pub const AF_INET: u16 = 2;
}

/// The remote end of connections this host opened: address (network-order words, IPv4 in
/// word 0) and port (host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpPeerKey {
    pub addr: [u32; 4],
    pub port: u16,
    /// 4 or 6.
    pub family: u16,
}

/// One CPU's share of what happened with a peer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpPeerStats {
    /// Connections that reached ESTABLISHED from SYN_SENT.
    pub connects: u64,
    pub connect_ns_sum: u64,
    /// Connections that went from SYN_SENT to CLOSE (refused, timed out).
    pub failed: u64,
    /// Established connections that went straight to CLOSE: reset.
    pub resets: u64,
    /// Every move to CLOSE.
    pub closes: u64,
}

/// Bits of `RuleSetHeader::address_tables`: which address tables have entries, so that empty
/// ones are not looked up.
pub mod tables {
    pub const SRC_V4_EXACT: u32 = 1 << 0;
    pub const SRC_V4_CIDR: u32 = 1 << 1;
    pub const SRC_V6_EXACT: u32 = 1 << 2;
    pub const SRC_V6_CIDR: u32 = 1 << 3;
    pub const DST_V4_EXACT: u32 = 1 << 4;
    pub const DST_V4_CIDR: u32 = 1 << 5;
    pub const DST_V6_EXACT: u32 = 1 << 6;
    pub const DST_V6_CIDR: u32 = 1 << 7;
}

/// The fields a rule can constrain; also bits of `FirewallConfig::active_fields` and
/// indexes of the per-field "miss" values in the `FW_MISC_*` maps.
pub mod field {
    pub const SRC: u32 = 0;
    pub const DST: u32 = 1;
    pub const PROTO: u32 = 2;
    pub const SPORT: u32 = 3;
    pub const DPORT: u32 = 4;
    pub const COUNT: u32 = 5;
}

/// Capacity of each address trie (per family and generation).
pub const FW_CIDR_MAX_ENTRIES: u32 = 131_072;
/// Capacity of each exact-address table (per family and generation).
pub const FW_EXACT_MAX_ENTRIES: u32 = 262_144;
/// Port arrays hold every port.
pub const PORTS: u32 = 65_536;
/// Distinct port classes per field (TCP and UDP together), class 0 included.
pub const FW_PORT_CLASSES: u32 = 16_384;
/// Rules that constrain more than one field ("complex" rules) live in a bit mask.
pub const RULE_WORDS: usize = 4;
pub const MAX_COMPLEX_RULES: usize = RULE_WORDS * 64;
/// Where the slot entries start in `FW_MISC_*`: entry `MISC_SLOTS + slot` holds the complex
/// rule of that slot, encoded, in `first_simple`.
pub const MISC_SLOTS: u32 = field::COUNT;
pub const MISC_MAX_ENTRIES: u32 = MISC_SLOTS + MAX_COMPLEX_RULES as u32;
/// At most this many rules in one rule set (the encoding keeps a rule index in 31 bits; the
/// tables bound it long before that).
pub const MAX_RULES: usize = 1 << 20;

/// "No rule": larger than any encoded rule, so `min` ignores it.
pub const NO_RULE: u32 = u32::MAX;

/// A rule as the kernel returns it: `index << 1 | 1` for drop, `index << 1` for allow. The
/// smallest encoded value is the earliest rule, whatever its action.
pub const fn encode_rule(index: u32, drop: bool) -> u32 {
    (index << 1) | drop as u32
}

/// What one field's table says about a packet: the earliest single-field rule that matches
/// on this field (encoded, or `NO_RULE`), and which complex rules this field allows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FieldMatch {
    pub first_simple: u32,
    pub _pad: u32,
    pub bits: [u64; RULE_WORDS],
}

impl FieldMatch {
    pub const EMPTY: FieldMatch = FieldMatch {
        first_simple: NO_RULE,
        _pad: 0,
        bits: [0; RULE_WORDS],
    };
}

impl Default for FieldMatch {
    fn default() -> Self {
        FieldMatch::EMPTY
    }
}

/// What an allow/drop action is, as the kernel encodes defaults.
pub mod action {
    pub const ALLOW: u32 = 1;
    pub const DROP: u32 = 2;
}

/// IP protocol numbers the firewall understands.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// Which rule generation packets are matched against, and the `port_epoch` of the install
/// that generation holds. Kept alone in its map so that the switch is one aligned 8-byte
/// store.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirewallConfig {
    pub generation: u32,
    /// Tags the CPUs' verdict caches: a cached verdict counts only while this is the epoch
    /// it was taken under. 0 (a table written before epochs were kept here): no caching.
    pub epoch: u32,
}

/// `xdp_firewall`'s fast path (`FW_FAST_PATH`, the program's `.bss`, not pinned): it answers
/// a packet whose verdict this CPU has cached under `epoch`, and nothing when `epoch` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastPath {
    /// Written by user space after every switch of `FW_CONFIG`: its `epoch`, when `enabled`.
    pub epoch: u32,
    /// Whether the fast path may answer at all: not when flows are accounted (it counts no
    /// flows) or verdicts are not cached. Set once after load; the kernel does not read it.
    pub enabled: u32,
}

/// Slots of each CPU's verdict cache in `xdp_firewall`, per IP family (a power of two).
pub const VERDICT_CACHE_SLOTS: u32 = 4096;
/// Slots of one `VerdictBlock`: a per-CPU value holds 32 KiB at most.
pub const VERDICT_BLOCK_SLOTS: u32 = 1024;
/// Entries of `FW_VERDICTS4`.
pub const VERDICT_BLOCKS: u32 = VERDICT_CACHE_SLOTS / VERDICT_BLOCK_SLOTS;
/// Counters in a `VerdictBlock`: `OUTCOMES` rounded up to a power of two, so that the kernel
/// indexes them with a mask rather than a bounds check.
pub const VERDICT_BLOCK_COUNTERS: usize = 8;

/// The fields of an IPv4 packet rules can look at, as the verdict cache keys them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictKeyV4 {
    /// `src | dst << 32`, the raw network-order words.
    pub addresses: u64,
    /// `source_port << 16 | dest_port | (protocol | has_ports << 8) << 32`.
    pub rest: u64,
}

/// One cached IPv4 verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictEntryV4 {
    pub key: VerdictKeyV4,
    /// The rule set's epoch when the verdict was taken; 0: empty.
    pub epoch: u32,
    /// `Outcome` as u32.
    pub outcome: u32,
}

/// A quarter of a CPU's IPv4 verdict cache and the counts, by `Outcome`, of the packets the
/// fast path answered from it: one map lookup finds both.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictBlock {
    pub counters: [Counter; VERDICT_BLOCK_COUNTERS],
    pub verdicts: [VerdictEntryV4; VERDICT_BLOCK_SLOTS as usize],
}

/// The settings of one rule generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleSetHeader {
    /// `action::ALLOW` or `action::DROP`; anything else is treated as ALLOW so that an
    /// unconfigured program (all zeroes) never black-holes an interface.
    pub default_action: u32,
    /// Bit `1 << field::X` set when some rule constrains field X; others are not looked up.
    pub active_fields: u32,
    /// Non-zero when there are complex rules (and so slots to look at).
    pub has_complex: u32,
    /// Non-zero when `catch_all` holds a rule that constrains nothing (encoded).
    pub has_catch_all: u32,
    pub catch_all: u32,
    /// `tables::*` bits.
    pub address_tables: u32,
    /// Port array entries written by this install carry this epoch; entries with another one
    /// are left over from older installs and mean class 0. Never 0.
    pub port_epoch: u32,
    pub _reserved: u32,
}

/// A port of a protocol (TCP or UDP), port in host byte order: how the compiler indexes the
/// port tables before they become per-protocol arrays.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub protocol: u8,
    pub _pad: u8,
    pub port: u16,
}

/// What happened to a packet; indexes `FW_STATS`, so that each packet costs one counter
/// update (packets and bytes) and user space derives the totals.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Passed = 0,
    /// Too short for a header it claims to have, or a header that contradicts itself.
    Malformed = 1,
    /// A rule said drop.
    Rule = 2,
    /// IPv6 extension headers nested deeper than the parser follows.
    TooManyHeaders = 3,
    /// No rule matched and the default policy is drop.
    DefaultPolicy = 4,
}

pub const OUTCOMES: u32 = 5;

impl Outcome {
    /// The drop outcomes, labelled as `stats` and the metrics report them.
    pub const DROPS: [Outcome; 4] = [
        Outcome::Malformed,
        Outcome::Rule,
        Outcome::TooManyHeaders,
        Outcome::DefaultPolicy,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Malformed => "malformed",
            Outcome::Rule => "rule",
            Outcome::TooManyHeaders => "too_many_headers",
            Outcome::DefaultPolicy => "default_policy",
        }
    }
}

/// Packets and bytes of one outcome on one CPU. Bytes are frame lengths as XDP sees them
/// (from the Ethernet header on, no FCS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, contain only integers and have no implicit
    // padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::FirewallConfig {}
    unsafe impl aya::Pod for super::FastPath {}
    unsafe impl aya::Pod for super::VerdictBlock {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::FieldMatch {}
    unsafe impl aya::Pod for super::RuleSetHeader {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKeyV4 {}
    unsafe impl aya::Pod for super::TcpPeerKey {}
    unsafe impl aya::Pod for super::TcpPeerStats {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::FlowTableStats {}
    unsafe impl aya::Pod for super::FlowCacheEntry<super::FlowKeyV4> {}
    unsafe impl aya::Pod for super::FlowCacheEntry<super::FlowKey> {}
}
