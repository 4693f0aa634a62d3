//! LoaderActor: owns every loaded `aya::Ebpf` object and the program registry. It turns a
//! program name into a verified kernel program, and a (program, interface) pair into a link
//! that it hands to the interface's AttachActor.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{Program, ProgramError, Xdp, XdpMode, xdp::XdpLink};
use aya::{Ebpf, EbpfLoader};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::api::{
    ApiError, AttachMode, ErrorKind, Explanation, FirewallRule, Hook, HookStats, HookTarget,
    PacketCounters, PacketQuery, ProgramInfo, ProgramType, Protocol, Route, RouteStatus,
    RuleAction, RuleSet, RulesRequest, TcpReport,
};
use crate::attach::HeldLink;
use crate::hooks;
use crate::rules::{CompiledRules, PacketSummary, compile, rule_matches};
use crate::{builtin, firewall, sys};

pub enum LoaderMsg {
    Load {
        name: String,
        mode: Option<AttachMode>,
        reply: RpcReplyPort<Result<ProgramInfo, ApiError>>,
    },
    /// Attaches a loaded program to an interface and hands back the link; whoever holds the
    /// link keeps the program attached.
    CreateLink {
        program_id: String,
        interface: String,
        mode: Option<AttachMode>,
        reply: RpcReplyPort<Result<NewLink, ApiError>>,
    },
    Unload {
        program_id: String,
        reply: RpcReplyPort<Result<(), ApiError>>,
    },
    /// Every loaded program; `attachments` are left empty (the InterfaceSupervisor knows them).
    List {
        reply: RpcReplyPort<Vec<ProgramInfo>>,
    },
    Counters {
        reply: RpcReplyPort<Vec<(String, Option<PacketCounters>)>>,
    },
    /// The firewall rule set every built-in `xdp_firewall` enforces.
    Rules { reply: RpcReplyPort<RuleSet> },
    /// Adds, deletes or replaces rules (`RulesRequest::Add`, `Delete`, `Apply`). The new set
    /// is compiled, installed into every built-in firewall (each switches atomically) and saved
    /// to the state dir; nothing changes when any step fails.
    ChangeRules {
        change: RulesRequest,
        reply: RpcReplyPort<Result<RuleSet, ApiError>>,
    },
    Explain {
        query: PacketQuery,
        reply: RpcReplyPort<Result<Explanation, ApiError>>,
    },
    /// What reconciliation did so far (restored programs, adopted or stale links, pins
    /// removed).
    Reconciliation {
        reply: RpcReplyPort<Vec<crate::api::ReconcileStep>>,
    },
    /// Every pinned link: (program id, interface).
    LinkPins {
        reply: RpcReplyPort<Vec<(String, String)>>,
    },
    /// Where the flow tables of the loaded firewalls are pinned, for the FlowActor.
    FlowSources { reply: RpcReplyPort<FlowSources> },
    /// Every entry of one map of a loaded program (custom metrics).
    ReadMap {
        program_id: String,
        map: String,
        reply: RpcReplyPort<Result<crate::mapread::MapEntries, ApiError>>,
    },
    /// XDP_ABORTED returns per ifindex, as every loaded `xdp_exceptions` counted them.
    XdpAborts {
        reply: RpcReplyPort<BTreeMap<u32, u64>>,
    },
    /// What every loaded `tcp_state` saw.
    Tcp { reply: RpcReplyPort<TcpReport> },
    /// Loads refused so far, and the latest reason.
    LoadFailures {
        reply: RpcReplyPort<(u64, Option<String>)>,
    },
    /// Each built-in firewall's processing-time histogram (log2 ns buckets, CPUs summed).
    Latency {
        reply: RpcReplyPort<Vec<(String, Vec<u64>)>>,
    },
    /// Bytes the kernel charges for each map of each loaded program (fdinfo `memlock`):
    /// (program id, [(map name, bytes)]).
    MapMemory {
        reply: RpcReplyPort<Vec<(String, MapUsage)>>,
    },
    /// Removes the pin of a link whose holder is gone, which detaches it.
    ForgetLink {
        program_id: String,
        interface: String,
    },
    /// At daemon shutdown: unless `keep`, unload everything and remove every pin and the
    /// saved program list, so that nothing of ours stays in the kernel.
    Shutdown { keep: bool, reply: RpcReplyPort<()> },
    /// Fault injection for the chaos harness and the supervision tests: panics in `handle`.
    Crash,
    /// Attaches a program to a cgroup, a TCX hook or a socket (not XDP).
    AttachHook {
        program_id: String,
        target: HookTarget,
        deny: bool,
        sample_every: u32,
        reply: RpcReplyPort<Result<Hook, ApiError>>,
    },
    DetachHook {
        program_id: String,
        target: HookTarget,
        reply: RpcReplyPort<Result<Hook, ApiError>>,
    },
    /// Every hook with what its program counted.
    HookStats { reply: RpcReplyPort<Vec<HookStats>> },
    /// The mesh routes (`None`: list; `Some`: replace them all, in every `xdp_router`).
    Routes {
        change: Option<Vec<Route>>,
        reply: RpcReplyPort<Result<Vec<RouteStatus>, ApiError>>,
    },
}

/// The loaded firewalls whose flow tables the FlowActor reads.
#[derive(Debug, Clone, Default)]
pub struct FlowSources {
    /// `enable_flow_observability`.
    pub enabled: bool,
    /// Program id, and the directory its maps are pinned in.
    pub tables: Vec<(String, PathBuf)>,
}

/// A live XDP attachment: new, or adopted from a pin a previous daemon (or actor) left.
pub struct NewLink {
    pub link: HeldLink,
    pub mode: AttachMode,
    pub program_type: ProgramType,
}

/// Settings of the built-in `xdp_firewall`, from the daemon's config.
#[derive(Debug, Clone)]
pub struct FirewallSettings {
    pub rules: Vec<FirewallRule>,
    pub default_policy: RuleAction,
    pub attach_mode: AttachMode,
    /// Account flows and time packets (`enable_flow_observability`).
    pub flows: bool,
    /// Entries of the flow table (`flow_table_size`).
    pub flow_table_size: u32,
    /// Cache verdicts per CPU (`enable_verdict_cache`).
    pub verdict_cache: bool,
}

impl Default for FirewallSettings {
    fn default() -> Self {
        FirewallSettings {
            rules: Vec::new(),
            default_policy: RuleAction::Allow,
            attach_mode: AttachMode::Drv,
            flows: true,
            flow_table_size: ebpf_shared::FLOW_TABLE_DEFAULT_SIZE,
            verdict_cache: true,
        }
    }
}

#[derive(Clone)]
pub struct LoaderArgs {
    pub programs_dir: PathBuf,
    pub firewall: FirewallSettings,
    /// Where the rule set and the program list are saved; saved ones win over the config's
    /// at start.
    pub state_dir: PathBuf,
    /// bpffs directory: `<pin_root>/<program id>/` holds a program's maps and its links.
    pub pin_root: PathBuf,
}

/// The rule set as saved in the state dir.
const RULES_FILE: &str = "firewall-rules.json";
/// The loaded programs as saved in the state dir.
const PROGRAMS_FILE: &str = "programs.json";
/// The hook attachments (cgroups, TCX, sockets) as saved in the state dir.
const HOOKS_FILE: &str = "hooks.json";
/// The mesh routes as saved in the state dir.
const ROUTES_FILE: &str = "routes.json";

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct SavedPrograms {
    next_number: BTreeMap<String, u64>,
    programs: Vec<SavedProgram>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedProgram {
    id: String,
    /// The name it was loaded by (`xdp_firewall`, `edge_fw.o`).
    name: String,
    default_mode: AttachMode,
}
/// How long staged rules wait for their `Apply`.
const STAGE_TTL: std::time::Duration = std::time::Duration::from_secs(60);

pub struct LoaderState {
    programs_dir: PathBuf,
    firewall: FirewallSettings,
    compiled: CompiledRules,
    /// Rules staged for a later `Apply`, by token, with when they were last added to.
    staged: BTreeMap<u64, (std::time::Instant, Vec<FirewallRule>)>,
    /// Loads refused so far, and the latest reason (for the program_load_failure alert).
    load_failures: (u64, Option<String>),
    /// Set by `Shutdown`: no more loads (a late one would leave pins behind).
    stopping: bool,
    /// What restoring programs and adopting links found and did (for `status`).
    reconciliation: Vec<crate::api::ReconcileStep>,
    state_dir: PathBuf,
    pin_root: PathBuf,
    programs: BTreeMap<String, LoadedProgram>,
    /// Attachments other than XDP (cgroups, TCX hooks, sockets).
    hooks: Vec<hooks::HeldHook>,
    /// The mesh routes every `xdp_router` forwards by.
    routes: Vec<Route>,
    /// Next number per program name, so ids are never reused while the daemon runs.
    next_number: BTreeMap<String, u64>,
}

struct LoadedProgram {
    ebpf: Ebpf,
    /// The name it was loaded by, to load it again after a restart.
    requested_name: String,
    /// A built-in `xdp_firewall`: it enforces the daemon's rule set.
    enforces_rules: bool,
    /// The program's name inside `ebpf`.
    program_name: String,
    info: ProgramInfo,
}

/// (map name, bytes) for each map of one program.
pub type MapUsage = Vec<(String, u64)>;

/// The memory of each map of `p`'s object, as the kernel counts it now: the map's fdinfo
/// `memlock` (a trie's charge grows with its entries). One read per map through the fd aya
/// already holds; names are the object's, not the kernel's 15-byte truncations.
fn map_memory(p: &LoadedProgram) -> Result<MapUsage, String> {
    use std::os::fd::AsFd as _;
    p.ebpf
        .maps()
        .map(|(name, map)| {
            sys::fdinfo_field(map_data(map).fd().as_fd(), "memlock")
                .map(|bytes| (name.to_string(), bytes))
                .map_err(|e| format!("map {name}: {e}"))
        })
        .collect()
}

/// The kernel map behind any kind of aya map.
pub(crate) fn map_data(map: &aya::maps::Map) -> &aya::maps::MapData {
    use aya::maps::Map::*;
    match map {
        Array(m)
        | ArrayOfMaps(m)
        | BloomFilter(m)
        | CgroupArray(m)
        | CgroupStorage(m)
        | CgrpStorage(m)
        | CpuMap(m)
        | DevMap(m)
        | DevMapHash(m)
        | HashMap(m)
        | HashOfMaps(m)
        | InodeStorage(m)
        | LpmTrie(m)
        | LruHashMap(m)
        | PerCpuArray(m)
        | PerCpuCgroupStorage(m)
        | PerCpuHashMap(m)
        | PerCpuLruHashMap(m)
        | PerfEventArray(m)
        | ProgramArray(m)
        | Queue(m)
        | ReusePortSockArray(m)
        | RingBuf(m)
        | SockHash(m)
        | SockMap(m)
        | SkStorage(m)
        | Stack(m)
        | StackTraceMap(m)
        | Unsupported(m)
        | XskMap(m) => m,
    }
}

pub struct LoaderActor;

impl Actor for LoaderActor {
    type Msg = LoaderMsg;
    type State = LoaderState;
    type Arguments = LoaderArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: LoaderArgs,
    ) -> Result<LoaderState, ActorProcessingErr> {
        let mut firewall = args.firewall;
        let saved = args.state_dir.join(RULES_FILE);
        match std::fs::read(&saved) {
            Ok(bytes) => match serde_json::from_slice::<RuleSet>(&bytes) {
                Ok(set) if compile(&set.rules, set.default_policy).is_ok() => {
                    info!(file = %saved.display(), rules = set.rules.len(), "firewall rules restored from the state dir");
                    firewall.rules = set.rules;
                    firewall.default_policy = set.default_policy;
                }
                _ => {
                    let aside = saved.with_extension("json.unreadable");
                    let _ = std::fs::rename(&saved, &aside);
                    warn!(file = %saved.display(), kept_as = %aside.display(), "saved firewall rules are unreadable; using the config's");
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(file = %saved.display(), error = %e, "cannot read saved firewall rules; using the config's")
            }
        }
        let compiled = compile(&firewall.rules, firewall.default_policy)?;
        let mut state = LoaderState {
            programs_dir: args.programs_dir,
            firewall,
            compiled,
            staged: BTreeMap::new(),
            load_failures: (0, None),
            stopping: false,
            reconciliation: Vec::new(),
            state_dir: args.state_dir,
            pin_root: args.pin_root,
            programs: BTreeMap::new(),
            hooks: Vec::new(),
            routes: Vec::new(),
            next_number: BTreeMap::new(),
        };
        let saved_routes = state.state_dir.join(ROUTES_FILE);
        if let Ok(bytes) = std::fs::read(&saved_routes) {
            match serde_json::from_slice(&bytes) {
                Ok(routes) => state.routes = routes,
                Err(e) => {
                    warn!(file = %saved_routes.display(), error = %e, "saved routes are unreadable; starting with none")
                }
            }
        }
        state.restore_programs();
        state.restore_hooks();
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: LoaderMsg,
        state: &mut LoaderState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LoaderMsg::Load { name, mode, reply } => {
                let result = if state.stopping {
                    Err(ApiError::new(
                        ErrorKind::Internal,
                        "the daemon is shutting down",
                    ))
                } else {
                    state.load(&name, mode, None)
                };
                if result.is_ok() {
                    state.save_programs();
                }
                match &result {
                    Ok(info) => {
                        info!(program_id = %info.id, kernel_id = info.kernel_id, source = %info.source, "loaded")
                    }
                    Err(e) => {
                        warn!(name = %name, error = %e, "load refused");
                        state.load_failures.0 += 1;
                        state.load_failures.1 = Some(format!("loading {name} failed: {e}"));
                    }
                }
                let _ = reply.send(result);
            }
            LoaderMsg::CreateLink {
                program_id,
                interface,
                mode,
                reply,
            } => {
                let _ = reply.send(state.create_link(&program_id, &interface, mode));
            }
            LoaderMsg::Unload { program_id, reply } => {
                let result = match state.programs.remove(&program_id) {
                    Some(_) => {
                        if state.hooks.iter().any(|h| h.hook.program_id == program_id) {
                            state.hooks.retain(|h| h.hook.program_id != program_id);
                            state.save_hooks();
                        }
                        sys::remove_pins(&state.pin_root.join(&program_id));
                        state.save_programs();
                        info!(program_id = %program_id, "unloaded");
                        Ok(())
                    }
                    None => Err(state.unknown_program(&program_id)),
                };
                let _ = reply.send(result);
            }
            LoaderMsg::List { reply } => {
                let _ = reply.send(
                    state
                        .programs
                        .values()
                        .map(|p| {
                            let mut info = p.info.clone();
                            info.hooks = state
                                .hooks
                                .iter()
                                .filter(|h| h.hook.program_id == info.id)
                                .map(|h| h.hook.clone())
                                .collect();
                            info
                        })
                        .collect(),
                );
            }
            LoaderMsg::Counters { reply } => {
                let counters = state
                    .programs
                    .iter()
                    .map(|(id, p)| {
                        let c = firewall::read_counters(&p.ebpf).unwrap_or_else(|e| {
                            warn!(program_id = %id, error = %e, "reading counters failed");
                            None
                        });
                        (id.clone(), c)
                    })
                    .collect();
                let _ = reply.send(counters);
            }
            LoaderMsg::Rules { reply } => {
                let _ = reply.send(state.rule_set());
            }
            LoaderMsg::ChangeRules { change, reply } => {
                let _ = reply.send(state.change_rules(change));
            }
            LoaderMsg::Explain { query, reply } => {
                let _ = reply.send(state.explain(&query));
            }
            LoaderMsg::XdpAborts { reply } => {
                let mut aborts = BTreeMap::new();
                for p in state
                    .programs
                    .values()
                    .filter(|p| p.program_name == "xdp_exceptions")
                {
                    let Some(map) = p.ebpf.map(ebpf_shared::xdp_exceptions::XDP_ABORTS) else {
                        continue;
                    };
                    let Ok(counts) =
                        aya::maps::PerCpuHashMap::<&aya::maps::MapData, u32, u64>::try_from(map)
                    else {
                        continue;
                    };
                    for (ifindex, per_cpu) in counts.iter().flatten() {
                        *aborts.entry(ifindex).or_default() += per_cpu.iter().sum::<u64>();
                    }
                }
                let _ = reply.send(aborts);
            }
            LoaderMsg::Reconciliation { reply } => {
                let _ = reply.send(state.reconciliation.clone());
            }
            LoaderMsg::LinkPins { reply } => {
                let mut pins = Vec::new();
                for id in state.programs.keys() {
                    let dir = state.pin_root.join(id).join("links");
                    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                        pins.push((id.clone(), e.file_name().to_string_lossy().into_owned()));
                    }
                }
                let _ = reply.send(pins);
            }
            LoaderMsg::ReadMap {
                program_id,
                map,
                reply,
            } => {
                let _ = reply.send(state.read_map(&program_id, &map));
            }
            LoaderMsg::FlowSources { reply } => {
                let _ = reply.send(FlowSources {
                    enabled: state.firewall.flows,
                    tables: state
                        .programs
                        .iter()
                        .filter(|(_, p)| p.enforces_rules)
                        .map(|(id, _)| (id.clone(), state.pin_root.join(id)))
                        .collect(),
                });
            }
            LoaderMsg::Tcp { reply } => {
                let mut report = TcpReport {
                    enabled: false,
                    peers: Vec::new(),
                    connect_latency_ns_log2: vec![0; ebpf_shared::LATENCY_BUCKETS as usize],
                };
                for (id, p) in state
                    .programs
                    .iter()
                    .filter(|(_, p)| p.program_name == "tcp_state")
                {
                    match crate::tcp::read(&p.ebpf) {
                        Ok((peers, hist)) => {
                            report.enabled = true;
                            report.peers.extend(peers);
                            for (sum, v) in report.connect_latency_ns_log2.iter_mut().zip(hist) {
                                *sum += v;
                            }
                        }
                        Err(e) => {
                            warn!(program_id = %id, error = %e, "reading the TCP probe failed")
                        }
                    }
                }
                let _ = reply.send(report);
            }
            LoaderMsg::LoadFailures { reply } => {
                let _ = reply.send(state.load_failures.clone());
            }
            LoaderMsg::Latency { reply } => {
                let histograms = state
                    .programs
                    .iter()
                    .filter(|(_, p)| p.enforces_rules)
                    .filter_map(|(id, p)| match firewall::read_latency(&p.ebpf) {
                        Ok(h) => Some((id.clone(), h)),
                        Err(e) => {
                            warn!(program_id = %id, error = %e, "reading the latency histogram failed");
                            None
                        }
                    })
                    .collect();
                let _ = reply.send(histograms);
            }
            LoaderMsg::MapMemory { reply } => {
                let usage = state
                    .programs
                    .iter()
                    .filter_map(|(id, p)| match map_memory(p) {
                        Ok(bytes) => Some((id.clone(), bytes)),
                        Err(e) => {
                            warn!(program_id = %id, error = %e, "reading map memory failed");
                            None
                        }
                    })
                    .collect();
                let _ = reply.send(usage);
            }
            LoaderMsg::ForgetLink {
                program_id,
                interface,
            } => {
                let pin = state.link_pin(&program_id, &interface);
                if std::fs::remove_file(&pin).is_ok() {
                    info!(%program_id, %interface, "link pin removed: detached");
                }
            }
            LoaderMsg::Shutdown { keep, reply } => {
                state.stopping = true;
                if !keep {
                    // Their links go with the pins below; the sockets close.
                    state.hooks.clear();
                    state.save_hooks();
                    for id in state.programs.keys() {
                        sys::remove_pins(&state.pin_root.join(id));
                    }
                    state.programs.clear();
                    state.save_programs();
                }
                let _ = reply.send(());
            }
            LoaderMsg::Crash => panic!("fault injected into LoaderActor"),
            LoaderMsg::AttachHook {
                program_id,
                target,
                deny,
                sample_every,
                reply,
            } => {
                let _ = reply.send(state.attach_hook(&program_id, &target, deny, sample_every));
            }
            LoaderMsg::DetachHook {
                program_id,
                target,
                reply,
            } => {
                let _ = reply.send(state.detach_hook(&program_id, &target));
            }
            LoaderMsg::Routes { change, reply } => {
                let _ = reply.send(state.routes(change));
            }
            LoaderMsg::HookStats { reply } => {
                let stats = state
                    .hooks
                    .iter()
                    .filter_map(|h| {
                        let p = state.programs.get(&h.hook.program_id)?;
                        Some(hooks::stats(&p.ebpf, &p.program_name, h))
                    })
                    .collect();
                let _ = reply.send(stats);
            }
        }
        Ok(())
    }
}

/// Built-in programs: name in the daemon → (ELF bytes, program name inside the ELF).
fn builtin(name: &str) -> Option<(&'static [u8], &'static str)> {
    match name.strip_suffix(".o").unwrap_or(name) {
        "xdp_firewall" => Some((builtin::XDP_FIREWALL, "xdp_firewall")),
        "xdp_pass" => Some((builtin::XDP_PASS, "xdp_pass")),
        "tcp_state" => Some((builtin::TCP_STATE, "tcp_state")),
        "xdp_exceptions" => Some((builtin::XDP_EXCEPTIONS, "xdp_exceptions")),
        "cgroup_counter" => Some((builtin::CGROUP_COUNTER, "cgroup_counter")),
        "socket_counter" => Some((builtin::SOCKET_COUNTER, "socket_counter")),
        "xdp_router" => Some((builtin::XDP_ROUTER, "xdp_router")),
        _ => None,
    }
}

pub(crate) fn program_type(p: &Program) -> ProgramType {
    match p {
        Program::Xdp(_) => ProgramType::Xdp,
        Program::SchedClassifier(_) => ProgramType::Tc,
        Program::CgroupSkb(_) => ProgramType::CgroupSkb,
        Program::SocketFilter(_) => ProgramType::SocketFilter,
        Program::TracePoint(_) => ProgramType::Tracepoint,
        _ => ProgramType::Other,
    }
}

fn xdp_mode(mode: AttachMode) -> XdpMode {
    match mode {
        AttachMode::Drv => XdpMode::Driver,
        AttachMode::Skb => XdpMode::Skb,
        AttachMode::Hw => XdpMode::Hardware,
    }
}

fn load_error(what: &str, e: ProgramError) -> ApiError {
    if let ProgramError::LoadError { verifier_log, .. } = &e {
        let log = verifier_log.to_string();
        let tail: Vec<&str> = log
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        return ApiError::new(
            ErrorKind::InvalidObject,
            format!(
                "the kernel verifier rejected {what}; last lines of its log:\n{}",
                tail.join("\n")
            ),
        );
    }
    match sys::errno(&e) {
        Some(libc::EPERM) | Some(libc::EACCES) => ApiError::new(
            ErrorKind::PermissionDenied,
            format!(
                "loading {what} was not permitted: the daemon needs root or CAP_BPF + CAP_NET_ADMIN"
            ),
        ),
        _ => ApiError::new(
            ErrorKind::InvalidObject,
            format!("loading {what} failed: {}", sys::chain(&e)),
        ),
    }
}

impl LoaderState {
    fn link_pin(&self, program_id: &str, interface: &str) -> PathBuf {
        self.pin_root.join(program_id).join("links").join(interface)
    }

    fn routes(&mut self, change: Option<Vec<Route>>) -> Result<Vec<RouteStatus>, ApiError> {
        if let Some(routes) = change {
            let compiled = crate::routes::compile(&routes)?;
            for p in self
                .programs
                .values_mut()
                .filter(|p| p.program_name == "xdp_router")
            {
                crate::routes::install(&mut p.ebpf, &compiled)?;
            }
            self.routes = routes;
            let json = serde_json::to_vec_pretty(&self.routes).expect("routes serialize");
            if let Err(e) = sys::write_atomically(&self.state_dir.join(ROUTES_FILE), &json) {
                warn!(error = %e, "saving the routes failed; a restart will not restore them");
            }
            info!(routes = self.routes.len(), "routes updated");
        }
        let per_router: Vec<Vec<(u64, u64)>> = self
            .programs
            .values()
            .filter(|p| p.program_name == "xdp_router")
            .map(|p| crate::routes::counters(&p.ebpf, self.routes.len()))
            .collect();
        Ok(crate::routes::status(&self.routes, &per_router))
    }

    fn hook_index(&self, program_id: &str, target: &HookTarget) -> Option<usize> {
        self.hooks
            .iter()
            .position(|h| h.hook.program_id == program_id && &h.hook.target == target)
    }

    fn hook_dir(&self, program_id: &str) -> PathBuf {
        self.pin_root.join(program_id).join("hooks")
    }

    fn attach_hook(
        &mut self,
        program_id: &str,
        target: &HookTarget,
        deny: bool,
        sample_every: u32,
    ) -> Result<Hook, ApiError> {
        let hook = self.hold_hook(program_id, target, deny, sample_every)?;
        self.save_hooks();
        Ok(hook)
    }

    /// `attach_hook` without saving the list (restoring saves once, at the end).
    fn hold_hook(
        &mut self,
        program_id: &str,
        target: &HookTarget,
        deny: bool,
        sample_every: u32,
    ) -> Result<Hook, ApiError> {
        let unknown = self.unknown_program(program_id);
        let hook_dir = self.hook_dir(program_id);
        let existing = self.hook_index(program_id, target);
        let loaded = self.programs.get_mut(program_id).ok_or(unknown)?;
        // Attached already: only the options change (the link stays).
        if let Some(i) = existing {
            self.hooks.remove(i);
        }
        let held = hooks::attach(
            &mut loaded.ebpf,
            program_id,
            &loaded.program_name,
            &hook_dir,
            target,
            deny,
            sample_every,
            &mut self.reconciliation,
        )?;
        let hook = held.hook.clone();
        self.hooks.push(held);
        Ok(hook)
    }

    fn detach_hook(&mut self, program_id: &str, target: &HookTarget) -> Result<Hook, ApiError> {
        let Some(i) = self.hook_index(program_id, target) else {
            let here: Vec<String> = self
                .hooks
                .iter()
                .filter(|h| h.hook.program_id == program_id)
                .map(|h| h.hook.target.to_string())
                .collect();
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "{program_id} is not attached to {target} (it is attached to: {})",
                    if here.is_empty() {
                        "nothing but XDP hooks, if any".to_string()
                    } else {
                        here.join(", ")
                    }
                ),
            ));
        };
        let held = self.hooks.remove(i);
        if let (Some(p), Some(id)) = (self.programs.get_mut(program_id), hooks::cgroup_id(target))
            && p.program_name == "cgroup_counter"
            && held.hook.deny
        {
            let _ = hooks::set_deny(&mut p.ebpf, id, false);
        }
        let hook = held.hook.clone();
        drop(held);
        let remaining: Vec<&hooks::HeldHook> = self
            .hooks
            .iter()
            .filter(|h| h.hook.program_id == program_id)
            .collect();
        hooks::remove_unheld_pins(&self.hook_dir(program_id), &remaining);
        self.save_hooks();
        info!(program_id, %target, "detached");
        Ok(hook)
    }

    fn save_hooks(&self) {
        let saved: Vec<hooks::SavedHook> = self.hooks.iter().map(|h| h.saved()).collect();
        let json = serde_json::to_vec_pretty(&saved).expect("hooks serialize");
        if let Err(e) = sys::write_atomically(&self.state_dir.join(HOOKS_FILE), &json) {
            warn!(state_dir = %self.state_dir.display(), error = %e, "saving the hook attachments failed; a restart will not restore them");
        }
    }

    /// Attaches again the hooks a previous daemon (or a crashed loader) held, adopting their
    /// pinned links; removes hook pins nothing wants.
    fn restore_hooks(&mut self) {
        let path = self.state_dir.join(HOOKS_FILE);
        let saved: Vec<hooks::SavedHook> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(file = %path.display(), error = %e, "saved hooks unreadable; starting with none");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        for h in saved {
            if let Err(e) = self.hold_hook(&h.program_id, &h.target, h.deny, h.sample_every) {
                warn!(program_id = %h.program_id, target = %h.target, error = %e, "cannot attach a saved hook again");
                self.reconciliation.push(sys::reconciled(
                    "failed",
                    format!(
                        "{} on {}: could not be attached again ({e})",
                        h.program_id, h.target
                    ),
                ));
            }
        }
        for id in self.programs.keys() {
            let held: Vec<&hooks::HeldHook> = self
                .hooks
                .iter()
                .filter(|h| &h.hook.program_id == id)
                .collect();
            hooks::remove_unheld_pins(&self.hook_dir(id), &held);
        }
        self.save_hooks();
    }

    fn save_programs(&self) {
        let saved = SavedPrograms {
            next_number: self.next_number.clone(),
            programs: self
                .programs
                .values()
                .map(|p| SavedProgram {
                    id: p.info.id.clone(),
                    name: p.requested_name.clone(),
                    default_mode: p.info.default_mode,
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&saved).expect("program lists serialize");
        if let Err(e) = sys::write_atomically(&self.state_dir.join(PROGRAMS_FILE), &json) {
            warn!(state_dir = %self.state_dir.display(), error = %e, "saving the program list failed; a restart will not restore it");
        }
    }

    /// Loads again, under the same ids and onto their pinned maps, the programs a previous
    /// daemon (or a crashed loader) had loaded.
    fn restore_programs(&mut self) {
        let path = self.state_dir.join(PROGRAMS_FILE);
        let saved: SavedPrograms = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(s) => s,
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "saved program list unreadable; starting with none");
                    return;
                }
            },
            Err(_) => return,
        };
        self.next_number = saved.next_number;
        for p in saved.programs {
            let dir = self.pin_root.join(&p.id);
            let pinned_maps = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.file_name() != "links" && e.file_name() != "hooks")
                .count();
            match self.load(&p.name, Some(p.default_mode), Some(&p.id)) {
                Ok(info) => {
                    info!(program_id = %info.id, kernel_id = info.kernel_id, "restored onto its pinned maps");
                    self.reconciliation.push(if pinned_maps > 0 {
                        sys::reconciled(
                            "adopted",
                            format!(
                                "{}: loaded again (kernel id {}) onto its {pinned_maps} pinned maps; counters, flows and rules carry on",
                                info.id, info.kernel_id
                            ),
                        )
                    } else {
                        sys::reconciled(
                            "recreated",
                            format!(
                                "{}: its pinned maps were gone; loaded again (kernel id {}) with new, empty ones",
                                info.id, info.kernel_id
                            ),
                        )
                    });
                }
                Err(e) => {
                    warn!(program_id = %p.id, error = %e, "cannot restore; its pins are removed");
                    sys::remove_pins(&dir);
                    self.reconciliation.push(sys::reconciled(
                        "failed",
                        format!(
                            "{}: could not be loaded again ({e}); its pins were removed",
                            p.id
                        ),
                    ));
                }
            }
        }
        self.save_programs();
        // Pins of ours that no saved program owns (an earlier daemon's leftovers). Only
        // directories named like program ids (`<stem>-<n>`): others under the pin root (the
        // shaper's, or anything not ours) are not a program's leftovers.
        for e in std::fs::read_dir(&self.pin_root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() && is_program_id(&id) && !self.programs.contains_key(&id) {
                sys::remove_pins(&e.path());
                warn!(program_id = %id, "removed pins no saved program owns");
                self.reconciliation.push(sys::reconciled(
                    "removed",
                    format!("{id}: pinned under {} but in no saved program list; its pins (and any link they held) were removed", self.pin_root.display()),
                ));
            }
        }
    }

    fn read_map(
        &self,
        program_id: &str,
        map: &str,
    ) -> Result<crate::mapread::MapEntries, ApiError> {
        let p = self.programs.get(program_id).ok_or_else(|| {
            ApiError::new(
                ErrorKind::UnknownProgram,
                format!("no program {program_id} is loaded: see `x0tta6bl4-ebpf programs`"),
            )
        })?;
        let m = p.ebpf.map(map).ok_or_else(|| {
            let names: Vec<&str> = p.ebpf.maps().map(|(n, _)| n).collect();
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "{program_id} has no map {map} (it has: {})",
                    names.join(", ")
                ),
            )
        })?;
        crate::mapread::read(m, map).map_err(|e| ApiError::new(ErrorKind::InvalidRequest, e))
    }

    fn rule_set(&self) -> RuleSet {
        RuleSet {
            default_policy: self.firewall.default_policy,
            rules: self.firewall.rules.clone(),
        }
    }

    fn change_rules(&mut self, change: RulesRequest) -> Result<RuleSet, ApiError> {
        let mut rules = self.firewall.rules.clone();
        let mut default_policy = self.firewall.default_policy;
        let count = rules.len();
        match change {
            RulesRequest::Add { rule, position } => {
                let at = position.unwrap_or(count + 1);
                if at == 0 || at > count + 1 {
                    return Err(ApiError::new(
                        ErrorKind::InvalidRequest,
                        format!(
                            "position {at} is outside 1..={}: there are {count} rules",
                            count + 1
                        ),
                    ));
                }
                rules.insert(at - 1, rule);
            }
            RulesRequest::Delete { number } => {
                if number == 0 || number > count {
                    return Err(ApiError::new(
                        ErrorKind::InvalidRequest,
                        format!(
                            "there is no rule #{number}: there are {count} rules (see `x0tta6bl4-ebpf rules list`)"
                        ),
                    ));
                }
                rules.remove(number - 1);
            }
            RulesRequest::Apply {
                rules: new,
                default_policy: policy,
                staged,
            } => {
                rules = match staged {
                    Some(token) => {
                        let Some((_, mut first)) = self.staged.remove(&token) else {
                            return Err(ApiError::new(
                                ErrorKind::InvalidRequest,
                                format!(
                                    "nothing is staged under token {token} (staged rules expire after {}s); send the rules again",
                                    STAGE_TTL.as_secs()
                                ),
                            ));
                        };
                        first.extend(new);
                        first
                    }
                    None => new,
                };
                default_policy = policy.unwrap_or(default_policy);
            }
            RulesRequest::Stage { token, rules: more } => {
                let now = std::time::Instant::now();
                self.staged
                    .retain(|_, (at, _)| now.duration_since(*at) < STAGE_TTL);
                let entry = self
                    .staged
                    .entry(token)
                    .or_insert_with(|| (now, Vec::new()));
                if entry.1.len() + more.len() > ebpf_shared::MAX_RULES {
                    self.staged.remove(&token);
                    return Err(ApiError::new(
                        ErrorKind::InvalidRequest,
                        format!("more than {} rules staged", ebpf_shared::MAX_RULES),
                    ));
                }
                entry.0 = now;
                entry.1.extend(more);
                return Ok(RuleSet {
                    default_policy: self.firewall.default_policy,
                    rules: Vec::new(),
                });
            }
            RulesRequest::List | RulesRequest::Explain(_) => {
                return Err(ApiError::new(
                    ErrorKind::Internal,
                    "not a change to the rules",
                ));
            }
        }
        self.set_rules(rules, default_policy)
    }

    fn set_rules(
        &mut self,
        rules: Vec<FirewallRule>,
        default_policy: RuleAction,
    ) -> Result<RuleSet, ApiError> {
        let compiled = compile(&rules, default_policy)
            .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, e.to_string()))?;
        let set = RuleSet {
            default_policy,
            rules,
        };
        let enforcing: Vec<String> = self
            .programs
            .iter()
            .filter(|(_, p)| p.enforces_rules)
            .map(|(id, _)| id.clone())
            .collect();
        for (n, id) in enforcing.iter().enumerate() {
            let p = self.programs.get_mut(id).expect("listed just above");
            if let Err(e) = firewall::install(&mut p.ebpf, &compiled) {
                // Put back the old rule set where the new one already went.
                for done in &enforcing[..n] {
                    let p = self.programs.get_mut(done).expect("listed just above");
                    if let Err(e) = firewall::install(&mut p.ebpf, &self.compiled) {
                        warn!(program_id = %done, error = %e, "restoring the previous rules failed");
                    }
                }
                return Err(ApiError::new(
                    ErrorKind::Internal,
                    format!(
                        "installing the rules into {id}: {e}; the previous rules stay in force"
                    ),
                ));
            }
        }
        let installed = enforcing;
        let json = serde_json::to_vec_pretty(&set).expect("rule sets serialize");
        if let Err(e) = sys::write_atomically(&self.state_dir.join(RULES_FILE), &json) {
            warn!(state_dir = %self.state_dir.display(), error = %e, "the new rules are in force but could not be saved; they will not survive a restart");
        }
        info!(rules = set.rules.len(), default_policy = %default_policy, programs = installed.len(), "firewall rules replaced");
        self.firewall.rules = set.rules.clone();
        self.firewall.default_policy = default_policy;
        self.compiled = compiled;
        Ok(set)
    }

    fn explain(&self, q: &PacketQuery) -> Result<Explanation, ApiError> {
        let protocol = q.protocol.number().ok_or_else(|| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                "give the packet's protocol (tcp, udp, icmp or icmpv6), not any",
            )
        })?;
        if q.source.is_ipv4() != q.dest.is_ipv4() {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                "source and destination must be of the same IP version",
            ));
        }
        let has_ports = q.protocol == Protocol::Tcp || q.protocol == Protocol::Udp;
        if !has_ports && (q.source_port.is_some() || q.dest_port.is_some()) {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("{} has no ports", q.protocol),
            ));
        }
        let packet = PacketSummary {
            source: q.source,
            dest: q.dest,
            protocol,
            // A TCP/UDP packet always has both ports; an unknown one is 0 here, which no rule
            // can name.
            source_port: has_ports.then(|| q.source_port.unwrap_or(0)),
            dest_port: has_ports.then(|| q.dest_port.unwrap_or(0)),
        };
        let verdict = self.compiled.evaluate(&packet);
        let rules = &self.firewall.rules;
        let also_matching: Vec<usize> = rules
            .iter()
            .enumerate()
            .filter(|(i, r)| {
                Some(*i) != verdict.rule
                    && verdict.rule.is_none_or(|d| *i > d)
                    && rule_matches(r, &packet)
            })
            .map(|(i, _)| i + 1)
            .collect();
        let later = if also_matching.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = also_matching.iter().map(|n| format!("#{n}")).collect();
            format!("; {} match too but come later", list.join(", "))
        };
        let reason = match verdict.rule {
            Some(i) => format!(
                "rule #{} ({}) is the first rule that matches{later}",
                i + 1,
                rules[i]
            ),
            None => format!(
                "no rule matches; the default policy is {}",
                self.firewall.default_policy
            ),
        };
        Ok(Explanation {
            action: verdict.action,
            rule_number: verdict.rule.map(|i| i + 1),
            rule: verdict.rule.map(|i| rules[i].clone()),
            also_matching,
            reason,
        })
    }

    fn unknown_program(&self, id: &str) -> ApiError {
        let loaded: Vec<&str> = self.programs.keys().map(String::as_str).collect();
        let hint = if loaded.is_empty() {
            "no program is loaded; load one with `x0tta6bl4-ebpf load xdp_firewall`".to_string()
        } else {
            format!("loaded: {}", loaded.join(", "))
        };
        ApiError::new(
            ErrorKind::UnknownProgram,
            format!("no program with id {id:?} ({hint})"),
        )
    }

    /// Resolves a user-given object name inside `programs_dir`, refusing anything that would
    /// leave it.
    fn resolve_object(&self, name: &str) -> Result<PathBuf, ApiError> {
        let dir = &self.programs_dir;
        let invalid = |m: String| ApiError::new(ErrorKind::InvalidRequest, m);
        let requested = Path::new(name);
        if requested
            .components()
            .any(|c| matches!(c, Component::ParentDir))
        {
            return Err(invalid(format!(
                "{name:?} leaves programs_dir ({}): give a file name inside it",
                dir.display()
            )));
        }
        let candidate = if requested.is_absolute() {
            requested.to_path_buf()
        } else {
            dir.join(requested)
        };
        let candidates = if candidate.extension().is_none() {
            vec![candidate.with_extension("o"), candidate]
        } else {
            vec![candidate]
        };
        let Some(found) = candidates.iter().find(|c| c.is_file()) else {
            let available: Vec<String> = std::fs::read_dir(dir)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.ends_with(".o"))
                        .collect()
                })
                .unwrap_or_default();
            let mut known = vec![
                "xdp_firewall (built-in)".to_string(),
                "xdp_pass (built-in)".to_string(),
            ];
            known.extend(available);
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "no program {name:?}: it is not built in and there is no such object in programs_dir {} (available: {})",
                    dir.display(),
                    known.join(", ")
                ),
            ));
        };
        let canonical_dir = dir.canonicalize().map_err(|e| {
            invalid(format!(
                "programs_dir {} is not readable: {e}",
                dir.display()
            ))
        })?;
        let canonical = found
            .canonicalize()
            .map_err(|e| invalid(format!("{}: {e}", found.display())))?;
        if !canonical.starts_with(&canonical_dir) {
            return Err(invalid(format!(
                "{} is outside programs_dir ({}): copy the object there or set programs_dir",
                canonical.display(),
                canonical_dir.display()
            )));
        }
        Ok(canonical)
    }

    /// Loads `name`; `restore_id` reuses an id (and the maps pinned under it) after a restart.
    fn load(
        &mut self,
        name: &str,
        mode: Option<AttachMode>,
        restore_id: Option<&str>,
    ) -> Result<ProgramInfo, ApiError> {
        let (bytes, wanted_program, source, stem): (Vec<u8>, Option<&str>, String, String) =
            match builtin(name) {
                Some((bytes, prog)) => (bytes.to_vec(), Some(prog), "built-in".into(), prog.into()),
                None => {
                    let path = self.resolve_object(name)?;
                    let bytes = std::fs::read(&path).map_err(|e| {
                        ApiError::new(
                            ErrorKind::InvalidObject,
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    sys::check_bpf_elf(&path, &bytes)
                        .map_err(|m| ApiError::new(ErrorKind::InvalidObject, m))?;
                    let stem = path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "program".into());
                    (bytes, None, path.display().to_string(), stem)
                }
            };
        let id = match restore_id {
            Some(id) => id.to_string(),
            None => format!(
                "{stem}-{}",
                self.next_number.get(&stem).copied().unwrap_or(0) + 1
            ),
        };
        let pins = self.pin_root.join(&id);
        std::fs::create_dir_all(&pins).map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("creating {}: {e}", pins.display()),
            )
        })?;
        let result = self.load_into(name, mode, &id, &pins, bytes, wanted_program, source, &stem);
        if result.is_err() && restore_id.is_none() {
            sys::remove_pins(&pins);
        }
        result
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the pieces of one load, resolved by `load`"
    )]
    fn load_into(
        &mut self,
        name: &str,
        mode: Option<AttachMode>,
        id: &str,
        pins: &Path,
        bytes: Vec<u8>,
        wanted_program: Option<&str>,
        source: String,
        stem: &str,
    ) -> Result<ProgramInfo, ApiError> {
        let mut loader = EbpfLoader::new();
        // Maps the object declares pinned live under the program's own directory: a program
        // loaded again under this id after a restart finds them, contents and all.
        loader.default_map_pin_directory(pins);
        let flows_enabled = u8::from(self.firewall.flows);
        let verdict_cache = u8::from(self.firewall.verdict_cache);
        if wanted_program == Some("xdp_firewall") {
            loader
                .override_global(ebpf_shared::globals::FLOWS_ENABLED, &flows_enabled, true)
                .override_global(
                    ebpf_shared::globals::VERDICT_CACHE_ENABLED,
                    &verdict_cache,
                    true,
                )
                .map_max_entries(ebpf_shared::maps::FW_FLOWS4, self.firewall.flow_table_size)
                .map_max_entries(ebpf_shared::maps::FW_FLOWS, self.firewall.flow_table_size);
        }
        let mut ebpf = loader.load(&bytes).map_err(|e| {
            ApiError::new(
                ErrorKind::InvalidObject,
                format!("{source} is not a loadable BPF object: {}", sys::chain(&e)),
            )
        })?;
        let program_name = match wanted_program {
            Some(p) => p.to_string(),
            None => {
                let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
                match names.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(ApiError::new(
                            ErrorKind::InvalidObject,
                            format!("{source} contains no program"),
                        ));
                    }
                    many => {
                        return Err(ApiError::new(
                            ErrorKind::InvalidObject,
                            format!(
                                "{source} contains {} programs ({}); load objects with one program each",
                                many.len(),
                                many.join(", ")
                            ),
                        ));
                    }
                }
            }
        };
        let what = format!("program {program_name} from {source}");
        let program = ebpf.program_mut(&program_name).ok_or_else(|| {
            ApiError::new(
                ErrorKind::InvalidObject,
                format!("{source} has no program {program_name}"),
            )
        })?;
        let program_type = program_type(program);
        let loaded = match program {
            Program::Xdp(p) => p.load(),
            Program::SchedClassifier(p) => p.load(),
            Program::CgroupSkb(p) => p.load(),
            Program::SocketFilter(p) => p.load(),
            Program::TracePoint(p) => p.load(),
            _ => {
                return Err(ApiError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{what} is of a type this daemon does not load (supported: xdp, tc, cgroup_skb, socket_filter, tracepoint)"
                    ),
                ));
            }
        };
        loaded.map_err(|e| load_error(&what, e))?;
        // The built-in tracepoint programs have one place to attach: each is attached as it
        // loads, and the link lives (and dies) with the loaded object.
        let hook = match wanted_program {
            Some("tcp_state") => Some(("sock", "inet_sock_set_state")),
            Some("xdp_exceptions") => Some(("xdp", "xdp_exception")),
            _ => None,
        };
        if let (Some((category, event)), Some(prog)) = (hook, wanted_program) {
            sys::ensure_tracefs().map_err(|m| ApiError::new(ErrorKind::Unsupported, m))?;
            let tracepoint: &mut aya::programs::TracePoint = program.try_into().map_err(|_| {
                ApiError::new(
                    ErrorKind::Internal,
                    format!("{prog} is not a tracepoint program"),
                )
            })?;
            tracepoint.attach(category, event).map_err(|e| {
                ApiError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "attaching {prog} to the tracepoint {category}/{event} failed: {}",
                        sys::chain(&e)
                    ),
                )
            })?;
        }
        let kernel_id = program.info().map(|i| i.id()).map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("reading info of {what}: {}", sys::chain(&e)),
            )
        })?;
        // The built-in firewall enforces the daemon's rule set and attaches in the configured
        // mode; everything else starts with no rules of ours and driver mode.
        let enforces_rules = wanted_program == Some("xdp_firewall");
        if program_name == "xdp_router" {
            // Routes that no longer compile (an interface gone) are left out, not fatal.
            let compiled = crate::routes::compile(&self.routes).unwrap_or_else(|e| {
                warn!(error = %e, "the saved routes do not compile here; the router starts with none");
                Vec::new()
            });
            crate::routes::install(&mut ebpf, &compiled)?;
        }
        let default_mode = if enforces_rules {
            firewall::enable_fast_path(
                &mut ebpf,
                !self.firewall.flows && self.firewall.verdict_cache,
            )
            .and_then(|()| firewall::install(&mut ebpf, &self.compiled))
            .map_err(|e| {
                ApiError::new(
                    ErrorKind::Internal,
                    format!("installing the firewall rules: {e}"),
                )
            })?;
            mode.unwrap_or(self.firewall.attach_mode)
        } else {
            mode.unwrap_or(AttachMode::Drv)
        };
        let number: u64 = id
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let counter = self.next_number.entry(stem.to_string()).or_insert(0);
        *counter = (*counter).max(number);
        let maps = ebpf.maps().map(|(n, _)| n.to_string()).collect();
        let info = ProgramInfo {
            id: id.to_string(),
            name: program_name.clone(),
            program_type,
            kernel_id,
            loaded_at: sys::now_rfc3339(),
            source,
            default_mode,
            attachments: Vec::new(),
            hooks: Vec::new(),
            maps,
        };
        self.programs.insert(
            id.to_string(),
            LoadedProgram {
                ebpf,
                enforces_rules,
                requested_name: name.to_string(),
                program_name,
                info: info.clone(),
            },
        );
        Ok(info)
    }

    fn create_link(
        &mut self,
        program_id: &str,
        interface: &str,
        mode: Option<AttachMode>,
    ) -> Result<NewLink, ApiError> {
        let unknown = self.unknown_program(program_id);
        let pin = self.link_pin(program_id, interface);
        let loaded = self.programs.get_mut(program_id).ok_or(unknown)?;
        let mode = mode.unwrap_or(loaded.info.default_mode);
        let program_type = loaded.info.program_type;
        let program = loaded
            .ebpf
            .program_mut(&loaded.program_name)
            .ok_or_else(|| {
                ApiError::new(ErrorKind::Internal, "program vanished from its object")
            })?;
        let xdp: &mut Xdp = program.try_into().map_err(|_| {
            ApiError::new(
                ErrorKind::Unsupported,
                format!("{program_id} is a {program_type} program; attaching to an interface works for xdp programs only in this version"),
            )
        })?;
        sys::interface_index(interface)?;
        if pin.exists() {
            match adopt(xdp, &pin) {
                Ok(link) => {
                    info!(
                        program_id,
                        interface, "adopted the pinned link: the program was never detached"
                    );
                    self.reconciliation.push(sys::reconciled(
                        "adopted",
                        format!("{program_id} on {interface}: its pinned link, still attached; the program never left the interface"),
                    ));
                    return Ok(NewLink {
                        link,
                        mode,
                        program_type,
                    });
                }
                Err(e) => {
                    warn!(program_id, interface, error = %e, "the pinned link is stale; attaching anew");
                    self.reconciliation.push(sys::reconciled(
                        "recreated",
                        format!("{program_id} on {interface}: its pinned link was stale ({e}); attached anew"),
                    ));
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let link_id = xdp
            .attach(interface, xdp_mode(mode))
            .map_err(|e| attach_error(program_id, interface, mode, e))?;
        let link = xdp.take_link(link_id).map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("taking the link of {program_id}: {}", sys::chain(&e)),
            )
        })?;
        let link = pin_link(link, &pin).map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!(
                    "pinning the link of {program_id} on {interface} at {}: {e}",
                    pin.display()
                ),
            )
        })?;
        info!(program_id, interface, %mode, "attached");
        Ok(NewLink {
            link,
            mode,
            program_type,
        })
    }
}

/// Pins a new link, so that it outlives its holder.
fn pin_link(link: XdpLink, pin: &Path) -> Result<HeldLink, String> {
    let fd = FdLink::try_from(link).map_err(|e| format!("not a bpf_link: {e}"))?;
    Ok(HeldLink {
        fd: sys::pin_link(fd, pin)?,
        pin: pin.to_path_buf(),
    })
}

/// Takes over a link pinned by an earlier holder and swaps this program into it, atomically:
/// packets go from the old program to this one with no moment unfiltered.
fn adopt(xdp: &mut Xdp, pin: &Path) -> Result<HeldLink, String> {
    let pinned = PinnedLink::from_pin(pin).map_err(|e| sys::chain(&e))?;
    let fd: FdLink = pinned.into();
    let link = XdpLink::try_from(fd).map_err(|e| sys::chain(&e))?;
    let id = xdp.attach_to_link(link).map_err(|e| sys::chain(&e))?;
    let link = xdp.take_link(id).map_err(|e| sys::chain(&e))?;
    let fd = FdLink::try_from(link).map_err(|e| sys::chain(&e))?;
    Ok(HeldLink {
        fd,
        pin: pin.to_path_buf(),
    })
}

fn attach_error(program_id: &str, interface: &str, mode: AttachMode, e: ProgramError) -> ApiError {
    if let ProgramError::UnknownInterface { .. } = e {
        return ApiError::new(
            ErrorKind::UnknownInterface,
            sys::unknown_interface_message(interface),
        );
    }
    let errno = sys::errno(&e);
    let detail = sys::chain(&e);
    match (errno, mode) {
        (Some(libc::EOPNOTSUPP), AttachMode::Drv) => ApiError::new(
            ErrorKind::Unsupported,
            format!(
                "interface {interface} has no native XDP support (driver mode failed with EOPNOTSUPP); \
                 attach with --mode skb, which works on every interface"
            ),
        ),
        // The driver has native XDP but refuses it in its present state (an MTU too large
        // for XDP frames, say: veth's "Peer MTU is too large"); skb mode is not bound by it.
        (Some(libc::EINVAL | libc::ERANGE), AttachMode::Drv) => ApiError::new(
            ErrorKind::Unsupported,
            format!(
                "interface {interface} refused native XDP in its present state ({detail}; an MTU too large for XDP frames does this); \
                 attach with --mode skb, or fix the cause and attach again"
            ),
        ),
        (Some(libc::EOPNOTSUPP | libc::EINVAL), AttachMode::Hw) => ApiError::new(
            ErrorKind::Unsupported,
            format!(
                "interface {interface} cannot offload XDP to hardware (hw mode failed: {detail}); \
                 use --mode drv or --mode skb"
            ),
        ),
        (Some(libc::EBUSY | libc::EEXIST), _) => ApiError::new(
            ErrorKind::Busy,
            format!(
                "interface {interface} already has an XDP program that this daemon does not manage; \
                 see `bpftool net show dev {interface}` and remove it (`ip link set dev {interface} xdp off`, \
                 or `bpftool link detach id N` for a bpf_link) before attaching {program_id}"
            ),
        ),
        (Some(libc::EPERM | libc::EACCES), _) => ApiError::new(
            ErrorKind::PermissionDenied,
            format!(
                "attaching {program_id} to {interface} was not permitted: the daemon needs root or CAP_NET_ADMIN + CAP_BPF"
            ),
        ),
        _ => ApiError::new(
            ErrorKind::Internal,
            format!("attaching {program_id} to {interface} in {mode} mode failed: {detail}"),
        ),
    }
}

/// A directory name the loader gives a program's pins: `<stem>-<n>`, `n` a positive number.
fn is_program_id(name: &str) -> bool {
    match name.rsplit_once('-') {
        Some((stem, n)) => {
            !stem.is_empty()
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && n.parse::<u64>().is_ok_and(|n| n > 0)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_program_id;

    #[test]
    fn only_program_id_shaped_names_are_swept() {
        for id in [
            "xdp_firewall-1",
            "xdp_firewall-9",
            "my-prog-12",
            "cgroup_counter-3",
        ] {
            assert!(is_program_id(id), "{id}");
        }
        for other in [
            "shaper",
            "xdp_firewall",
            "xdp_firewall-",
            "-1",
            "fw-0",
            "fw-1a",
            "maps",
        ] {
            assert!(!is_program_id(other), "{other}");
        }
    }
}
