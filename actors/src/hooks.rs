//! Attachments other than XDP: a cgroup_skb program on a cgroup v2 directory, a TC program on
//! an interface's TCX hook, a socket filter on an AF_PACKET socket the daemon opens on an
//! interface. The LoaderActor holds them (`attach`, `detach`, `hooks`).
//!
//! Links (cgroup, TCX) are pinned under `<pin_root>/<program id>/hooks/`, so they keep the
//! program attached while no daemon runs; the next daemon swaps its freshly loaded program
//! into them (BPF_LINK_UPDATE). A socket dies with the daemon, and is opened again.

use std::collections::BTreeMap;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aya::Ebpf;
use aya::maps::{Array, HashMap as BpfHashMap, PerCpuHashMap};
use aya::programs::cgroup_skb::CgroupSkbAttachType;
use aya::programs::links::{CgroupAttachMode, FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::trace_point::TracePointLink;
use aya::programs::{LinkOrder, Program, SchedClassifier, SocketFilter, TcAttachType};
use ebpf_shared::cgroup::CgroupKey;
use tracing::{info, warn};

use crate::api::{
    ApiError, Direction, ErrorKind, Hook, HookCounter, HookStats, HookTarget, ProgramType,
};
use crate::sys::{self, internal};

/// `statfs` magic of cgroup2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// How deep below an attached cgroup the counters are named by path.
const CGROUP_WALK_DEPTH: usize = 8;

/// A hook as saved in the state dir, to attach again after a restart.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct SavedHook {
    pub program_id: String,
    pub target: HookTarget,
    pub deny: bool,
    pub sample_every: u32,
}

/// A hook and what keeps it attached.
pub struct HeldHook {
    pub hook: Hook,
    holder: Holder,
}

enum Holder {
    Links(#[expect(dead_code, reason = "held: dropping them lets the links go")] Vec<Held>),
    Socket(SocketReader),
    /// A perf-event link: it dies with the daemon, which attaches it again at start.
    Tracepoint(#[expect(dead_code, reason = "held: dropping it detaches")] TracePointLink),
}

/// The AF_PACKET socket of a socket filter, and the thread that reads the samples the filter
/// passes up.
struct SocketReader {
    _socket: Arc<OwnedFd>,
    stop: Arc<AtomicBool>,
    samples: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Drop for SocketReader {
    fn drop(&mut self) {
        // The thread sees this within its 200 ms receive timeout and lets the socket go.
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl HeldHook {
    pub fn saved(&self) -> SavedHook {
        SavedHook {
            program_id: self.hook.program_id.clone(),
            target: self.hook.target.clone(),
            deny: self.hook.deny,
            sample_every: self.hook.sample_every,
        }
    }
}

fn api(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError::new(kind, message)
}

/// Where a hook's link for `direction` is pinned.
fn pin_name(target: &HookTarget, direction: Direction, cgroup_id: u64) -> String {
    match target {
        HookTarget::Cgroup { .. } => format!("cgroup-{cgroup_id}-{direction}"),
        HookTarget::Tc { interface, .. } => format!("tcx-{interface}-{direction}"),
        HookTarget::Socket { interface } => format!("socket-{interface}"),
        HookTarget::Tracepoint { category, name } => format!("tracepoint-{category}-{name}"),
    }
}

/// Opens `path` as a cgroup v2 directory: (its fd, its id).
fn open_cgroup(path: &str) -> Result<(std::fs::File, u64), ApiError> {
    let bad = |why: String| {
        api(
            ErrorKind::InvalidRequest,
            format!(
                "{path} {why}: --cgroup takes a cgroup v2 directory (cgroup2 is mounted at /sys/fs/cgroup/unified here; make one with mkdir)"
            ),
        )
    };
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot be opened ({e})")))?;
    let meta = file
        .metadata()
        .map_err(|e| bad(format!("cannot be read ({e})")))?;
    if !meta.is_dir() {
        return Err(bad("is not a directory".into()));
    }
    let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| bad(format!("cannot be read ({e})")))?;
    if fs.filesystem_type().0 as i64 != CGROUP2_SUPER_MAGIC {
        return Err(bad("is not in a cgroup v2 hierarchy".into()));
    }
    Ok((file, meta.ino()))
}

/// Swaps `program_fd` into the link pinned at `pin`; the link's fd is what holds it now.
fn adopt_pinned(pin: &Path, program_fd: std::os::fd::BorrowedFd<'_>) -> Result<Held, String> {
    let link = sys::obj_get(pin).map_err(|e| e.to_string())?;
    sys::link_update(link.as_fd(), program_fd).map_err(|e| e.to_string())?;
    Ok(Held::Fd(link))
}

/// A link held open: as aya made it, or as opened from its pin.
enum Held {
    Link(#[expect(dead_code, reason = "held: dropping it lets the link go")] FdLink),
    Fd(#[expect(dead_code, reason = "held: dropping it lets the link go")] OwnedFd),
}

/// A TCX link of `prog` on `interface` in `direction`, pinned at `pin`, and whether it was
/// adopted: the link an earlier holder pinned there, with `prog` swapped in (so the hook is
/// never empty), when it is still on that interface; else a new one. A link whose interface
/// was deleted (and perhaps made again under the same name) is stale: it is unpinned and a
/// new link made.
pub(crate) fn tcx_link(
    prog: &mut SchedClassifier,
    interface: &str,
    direction: Direction,
    pin: &Path,
) -> Result<(FdLink, bool), String> {
    let kind = match direction {
        Direction::Ingress => TcAttachType::Ingress,
        Direction::Egress => TcAttachType::Egress,
    };
    if pin.exists() {
        let adopted = (|| -> Result<FdLink, String> {
            let pinned = PinnedLink::from_pin(pin).map_err(|e| sys::chain(&e))?;
            let link =
                SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| sys::chain(&e))?;
            let id = prog.attach_to_link(link).map_err(|e| sys::chain(&e))?;
            let link = prog.take_link(id).map_err(|e| sys::chain(&e))?;
            let fd = FdLink::try_from(link).map_err(|e| sys::chain(&e))?;
            let ours = prog.info().map_err(|e| sys::chain(&e))?.id();
            let (_, on_hook) =
                SchedClassifier::query_tcx(interface, kind).map_err(|e| sys::chain(&e))?;
            if on_hook.iter().any(|p| p.id() == ours) {
                Ok(fd)
            } else {
                Err(format!("the link is no longer on {interface}"))
            }
        })();
        match adopted {
            Ok(fd) => return Ok((fd, true)),
            Err(e) => {
                warn!(interface, pin = %pin.display(), error = %e, "stale TCX link; attaching anew");
                let _ = std::fs::remove_file(pin);
            }
        }
    }
    let id = prog
        .attach_with_options(
            interface,
            kind,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| sys::chain(&e))?;
    let link = prog.take_link(id).map_err(|e| sys::chain(&e))?;
    let fd = FdLink::try_from(link).map_err(|e| sys::chain(&e))?;
    Ok((sys::pin_link(fd, pin)?, false))
}

/// Attaches the loaded program `program_name` of `ebpf` to `target`. `hook_dir` is where its
/// links are pinned (and found again after a restart).
#[expect(clippy::too_many_arguments, reason = "the parts of one attach request")]
pub fn attach(
    ebpf: &mut Ebpf,
    program_id: &str,
    program_name: &str,
    hook_dir: &Path,
    target: &HookTarget,
    deny: bool,
    sample_every: u32,
    reconciliation: &mut Vec<crate::api::ReconcileStep>,
) -> Result<HeldHook, ApiError> {
    let counter = program_name == "cgroup_counter";
    let sampler = program_name == "socket_counter";
    if deny && !counter {
        return Err(api(
            ErrorKind::InvalidRequest,
            format!(
                "--deny works with the built-in cgroup_counter; {program_id} decides for itself what to drop"
            ),
        ));
    }
    if sample_every != 0 && !sampler {
        return Err(api(
            ErrorKind::InvalidRequest,
            format!("--sample works with the built-in socket_counter, not {program_id}"),
        ));
    }
    let program = ebpf
        .program_mut(program_name)
        .ok_or_else(|| api(ErrorKind::Internal, "program vanished from its object"))?;
    let program_type = crate::loader::program_type(program);
    let mut adopted = 0;
    let (holder, directions) = match (program, target) {
        (Program::CgroupSkb(prog), HookTarget::Cgroup { path }) => {
            let (file, cgroup_id) = open_cgroup(path)?;
            let directions = match prog.expected_attach_type() {
                Some(CgroupSkbAttachType::Ingress) => vec![Direction::Ingress],
                Some(CgroupSkbAttachType::Egress) => vec![Direction::Egress],
                None => vec![Direction::Ingress, Direction::Egress],
            };
            let mut links = Vec::new();
            let mut made = Vec::new();
            for &d in &directions {
                let pin = hook_dir.join(pin_name(target, d, cgroup_id));
                if pin.exists() {
                    let fd = prog.fd().map_err(|e| internal("program fd", &e))?;
                    match adopt_pinned(&pin, fd.as_fd()) {
                        Ok(link) => {
                            links.push(link);
                            adopted += 1;
                            continue;
                        }
                        Err(e) => {
                            warn!(program_id, pin = %pin.display(), error = %e, "stale hook link; attaching anew");
                            let _ = std::fs::remove_file(&pin);
                        }
                    }
                }
                let kind = match d {
                    Direction::Ingress => CgroupSkbAttachType::Ingress,
                    Direction::Egress => CgroupSkbAttachType::Egress,
                };
                let id = prog
                    // A bpf_link takes no flags (the kernel refuses any with EINVAL) and
                    // always lets other programs run on the cgroup too.
                    .attach(&file, kind, CgroupAttachMode::Single)
                    .map_err(|e| {
                        api(
                            ErrorKind::Internal,
                            format!(
                                "attaching {program_id} to cgroup {path} ({d}) failed: {}",
                                sys::chain(&e)
                            ),
                        )
                    })?;
                let link = prog
                    .take_link(id)
                    .map_err(|e| internal("taking the link", &e))?;
                let fd = FdLink::try_from(link).map_err(|e| internal("not a bpf_link", &e))?;
                let fd = sys::pin_link(fd, &pin).map_err(|m| api(ErrorKind::Internal, m))?;
                links.push(Held::Link(fd));
                made.push(pin);
            }
            if counter && let Err(e) = set_deny(ebpf, cgroup_id, deny) {
                // Nothing half-done: the links just made go again.
                for pin in made {
                    let _ = std::fs::remove_file(pin);
                }
                return Err(e);
            }
            (Holder::Links(links), directions)
        }
        (
            Program::SchedClassifier(prog),
            HookTarget::Tc {
                interface,
                direction,
            },
        ) => {
            sys::interface_index(interface)?;
            let pin = hook_dir.join(pin_name(target, *direction, 0));
            let (link, was_adopted) =
                tcx_link(prog, interface, *direction, &pin).map_err(|e| {
                    api(
                        ErrorKind::Internal,
                        format!(
                            "attaching {program_id} to the TCX {direction} hook of {interface} failed: {e}"
                        ),
                    )
                })?;
            adopted += usize::from(was_adopted);
            let link = Held::Link(link);
            (Holder::Links(vec![link]), vec![*direction])
        }
        (Program::SocketFilter(_), HookTarget::Socket { interface }) => {
            let ifindex = sys::interface_index(interface)?;
            if sampler {
                set_sample_every(ebpf, sample_every)?;
            }
            let Some(Program::SocketFilter(prog)) = ebpf.program_mut(program_name) else {
                return Err(api(ErrorKind::Internal, "program vanished from its object"));
            };
            (
                Holder::Socket(open_socket(prog, ifindex, interface, program_id)?),
                Vec::new(),
            )
        }
        (Program::TracePoint(prog), HookTarget::Tracepoint { category, name }) => {
            sys::ensure_tracefs().map_err(|m| api(ErrorKind::Unsupported, m))?;
            let id = prog.attach(category, name).map_err(|e| {
                api(
                    ErrorKind::InvalidRequest,
                    format!(
                        "attaching {program_id} to the tracepoint {category}/{name} failed: {} (see /sys/kernel/tracing/events/ for the tracepoints there are)",
                        sys::chain(&e)
                    ),
                )
            })?;
            let link = prog
                .take_link(id)
                .map_err(|e| internal("taking the link", &e))?;
            (Holder::Tracepoint(link), Vec::new())
        }
        (_, target) => {
            let wants = match program_type {
                ProgramType::CgroupSkb => "a cgroup: `attach ID --cgroup PATH`",
                ProgramType::Tc => "an interface: `attach ID IFACE [--direction ingress|egress]`",
                ProgramType::SocketFilter => {
                    "an interface, whose packets it filters: `attach ID IFACE`"
                }
                ProgramType::Tracepoint => "a tracepoint: `attach ID --tracepoint CATEGORY/NAME`",
                _ => "its own kind of hook",
            };
            return Err(api(
                ErrorKind::Unsupported,
                format!(
                    "{program_id} is a {program_type} program, which attaches to {wants}; not to {target}"
                ),
            ));
        }
    };
    if adopted > 0 {
        reconciliation.push(sys::reconciled(
            "adopted",
            format!("{program_id} on {target}: its pinned link, still attached"),
        ));
    }
    info!(program_id, %target, "attached");
    Ok(HeldHook {
        hook: Hook {
            program_id: program_id.to_string(),
            program_type,
            target: target.clone(),
            directions,
            deny,
            sample_every,
        },
        holder,
    })
}

/// Marks (or unmarks) cgroup `id` as denied in `cgroup_counter`'s map.
pub fn set_deny(ebpf: &mut Ebpf, cgroup_id: u64, deny: bool) -> Result<(), ApiError> {
    let map = ebpf
        .map_mut(ebpf_shared::cgroup::CG_DENY)
        .ok_or_else(|| api(ErrorKind::Internal, "cgroup_counter has no deny map"))?;
    let mut deny_map: BpfHashMap<_, u64, u8> =
        BpfHashMap::try_from(map).map_err(|e| internal("the deny map", &e))?;
    if deny {
        deny_map
            .insert(cgroup_id, 1, 0)
            .map_err(|e| internal("marking the cgroup denied", &e))?;
    } else {
        match deny_map.remove(&cgroup_id) {
            Ok(()) => {}
            Err(e) if sys::errno(&e) == Some(libc::ENOENT) => {}
            Err(e) => return Err(internal("clearing the deny", &e)),
        }
    }
    let any = u32::from(deny_map.keys().next().is_some());
    let mut flag: Array<_, u32> = Array::try_from(
        ebpf.map_mut(ebpf_shared::cgroup::CG_DENY_ANY)
            .ok_or_else(|| api(ErrorKind::Internal, "cgroup_counter has no deny flag"))?,
    )
    .map_err(|e| internal("the deny flag", &e))?;
    flag.set(0, any, 0)
        .map_err(|e| internal("setting the deny flag", &e))
}

fn set_sample_every(ebpf: &mut Ebpf, n: u32) -> Result<(), ApiError> {
    let map = ebpf
        .map_mut(ebpf_shared::socket::SF_SAMPLE_EVERY)
        .ok_or_else(|| api(ErrorKind::Internal, "socket_counter has no sample map"))?;
    let mut every: Array<_, u32> =
        Array::try_from(map).map_err(|e| internal("the sample map", &e))?;
    every
        .set(0, n, 0)
        .map_err(|e| internal("setting the sample rate", &e))
}

/// Opens an AF_PACKET socket that sees every frame of `ifindex`, attaches the filter before
/// the socket is bound (so no frame reaches it unfiltered), and starts the sample reader.
fn open_socket(
    prog: &mut SocketFilter,
    ifindex: u32,
    interface: &str,
    program_id: &str,
) -> Result<SocketReader, ApiError> {
    let eth_p_all = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the result is checked.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(api(
            ErrorKind::Internal,
            format!(
                "opening an AF_PACKET socket for {program_id}: {}",
                std::io::Error::last_os_error()
            ),
        ));
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    prog.attach(&socket).map_err(|e| {
        api(
            ErrorKind::Internal,
            format!(
                "attaching {program_id} to its socket on {interface}: {}",
                sys::chain(&e)
            ),
        )
    })?;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: a valid socket, and a sockaddr_ll / timeval of the sizes given.
    let bound = unsafe {
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = eth_p_all;
        addr.sll_ifindex = ifindex as i32;
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        libc::bind(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(api(
            ErrorKind::Internal,
            format!(
                "binding {program_id}'s socket to {interface}: {}",
                std::io::Error::last_os_error()
            ),
        ));
    }
    let socket = Arc::new(socket);
    let reader = SocketReader {
        _socket: socket.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        samples: Arc::new(AtomicU64::new(0)),
        bytes: Arc::new(AtomicU64::new(0)),
    };
    let (stop, samples, bytes) = (
        reader.stop.clone(),
        reader.samples.clone(),
        reader.bytes.clone(),
    );
    std::thread::Builder::new()
        .name(format!("socket-{interface}"))
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: reads into a buffer of the length given.
                let n = unsafe {
                    libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n > 0 {
                    samples.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        })
        .map_err(|e| {
            api(
                ErrorKind::Internal,
                format!("starting the sample reader: {e}"),
            )
        })?;
    Ok(reader)
}

/// Cgroup ids (inode numbers) → paths, for `root` and the cgroups below it.
fn cgroup_paths(root: &Path) -> BTreeMap<u64, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        if let Ok(meta) = std::fs::metadata(&dir) {
            out.insert(meta.ino(), dir.clone());
        }
        if depth >= CGROUP_WALK_DEPTH {
            continue;
        }
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    out
}

fn protocol_name(p: u32) -> String {
    match p {
        0 => "not IP".into(),
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => format!("ip proto {n}"),
    }
}

/// What the program counted for `held` (the built-in counters; nothing for others).
pub fn stats(ebpf: &Ebpf, program_name: &str, held: &HeldHook) -> HookStats {
    let mut counters = Vec::new();
    match (&held.hook.target, program_name) {
        (HookTarget::Cgroup { path }, "cgroup_counter") => {
            let paths = cgroup_paths(Path::new(path));
            if let Some(map) = ebpf.map(ebpf_shared::cgroup::CG_STATS)
                && let Ok(map) = PerCpuHashMap::<_, CgroupKey, [u64; 3]>::try_from(map)
            {
                for (key, per_cpu) in map.iter().flatten() {
                    let Some(cgroup) = paths.get(&key.cgroup_id) else {
                        continue;
                    };
                    let direction = if key.direction == ebpf_shared::cgroup::INGRESS {
                        Direction::Ingress
                    } else {
                        Direction::Egress
                    };
                    let sum = per_cpu
                        .iter()
                        .fold([0u64; 3], |a, v| [a[0] + v[0], a[1] + v[1], a[2] + v[2]]);
                    counters.push(HookCounter {
                        what: format!("cgroup {} {direction}", cgroup.display()),
                        packets: sum[0],
                        bytes: sum[1],
                        denied: sum[2],
                    });
                }
            }
        }
        (HookTarget::Socket { interface }, "socket_counter") => {
            let ifindex = nix::net::if_::if_nametoindex(interface.as_str()).unwrap_or(0);
            if let Some(map) = ebpf.map(ebpf_shared::socket::SF_STATS)
                && let Ok(map) = PerCpuHashMap::<_, [u32; 2], [u64; 2]>::try_from(map)
            {
                for (key, per_cpu) in map.iter().flatten() {
                    if key[0] != ifindex {
                        continue;
                    }
                    let sum = per_cpu
                        .iter()
                        .fold([0u64; 2], |a, v| [a[0] + v[0], a[1] + v[1]]);
                    counters.push(HookCounter {
                        what: format!("{interface} {}", protocol_name(key[1])),
                        packets: sum[0],
                        bytes: sum[1],
                        denied: 0,
                    });
                }
            }
        }
        _ => {}
    }
    counters.sort_by(|a, b| a.what.cmp(&b.what));
    let (samples, sample_bytes) = match &held.holder {
        Holder::Socket(r) => (
            r.samples.load(Ordering::Relaxed),
            r.bytes.load(Ordering::Relaxed),
        ),
        Holder::Links(_) | Holder::Tracepoint(_) => (0, 0),
    };
    HookStats {
        hook: held.hook.clone(),
        counters,
        samples,
        sample_bytes,
    }
}

/// The cgroup id of a cgroup hook's directory (for clearing its deny on detach).
pub fn cgroup_id(target: &HookTarget) -> Option<u64> {
    match target {
        HookTarget::Cgroup { path } => std::fs::metadata(path).ok().map(|m| m.ino()),
        _ => None,
    }
}

/// Pins under `hook_dir` that no held hook of this program has (left by a hook detached while
/// no daemon ran, or a target that is gone).
pub fn remove_unheld_pins(hook_dir: &Path, held: &[&HeldHook]) {
    let wanted: Vec<String> = held
        .iter()
        .flat_map(|h| {
            let id = cgroup_id(&h.hook.target).unwrap_or(0);
            h.hook
                .directions
                .iter()
                .map(move |d| pin_name(&h.hook.target, *d, id))
        })
        .collect();
    for e in std::fs::read_dir(hook_dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !wanted.contains(&name) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
