//! The TC shaper (`shaper set|show|clear`, and `programs.tc_shaper` in the config).
//!
//! How an interface is shaped: an HTB qdisc at its root (handle `7830:`) with one class
//! (`7830:1`), and under the class a TBF (`7831:`) with the bandwidth limit as its rate and a
//! queue of rate × latency target bytes, so that no packet waits longer than the target (a
//! full queue drops instead; the queue holds nine tenths of the target, leaving room for
//! the packet on the wire). The BPF program `tc_shaper`, at the interface's TCX egress hook
//! (which runs before the qdisc), decides what is shaped: it sets `skb->priority` to the
//! class id, which HTB takes as the packet's class. Packets it leaves alone go out unshaped
//! (HTB's direct queue). The class itself only sorts: its rate is four times the limit.
//!
//! Why not a token bucket inside the program: without sch_fq (not in this kernel) a TC
//! program cannot delay a packet, only pass or drop it. A policer that drops whatever exceeds
//! the bucket makes TCP halve its window at every empty bucket and fall short of the rate;
//! a qdisc queues the excess and sends it at the rate. Why TBF under the class and not the
//! class's own rate: TCP hands the qdisc GSO packets of up to 64 KiB, which HTB sends on
//! credit and then pays for with silence (a 64 KiB debt is 26 ms at 20 mbit, on top of the
//! queue), while TBF splits a packet larger than its burst into segments, so its queue limit
//! alone bounds the delay. (HTB because the kernel here has neither prio nor multiq.)
//!
//! State: the qdiscs outlive the daemon; the classifier's link is pinned under
//! `<pin_root>/shaper/links/<interface>` and its maps under `<pin_root>/shaper/`, so a daemon
//! that dies leaves the interface shaped and the next one adopts it. The settings are kept in
//! `<state_dir>/shaper.json`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, PerCpuHashMap};
use aya::programs::SchedClassifier;
use aya::programs::links::FdLink;
use aya::{Ebpf, EbpfLoader};
use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcOption};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::api::{ApiError, Direction, ErrorKind, ShaperRequest, ShaperStatus};
use crate::sys;
use crate::xdpnl::exchange;

/// The registered name of the ShaperActor.
pub const SHAPER: &str = "x0tta6bl4.shaper";

/// HTB qdisc handle major ("x0"); the class is `MAJOR:1`, its TBF `MAJOR+1:`.
const MAJOR: u16 = 0x7830;
const CLASS_MINOR: u16 = 1;
const LEAF_MAJOR: u16 = MAJOR + 1;

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TCA_HTB_PARMS: u16 = 1;
const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// The kernel keeps HTB's buffers in units of 64 ns (`PSCHED_SHIFT`).
const PSCHED_SHIFT: u32 = 6;
/// The smallest queue (and burst): two full-size frames, whatever rate × latency comes to.
const MIN_QUEUE_BYTES: u64 = 2 * 1514;
/// The largest packet a qdisc is handed: a 64 KiB GSO packet (the class's burst).
const MAX_PACKET_BYTES: u64 = 64 * 1024;

/// `"100mbit"` with units `[("mbit", 1e6), …]` → 100e6; `None` without a number or with a
/// unit not in the list. Case does not matter; fractions are taken (`"1.5ms"`).
fn scaled(s: &str, units: &[(&str, f64)]) -> Option<f64> {
    let lower = s.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let n: f64 = number.parse().ok()?;
    let (_, multiplier) = units.iter().find(|(u, _)| *u == unit)?;
    Some(n * multiplier)
}

/// `"100mbit"` → bits per second. Units: bit, kbit, mbit, gbit (also `bps` for bit).
pub fn parse_rate(s: &str) -> Result<u64, String> {
    const UNITS: [(&str, f64); 5] = [
        ("bit", 1.0),
        ("bps", 1.0),
        ("kbit", 1e3),
        ("mbit", 1e6),
        ("gbit", 1e9),
    ];
    let bits = scaled(s, &UNITS)
        .ok_or_else(|| format!("{s:?} is not a rate: write e.g. 500kbit, 100mbit or 1gbit"))?;
    if bits.is_nan() || bits < 8.0 {
        return Err(format!("{s:?} is not a positive rate of at least 8bit"));
    }
    if bits > 1e12 {
        return Err(format!("{s:?} is more than 1000gbit"));
    }
    Ok(bits as u64)
}

/// `"50ms"` → microseconds. Units: us, ms, s.
pub fn parse_latency(s: &str) -> Result<u64, String> {
    const UNITS: [(&str, f64); 3] = [("us", 1.0), ("ms", 1e3), ("s", 1e6)];
    let us =
        scaled(s, &UNITS).ok_or_else(|| format!("{s:?} is not a duration: write e.g. 50ms"))?;
    if us.is_nan() || us < 1.0 {
        return Err(format!("{s:?} is not a positive duration"));
    }
    if us > 60e6 {
        return Err(format!("{s:?} is longer than 60s"));
    }
    Ok(us as u64)
}

/// One interface's setting, as saved.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ShaperSetting {
    pub interface: String,
    pub rate_bits_per_second: u64,
    pub latency_target_us: u64,
}

impl ShaperSetting {
    fn bytes_per_second(&self) -> u64 {
        (self.rate_bits_per_second / 8).max(1)
    }

    /// What the class may send at once above its rate: 1 ms of the rate, at least two
    /// full-size frames.
    pub fn burst_bytes(&self) -> u64 {
        (self.bytes_per_second() / 1000).max(MIN_QUEUE_BYTES)
    }

    /// The TBF's queue limit: what the rate sends in nine tenths of the latency target, so
    /// that a packet that finds the queue full waits less than the target (the last tenth
    /// is for the packet being sent and the packet's own time on the wire; TBF splits GSO
    /// packets larger than its burst, so nothing is sent on credit). At least two full-size
    /// frames.
    pub fn queue_limit_bytes(&self) -> u64 {
        (self.bytes_per_second() * self.latency_target_us / 1_000_000 * 9 / 10).max(MIN_QUEUE_BYTES)
    }
}

fn handle(major: u16, minor: u16) -> TcHandle {
    TcHandle { major, minor }
}

fn tc_message(ifindex: u32, own: TcHandle, parent: TcHandle) -> TcMessage {
    let mut m = TcMessage::with_index(ifindex as i32);
    m.header.handle = own;
    m.header.parent = parent;
    m
}

/// `struct tc_ratespec` for a rate in bytes per second (the 32-bit field saturates; the
/// 64-bit attribute carries the rest).
fn ratespec(bytes_per_second: u64) -> [u8; 12] {
    let mut r = [0u8; 12];
    r[1] = TC_LINKLAYER_ETHERNET;
    r[8..12].copy_from_slice(&(bytes_per_second.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
    r
}

/// The qdisc under `parent` on `ifindex`, as the kernel describes it; `None` when there is
/// none.
fn get_qdisc(ifindex: u32, parent: TcHandle) -> std::io::Result<Option<TcMessage>> {
    let get = tc_message(ifindex, TcHandle::UNSPEC, parent);
    for m in exchange(
        RouteNetlinkMessage::GetQueueDiscipline(get),
        // ECHO: this kernel answers a GET only to listeners, or with ECHO set. ACK: it sends
        // nothing else for a built-in qdisc (noqueue).
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO,
    )? {
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(q)) = m.payload
        {
            return Ok(Some(q));
        }
    }
    Ok(None)
}

fn is_kind(q: &TcMessage, kind: &str) -> bool {
    q.attributes
        .iter()
        .any(|a| matches!(a, TcAttribute::Kind(k) if k == kind))
}

/// Whether the root qdisc of `ifindex` is our HTB (another one is left alone).
fn ours_at_root(ifindex: u32) -> std::io::Result<bool> {
    Ok(get_qdisc(ifindex, TcHandle::ROOT)?
        .is_some_and(|q| q.header.handle == handle(MAJOR, 0) && is_kind(&q, "htb")))
}

/// Counters of the class's queue: (packets, bytes, drops, backlog bytes).
fn leaf_stats(ifindex: u32) -> std::io::Result<(u64, u64, u64, u64)> {
    let stats = get_qdisc(ifindex, handle(MAJOR, CLASS_MINOR))?.and_then(|q| {
        q.attributes.into_iter().find_map(|a| match a {
            TcAttribute::Stats(s) => Some((
                u64::from(s.packets),
                s.bytes,
                u64::from(s.drops),
                u64::from(s.backlog),
            )),
            _ => None,
        })
    });
    Ok(stats.unwrap_or((0, 0, 0, 0)))
}

/// Whether our root HTB and its TBF are both on `ifindex`.
fn qdiscs_present(ifindex: u32) -> std::io::Result<bool> {
    if !ours_at_root(ifindex)? {
        return Ok(false);
    }
    Ok(get_qdisc(ifindex, handle(MAJOR, CLASS_MINOR))?
        .is_some_and(|q| q.header.handle == handle(LEAF_MAJOR, 0) && is_kind(&q, "tbf")))
}

/// Makes the qdiscs and class of `setting` on `ifindex`, or changes them in place when they
/// are there already (so a change of rate loses no queued packet).
fn install_qdiscs(ifindex: u32, setting: &ShaperSetting) -> std::io::Result<()> {
    if !ours_at_root(ifindex)? {
        // struct tc_htb_glob: version 3, rate2quantum 10, default class 0 (unclassified
        // packets go out directly, unshaped), debug 0, direct_pkts 0.
        let mut glob = Vec::with_capacity(20);
        for v in [3u32, 10, 0, 0, 0] {
            glob.extend_from_slice(&v.to_ne_bytes());
        }
        let mut q = tc_message(ifindex, handle(MAJOR, 0), TcHandle::ROOT);
        q.attributes.push(TcAttribute::Kind("htb".into()));
        q.attributes.push(TcAttribute::Options(vec![TcOption::Other(
            DefaultNla::new(TCA_HTB_INIT, glob),
        )]));
        exchange(
            RouteNetlinkMessage::NewQueueDiscipline(q),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
    }
    // The class only sorts (its rate is four times the limit, so it never holds packets
    // back); the TBF under it keeps the rate.
    let class_rate = setting.bytes_per_second().saturating_mul(4);
    let burst_ticks = |bytes: u64, rate: u64| -> u32 {
        let ticks = (u128::from(bytes) * 1_000_000_000 / u128::from(rate)) >> PSCHED_SHIFT;
        ticks.min(u128::from(u32::MAX)) as u32
    };
    let class_buffer = burst_ticks(MAX_PACKET_BYTES, class_rate);
    // struct tc_htb_opt: rate, ceil, buffer, cbuffer, quantum, level, prio.
    let mut opt = Vec::with_capacity(44);
    opt.extend_from_slice(&ratespec(class_rate));
    opt.extend_from_slice(&ratespec(class_rate));
    for v in [class_buffer, class_buffer, 200_000, 0, 0] {
        opt.extend_from_slice(&v.to_ne_bytes());
    }
    let mut options = vec![TcOption::Other(DefaultNla::new(TCA_HTB_PARMS, opt))];
    if class_rate > u64::from(u32::MAX) {
        for kind in [TCA_HTB_RATE64, TCA_HTB_CEIL64] {
            options.push(TcOption::Other(DefaultNla::new(
                kind,
                class_rate.to_ne_bytes().to_vec(),
            )));
        }
    }
    let mut class = tc_message(ifindex, handle(MAJOR, CLASS_MINOR), handle(MAJOR, 0));
    class.attributes.push(TcAttribute::Kind("htb".into()));
    class.attributes.push(TcAttribute::Options(options));
    exchange(
        RouteNetlinkMessage::NewTrafficClass(class),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    )?;
    // struct tc_tbf_qopt: rate, peakrate (none), limit, buffer, mtu.
    let rate = setting.bytes_per_second();
    let limit = setting.queue_limit_bytes().min(u64::from(u32::MAX)) as u32;
    let burst = setting.burst_bytes().min(u64::from(u32::MAX)) as u32;
    let mut qopt = Vec::with_capacity(36);
    qopt.extend_from_slice(&ratespec(rate));
    qopt.extend_from_slice(&[0u8; 12]);
    for v in [limit, burst_ticks(u64::from(burst), rate), 0] {
        qopt.extend_from_slice(&v.to_ne_bytes());
    }
    let mut tbf = vec![
        TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, qopt)),
        TcOption::Other(DefaultNla::new(TCA_TBF_BURST, burst.to_ne_bytes().to_vec())),
    ];
    if rate > u64::from(u32::MAX) {
        tbf.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            rate.to_ne_bytes().to_vec(),
        )));
    }
    let mut leaf = tc_message(ifindex, handle(LEAF_MAJOR, 0), handle(MAJOR, CLASS_MINOR));
    leaf.attributes.push(TcAttribute::Kind("tbf".into()));
    leaf.attributes.push(TcAttribute::Options(tbf));
    exchange(
        RouteNetlinkMessage::NewQueueDiscipline(leaf),
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    )?;
    Ok(())
}

/// Removes our root qdisc from `ifindex` (the kernel puts the default one back). Another
/// root qdisc is left alone.
fn remove_qdiscs(ifindex: u32) -> std::io::Result<()> {
    if ours_at_root(ifindex)? {
        let q = tc_message(ifindex, handle(MAJOR, 0), TcHandle::ROOT);
        exchange(
            RouteNetlinkMessage::DelQueueDiscipline(q),
            NLM_F_REQUEST | NLM_F_ACK,
        )?;
    }
    Ok(())
}

pub enum ShaperMsg {
    Request {
        request: ShaperRequest,
        reply: RpcReplyPort<Result<Vec<ShaperStatus>, ApiError>>,
    },
    /// Puts back whatever of a setting is missing (a qdisc someone deleted, a link gone with
    /// its interface, an interface that came back).
    Tick,
    Crash,
    /// The daemon stops. Unless `keep`, everything of the shaper leaves the kernel (qdiscs,
    /// links, pins); the settings stay saved, for the next start.
    Shutdown {
        keep: bool,
        reply: RpcReplyPort<()>,
    },
}

pub struct ShaperArgs {
    pub pin_root: PathBuf,
    pub state_dir: PathBuf,
    /// From `programs.tc_shaper` in the config: used when no settings were saved yet.
    pub configured: Vec<ShaperSetting>,
    /// How often the settings are checked against the kernel.
    pub check_interval: Duration,
}

pub struct ShaperState {
    /// `tc_shaper`, loaded when an interface is first shaped (a daemon that shapes nothing
    /// loads nothing).
    ebpf: Option<Ebpf>,
    pin_dir: PathBuf,
    state_file: PathBuf,
    settings: BTreeMap<String, ShaperSetting>,
    /// Links held, per interface, with the ifindex they were made for.
    links: BTreeMap<String, (u32, FdLink)>,
    /// Why a setting is not in force, per interface.
    failures: BTreeMap<String, String>,
    /// Set at shutdown: the settings are no longer put back.
    stopped: bool,
}

pub struct ShaperActor;

/// Loads `tc_shaper` with its maps pinned under `pin_dir` (the maps of an earlier daemon are
/// taken over).
fn load_tc_shaper(pin_dir: &std::path::Path) -> Result<Ebpf, ApiError> {
    let failed = |m: String| {
        ApiError::new(
            ErrorKind::Internal,
            format!("{m}; the shaper cannot work without it"),
        )
    };
    std::fs::create_dir_all(pin_dir)
        .map_err(|e| failed(format!("creating {}: {e}", pin_dir.display())))?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(crate::builtin::TC_SHAPER)
        .map_err(|e| failed(format!("loading tc_shaper: {}", sys::chain(&e))))?;
    let program: &mut SchedClassifier = ebpf
        .program_mut("tc_shaper")
        .ok_or_else(|| failed("tc_shaper has no program".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| failed(sys::chain(&e)))?;
    program.load().map_err(|e| {
        failed(format!(
            "loading tc_shaper into the kernel: {}",
            sys::chain(&e)
        ))
    })?;
    Ok(ebpf)
}

impl ShaperState {
    /// The loaded `tc_shaper`, loading it now if need be.
    fn ebpf(&mut self) -> Result<&mut Ebpf, ApiError> {
        if self.ebpf.is_none() {
            self.ebpf = Some(load_tc_shaper(&self.pin_dir)?);
        }
        Ok(self.ebpf.as_mut().expect("loaded just above"))
    }

    fn program(&mut self) -> Result<&mut SchedClassifier, ApiError> {
        self.ebpf()?
            .program_mut("tc_shaper")
            .ok_or_else(|| ApiError::new(ErrorKind::Internal, "tc_shaper has no program"))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| {
                ApiError::new(ErrorKind::Internal, sys::chain(&e))
            })
    }

    fn link_pin(&self, interface: &str) -> PathBuf {
        self.pin_dir.join("links").join(interface)
    }

    fn save(&self) {
        let list: Vec<&ShaperSetting> = self.settings.values().collect();
        match serde_json::to_vec_pretty(&list) {
            Ok(bytes) => {
                if let Err(e) = sys::write_atomically(&self.state_file, &bytes) {
                    warn!(file = %self.state_file.display(), error = %e, "saving the shaper settings failed");
                }
            }
            Err(e) => warn!(error = %e, "encoding the shaper settings failed"),
        }
    }

    /// Puts `setting` in force: qdiscs, class entry, classifier link. Idempotent.
    fn apply(&mut self, setting: &ShaperSetting) -> Result<(), ApiError> {
        let interface = setting.interface.as_str();
        let ifindex = sys::interface_index(interface)?;
        install_qdiscs(ifindex, setting).map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("making the HTB qdisc and class on {interface} failed: {e}; `tc qdisc show dev {interface}` shows what is there (the shaper replaces the root qdisc), `dmesg` may say why"),
            )
        })?;
        let classid = (u32::from(MAJOR) << 16) | u32::from(CLASS_MINOR);
        let mut classes: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(
            self.ebpf()?
                .map_mut(ebpf_shared::shaper::SHAPER_CLASS)
                .ok_or_else(|| ApiError::new(ErrorKind::Internal, "tc_shaper has no class map"))?,
        )
        .map_err(|e| ApiError::new(ErrorKind::Internal, sys::chain(&e)))?;
        classes
            .insert(ifindex, classid, 0)
            .map_err(|e| ApiError::new(ErrorKind::Internal, sys::chain(&e)))?;
        if self
            .links
            .get(interface)
            .is_some_and(|(i, _)| *i == ifindex)
        {
            return Ok(());
        }
        self.links.remove(interface);
        let pin = self.link_pin(interface);
        let (link, adopted) =
            crate::hooks::tcx_link(self.program()?, interface, Direction::Egress, &pin).map_err(
                |e| {
                    ApiError::new(
                        ErrorKind::Internal,
                        format!("attaching tc_shaper to the egress of {interface} failed: {e}"),
                    )
                },
            )?;
        if adopted {
            info!(interface, "shaper: adopted the pinned classifier link");
        }
        self.links.insert(interface.to_string(), (ifindex, link));
        Ok(())
    }

    /// Takes `interface`'s setting out of force and forgets it.
    fn clear(&mut self, interface: &str) -> Result<(), ApiError> {
        if self.settings.remove(interface).is_none() {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "{interface} is not shaped (shaped: {}); see `x0tta6bl4-ebpf shaper show`",
                    self.names()
                ),
            ));
        }
        self.failures.remove(interface);
        self.save();
        let pin = self.link_pin(interface);
        if let Some((_, link)) = self.links.remove(interface) {
            drop(link);
        }
        let _ = std::fs::remove_file(&pin);
        if let Ok(ifindex) = nix::net::if_::if_nametoindex(interface) {
            if let Some(map) = self
                .ebpf
                .as_mut()
                .and_then(|e| e.map_mut(ebpf_shared::shaper::SHAPER_CLASS))
                && let Ok(mut classes) = BpfHashMap::<_, u32, u32>::try_from(map)
            {
                let _ = classes.remove(&ifindex);
            }
            remove_qdiscs(ifindex).map_err(|e| {
                ApiError::new(
                    ErrorKind::Internal,
                    format!("removing the HTB qdisc from {interface} failed: {e}"),
                )
            })?;
        }
        info!(interface, "shaper cleared");
        Ok(())
    }

    /// Takes every setting out of the kernel (the saved settings stay): classifier links,
    /// qdiscs, pins.
    fn remove_all(&mut self) {
        self.links.clear();
        for s in self.settings.values() {
            if let Ok(ifindex) = nix::net::if_::if_nametoindex(s.interface.as_str())
                && let Err(e) = remove_qdiscs(ifindex)
            {
                warn!(interface = %s.interface, error = %e, "removing the shaper's qdiscs at shutdown");
            }
        }
        sys::remove_pins(&self.pin_dir);
        info!("shaper: removed from the kernel (its settings stay saved)");
    }

    fn names(&self) -> String {
        if self.settings.is_empty() {
            "none".to_string()
        } else {
            self.settings.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }

    fn show(&self) -> Vec<ShaperStatus> {
        let stats: Option<PerCpuHashMap<_, u32, [u64; 2]>> = self
            .ebpf
            .as_ref()
            .and_then(|e| e.map(ebpf_shared::shaper::SHAPER_STATS))
            .and_then(|m| PerCpuHashMap::try_from(m).ok());
        self.settings
            .values()
            .map(|s| {
                let index = nix::net::if_::if_nametoindex(s.interface.as_str()).ok();
                let (classified_packets, classified_bytes) = index
                    .and_then(|i| stats.as_ref()?.get(&i, 0).ok())
                    .map(|per_cpu| {
                        per_cpu
                            .iter()
                            .fold((0, 0), |(p, b), v| (p + v[0], b + v[1]))
                    })
                    .unwrap_or((0, 0));
                let (sent_packets, sent_bytes, dropped_packets, backlog_bytes) = index
                    .and_then(|i| leaf_stats(i).ok())
                    .unwrap_or((0, 0, 0, 0));
                ShaperStatus {
                    interface: s.interface.clone(),
                    rate_bits_per_second: s.rate_bits_per_second,
                    latency_target_us: s.latency_target_us,
                    burst_bytes: s.burst_bytes(),
                    queue_limit_bytes: s.queue_limit_bytes(),
                    classified_packets,
                    classified_bytes,
                    sent_packets,
                    sent_bytes,
                    dropped_packets,
                    backlog_bytes,
                    state: self
                        .failures
                        .get(&s.interface)
                        .cloned()
                        .unwrap_or_else(|| "active".to_string()),
                }
            })
            .collect()
    }

    /// Re-applies every setting; a failure is remembered and shown, and tried again later.
    fn check(&mut self) {
        let settings: Vec<ShaperSetting> = self.settings.values().cloned().collect();
        for s in settings {
            // A link whose interface went away (deleted, or renamed and replaced) is dropped,
            // so `apply` attaches anew.
            let current = nix::net::if_::if_nametoindex(s.interface.as_str()).ok();
            if self
                .links
                .get(&s.interface)
                .is_some_and(|(i, _)| Some(*i) != current)
            {
                self.links.remove(&s.interface);
                let _ = std::fs::remove_file(self.link_pin(&s.interface));
            }
            // Nothing to do when all is in place: changing a TBF, even to the same setting,
            // refills its bucket.
            let intact = current.is_some_and(|i| {
                self.links.get(&s.interface).is_some_and(|(l, _)| *l == i)
                    && qdiscs_present(i).unwrap_or(false)
            });
            if intact && !self.failures.contains_key(&s.interface) {
                continue;
            }
            // Qdiscs deleted by hand are made again.
            match self.apply(&s) {
                Ok(()) => {
                    if self.failures.remove(&s.interface).is_some() {
                        info!(interface = %s.interface, "shaper back in force");
                    }
                }
                Err(e) => {
                    let message = e.message.clone();
                    if self.failures.get(&s.interface) != Some(&message) {
                        warn!(interface = %s.interface, error = %message, "shaper not in force; retrying");
                    }
                    self.failures.insert(s.interface.clone(), message);
                }
            }
        }
    }

    fn handle(&mut self, request: ShaperRequest) -> Result<Vec<ShaperStatus>, ApiError> {
        match request {
            ShaperRequest::Show => {}
            ShaperRequest::Set {
                interface,
                rate,
                latency,
            } => {
                let rate = parse_rate(&rate).map_err(|m| {
                    ApiError::new(ErrorKind::InvalidRequest, format!("--rate: {m}"))
                })?;
                let latency = parse_latency(&latency).map_err(|m| {
                    ApiError::new(ErrorKind::InvalidRequest, format!("--latency: {m}"))
                })?;
                let setting = ShaperSetting {
                    interface: interface.clone(),
                    rate_bits_per_second: rate,
                    latency_target_us: latency,
                };
                self.apply(&setting)?;
                info!(interface, rate, latency_us = latency, "shaper set");
                self.failures.remove(&interface);
                self.settings.insert(interface, setting);
                self.save();
            }
            ShaperRequest::Clear { interface } => self.clear(&interface)?,
        }
        Ok(self.show())
    }
}

impl Actor for ShaperActor {
    type Msg = ShaperMsg;
    type State = ShaperState;
    type Arguments = ShaperArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ShaperArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let pin_dir = args.pin_root.join(PIN_DIR);
        let state_file = args.state_dir.join("shaper.json");
        let settings: Vec<ShaperSetting> = match std::fs::read(&state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(file = %state_file.display(), error = %e, "the saved shaper settings are unreadable; using the config's");
                args.configured.clone()
            }),
            Err(_) => args.configured.clone(),
        };
        let mut state = ShaperState {
            ebpf: None,
            pin_dir,
            state_file,
            settings: settings
                .into_iter()
                .map(|s| (s.interface.clone(), s))
                .collect(),
            links: BTreeMap::new(),
            failures: BTreeMap::new(),
            stopped: false,
        };
        // Link pins of interfaces no longer shaped (cleared while the daemon was down).
        for e in std::fs::read_dir(state.pin_dir.join("links"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !state.settings.contains_key(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        state.check();
        myself.send_interval(args.check_interval, || ShaperMsg::Tick);
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ShaperMsg::Request { request, reply } => {
                let _ = reply.send(state.handle(request));
            }
            ShaperMsg::Tick => {
                if !state.stopped {
                    state.check();
                }
            }
            ShaperMsg::Shutdown { keep, reply } => {
                state.stopped = true;
                if !keep {
                    state.remove_all();
                }
                let _ = reply.send(());
            }
            ShaperMsg::Crash => panic!("fault injected into ShaperActor"),
        }
        Ok(())
    }
}

/// The shaper's directory under `pin_root` (not a program id, which always ends in `-N`).
pub const PIN_DIR: &str = "shaper";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_rate("100mbit"), Ok(100_000_000));
        assert_eq!(parse_rate("500kbit"), Ok(500_000));
        assert_eq!(parse_rate("1gbit"), Ok(1_000_000_000));
        assert!(parse_rate("fast").unwrap_err().contains("500kbit"));
        assert!(parse_rate("0mbit").is_err());
        assert_eq!(parse_latency("50ms"), Ok(50_000));
        assert!(parse_latency("50").is_err());
    }

    #[test]
    fn sizes() {
        let s = ShaperSetting {
            interface: "x".into(),
            rate_bits_per_second: 100_000_000,
            latency_target_us: 50_000,
        };
        // 12.5 MB/s × 45 ms.
        assert_eq!(s.burst_bytes(), 12_500);
        assert_eq!(s.queue_limit_bytes(), 562_500);
        let slow = ShaperSetting {
            rate_bits_per_second: 500_000,
            latency_target_us: 10_000,
            ..s
        };
        assert_eq!(slow.queue_limit_bytes(), MIN_QUEUE_BYTES);
    }
}
