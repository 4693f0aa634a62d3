//! The firewall's flow tables as user space reads them: a whole table in a few system calls
//! (BPF_MAP_LOOKUP_BATCH, 4,096 flows per call), merged with the CPUs' flow caches in front
//! of it (`FlowCacheEntry`), each flow's per-CPU shares combined; idle flows removed. The
//! FlowActor reads through here; the kernel side is `xdp_firewall`.

use std::collections::HashMap;
use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use ebpf_shared::{
    FlowCacheEntry, FlowKey, FlowKeyV4, FlowTableStats, FlowValue, Outcome, maps, proto,
};

use crate::api::{FlowRecord, FlowVerdict, tcp_flag_names};
use crate::loader::map_data;

/// Flows per BPF_MAP_LOOKUP_BATCH call.
const BATCH: u32 = 4096;

/// Slot of `FW_FLOW_STATS` the kernel never writes: user space counts there, in CPU 0's
/// share, the flows it removed from the table (`inserts`), so that "lost to the LRU" stays
/// inserts − present − removed across daemon restarts, and the flows it aged out, from the
/// table or a cache (`packets`).
const REMOVED_SLOT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum FlowTableError {
    #[error("the object has no map {0}: is it really xdp_firewall?")]
    MissingMap(&'static str),
    #[error("opening the pinned flow map {path}: {source}")]
    Pin {
        path: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {map}: {source}")]
    Syscall {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The maps of one firewall's flow accounting.
pub struct FlowMaps {
    v4: Map,
    v6: Map,
    cache4: Map,
    cache6: Map,
    stats: Map,
}

/// What `FlowMaps::remove` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Flows removed (from the table, a cache, or both).
    pub flows: u64,
    /// Of those, the ones that had an entry in the table.
    pub from_table: u64,
}

impl FlowMaps {
    /// Opens the maps a loaded `xdp_firewall` pinned under `pins` (`<pin_root>/<id>/`): a
    /// second handle, so reading them never waits for the LoaderActor.
    pub fn open(pins: &Path) -> Result<FlowMaps, FlowTableError> {
        let open = |name: &'static str| {
            let path = pins.join(name);
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| FlowTableError::Pin {
                    path: path.display().to_string(),
                    source,
                })
        };
        Ok(FlowMaps {
            v4: open(maps::FW_FLOWS4)?,
            v6: open(maps::FW_FLOWS)?,
            cache4: open(maps::FW_FLOW_CACHE4)?,
            cache6: open(maps::FW_FLOW_CACHE)?,
            stats: open(maps::FW_FLOW_STATS)?,
        })
    }

    pub fn scan(&self) -> Result<FlowScan, FlowTableError> {
        scan(&self.v4, &self.v6, &self.cache4, &self.cache6, &self.stats)
    }

    /// Removes these flows from the kernel table and the CPUs' caches, and counts them as
    /// removed (not lost).
    ///
    /// A cache slot is cleared by writing all CPUs' shares of it back: a packet another CPU
    /// counts in the same slot in the microseconds between the read and the write is lost
    /// (as one counted into a table entry being deleted is).
    pub fn remove(&mut self, keys: &[FlowKey]) -> Result<Removed, FlowTableError> {
        let v4: Vec<FlowKeyV4> = keys.iter().filter(|k| k.family == 4).map(to_v4).collect();
        let v6: Vec<FlowKey> = keys.iter().filter(|k| k.family != 4).copied().collect();
        // Caches first: a flow in none of them must be in the table (the scan saw it), so
        // "removed flows" is the cached ones plus the others the table gave up.
        let cached4 = clear_cached(&mut self.cache4, maps::FW_FLOW_CACHE4, &v4, |k| {
            k.cache_slot()
        })?;
        let cached6 = clear_cached(&mut self.cache6, maps::FW_FLOW_CACHE, &v6, |k| {
            k.cache_slot()
        })?;
        let mut flows = (cached4.iter().filter(|c| **c).count()
            + cached6.iter().filter(|c| **c).count()) as u64;
        let mut from_table = 0;
        for cached in [true, false] {
            for (map, name, bytes, size) in [
                (
                    &self.v4,
                    maps::FW_FLOWS4,
                    pick_keys(&v4, &cached4, cached),
                    size_of::<FlowKeyV4>(),
                ),
                (
                    &self.v6,
                    maps::FW_FLOWS,
                    pick_keys(&v6, &cached6, cached),
                    size_of::<FlowKey>(),
                ),
            ] {
                if bytes.is_empty() {
                    continue;
                }
                let deleted = crate::sys::delete_batch(map_data(map).fd().as_fd(), &bytes, size)
                    .map_err(|source| FlowTableError::Syscall { map: name, source })?;
                from_table += deleted;
                if !cached {
                    flows += deleted;
                }
            }
        }
        if flows > 0 {
            let mut stats: PerCpuArray<&mut MapData, FlowTableStats> =
                PerCpuArray::try_from(&mut self.stats).map_err(stats_err)?;
            let mut slot: Vec<FlowTableStats> = stats
                .get(&REMOVED_SLOT, 0)
                .map_err(stats_err)?
                .iter()
                .copied()
                .collect();
            slot[0].inserts += from_table;
            slot[0].packets += flows;
            let values =
                PerCpuValues::try_from(slot).map_err(|source| FlowTableError::Syscall {
                    map: maps::FW_FLOW_STATS,
                    source,
                })?;
            stats.set(REMOVED_SLOT, values, 0).map_err(stats_err)?;
        }
        Ok(Removed { flows, from_table })
    }
}

/// The keys (packed for a batch call) whose mark is `cached`.
fn pick_keys<K>(keys: &[K], marks: &[bool], cached: bool) -> Vec<u8> {
    keys.iter()
        .zip(marks)
        .filter(|(_, c)| **c == cached)
        .flat_map(|(k, _)| pod_bytes(k).iter().copied())
        .collect()
}

/// One CPU cache map as read: `slots[slot][cpu]`.
fn read_cache<K: Copy>(
    map: &Map,
    name: &'static str,
    cpus: usize,
) -> Result<Vec<Vec<FlowCacheEntry<K>>>, FlowTableError> {
    let stride = size_of::<FlowCacheEntry<K>>().next_multiple_of(8);
    let value_size = stride * cpus;
    let mut slots = Vec::with_capacity(ebpf_shared::FLOW_CACHE_SLOTS as usize);
    crate::sys::lookup_batch(
        map_data(map).fd().as_fd(),
        size_of::<u32>(),
        value_size,
        BATCH,
        |_, values, n| {
            for i in 0..n {
                slots.push(
                    (0..cpus)
                        // SAFETY: the kernel wrote `n` whole values; FlowCacheEntry is plain
                        // `repr(C)` data, read unaligned from the byte buffer.
                        .map(|cpu| unsafe {
                            values
                                .as_ptr()
                                .add(i * value_size + cpu * stride)
                                .cast::<FlowCacheEntry<K>>()
                                .read_unaligned()
                        })
                        .collect(),
                );
            }
        },
    )
    .map_err(|source| FlowTableError::Syscall { map: name, source })?;
    Ok(slots)
}

/// Empties the cache slots that hold these keys, on every CPU; says which keys were cached.
fn clear_cached<K: Copy + PartialEq>(
    cache: &mut Map,
    name: &'static str,
    keys: &[K],
    slot_of: impl Fn(&K) -> u32,
) -> Result<Vec<bool>, FlowTableError>
where
    FlowCacheEntry<K>: aya::Pod,
{
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, source)| FlowTableError::Syscall { map: name, source })?;
    let mut slots = read_cache::<K>(cache, name, cpus)?;
    let mut changed = std::collections::BTreeSet::new();
    let marks = keys
        .iter()
        .map(|k| {
            let slot = slot_of(k);
            let mut cached = false;
            for e in slots.get_mut(slot as usize).into_iter().flatten() {
                if e.value.packets > 0 && e.key == *k {
                    e.value = FlowValue::default();
                    e.in_table = 0;
                    cached = true;
                }
            }
            if cached {
                changed.insert(slot);
            }
            cached
        })
        .collect();
    let err = |source| FlowTableError::Map { map: name, source };
    let mut array: PerCpuArray<&mut MapData, FlowCacheEntry<K>> =
        PerCpuArray::try_from(cache).map_err(err)?;
    for slot in changed {
        let values = PerCpuValues::try_from(slots[slot as usize].clone())
            .map_err(|source| FlowTableError::Syscall { map: name, source })?;
        array.set(slot, values, 0).map_err(err)?;
    }
    Ok(marks)
}

use std::os::fd::AsFd as _;

fn stats_err(source: aya::maps::MapError) -> FlowTableError {
    FlowTableError::Map {
        map: maps::FW_FLOW_STATS,
        source,
    }
}

/// One read of a flow table.
#[derive(Debug, Clone, Default)]
pub struct FlowScan {
    /// Every flow with at least one packet, in the table or a CPU's cache, CPUs' shares
    /// combined.
    pub flows: Vec<(FlowKey, FlowValue)>,
    /// Of those, the flows with an entry in the table.
    pub table_entries: u64,
    pub capacity: u32,
    pub inserts: u64,
    pub insert_failures: u64,
    /// Table entries user space removed (aged out), over the table's life.
    pub removed: u64,
    /// Flows user space aged out (from the table, a cache or both), over the table's life.
    pub aged_out: u64,
}

impl FlowScan {
    /// Flows the LRU pushed out to make room: inserted, neither present nor removed.
    pub fn evicted(&self) -> u64 {
        self.inserts
            .saturating_sub(self.table_entries)
            .saturating_sub(self.removed)
    }
}

/// Reads a firewall's flow tables through the maps of its loaded object.
pub fn scan_loaded(ebpf: &aya::Ebpf) -> Result<FlowScan, FlowTableError> {
    let get = |name: &'static str| ebpf.map(name).ok_or(FlowTableError::MissingMap(name));
    scan(
        get(maps::FW_FLOWS4)?,
        get(maps::FW_FLOWS)?,
        get(maps::FW_FLOW_CACHE4)?,
        get(maps::FW_FLOW_CACHE)?,
        get(maps::FW_FLOW_STATS)?,
    )
}

/// Reads the caches, then the tables: a flow written back from a cache in between is then
/// read in the table with at least what the cache showed, so a read never goes backwards.
fn scan(
    v4: &Map,
    v6: &Map,
    cache4: &Map,
    cache6: &Map,
    stats: &Map,
) -> Result<FlowScan, FlowTableError> {
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| FlowTableError::Syscall {
        map: maps::FW_FLOWS4,
        source,
    })?;
    let capacity = map_data(v4)
        .info()
        .map(|i| i.max_entries())
        .map_err(|source| FlowTableError::Map {
            map: maps::FW_FLOWS4,
            source,
        })?;
    let mut cached4 = cached_shares::<FlowKeyV4>(cache4, maps::FW_FLOW_CACHE4, cpus)?;
    let mut cached6 = cached_shares::<FlowKey>(cache6, maps::FW_FLOW_CACHE, cpus)?;
    let mut flows = Vec::new();
    let mut table_entries =
        read_all::<FlowKeyV4>(v4, maps::FW_FLOWS4, cpus, &mut cached4, |k, total| {
            flows.push((from_v4(&k), total))
        })?;
    table_entries += read_all::<FlowKey>(v6, maps::FW_FLOWS, cpus, &mut cached6, |k, total| {
        flows.push((k, total))
    })?;
    // Flows only in a cache: not written back yet.
    for (k, shares) in cached4 {
        if let Some(total) = combine(shares.into_iter()) {
            flows.push((from_v4(&k), total));
        }
    }
    for (k, shares) in cached6 {
        if let Some(total) = combine(shares.into_iter()) {
            flows.push((k, total));
        }
    }

    let stats: PerCpuArray<&MapData, FlowTableStats> =
        PerCpuArray::try_from(stats).map_err(stats_err)?;
    let (inserts, insert_failures) = stats
        .get(&0, 0)
        .map_err(stats_err)?
        .iter()
        .fold((0, 0), |(i, f), s| (i + s.inserts, f + s.insert_failures));
    let (removed, aged_out) = stats
        .get(&REMOVED_SLOT, 0)
        .map(|slot| (slot[0].inserts, slot[0].packets))
        .unwrap_or((0, 0));
    Ok(FlowScan {
        flows,
        table_entries,
        capacity,
        inserts,
        insert_failures,
        removed,
        aged_out,
    })
}

/// Each flow in a CPU cache, with its share per CPU (zero where another flow holds the slot).
fn cached_shares<K: Copy + Eq + std::hash::Hash>(
    map: &Map,
    name: &'static str,
    cpus: usize,
) -> Result<HashMap<K, Vec<FlowValue>>, FlowTableError> {
    let mut flows = HashMap::new();
    for slot in read_cache::<K>(map, name, cpus)? {
        for (cpu, e) in slot.iter().enumerate() {
            if e.value.packets > 0 {
                flows
                    .entry(e.key)
                    .or_insert_with(|| vec![FlowValue::default(); cpus])[cpu] = e.value;
            }
        }
    }
    Ok(flows)
}

/// Every element of a per-CPU flow hash map, in batches, CPUs combined, each CPU's share
/// replaced by its cached one (taken out of `cached`) where that is newer. Returns how many
/// elements the table holds.
fn read_all<K: Copy + Eq + std::hash::Hash>(
    map: &Map,
    name: &'static str,
    cpus: usize,
    cached: &mut HashMap<K, Vec<FlowValue>>,
    mut each: impl FnMut(K, FlowValue),
) -> Result<u64, FlowTableError> {
    let mut entries = 0;
    let key_size = size_of::<K>();
    // The kernel lays per-CPU values out 8-byte aligned, one per possible CPU.
    let stride = size_of::<FlowValue>().next_multiple_of(8);
    let value_size = stride * cpus;
    crate::sys::lookup_batch(
        map_data(map).fd().as_fd(),
        key_size,
        value_size,
        BATCH,
        |keys, values, n| {
            for i in 0..n {
                // SAFETY: the kernel wrote `n` whole keys and values of these sizes; K and
                // FlowValue are plain `repr(C)` data, read unaligned from the byte buffers.
                let key = unsafe { keys.as_ptr().add(i * key_size).cast::<K>().read_unaligned() };
                let in_table = (0..cpus).map(|cpu| unsafe {
                    values
                        .as_ptr()
                        .add(i * value_size + cpu * stride)
                        .cast::<FlowValue>()
                        .read_unaligned()
                });
                entries += 1;
                let total = match cached.remove(&key) {
                    // A CPU's cached share is the newer copy of its share in the table.
                    Some(newer) => {
                        combine(in_table.zip(newer).map(
                            |(t, c)| {
                                if c.packets >= t.packets { c } else { t }
                            },
                        ))
                    }
                    None => combine(in_table),
                };
                if let Some(total) = total {
                    each(key, total);
                }
            }
        },
    )
    .map_err(|source| FlowTableError::Syscall { map: name, source })?;
    Ok(entries)
}

fn pod_bytes<T>(v: &T) -> &[u8] {
    // SAFETY: used for FlowKey/FlowKeyV4 only: repr(C) without padding holes the kernel
    // would read as garbage (their `_pad` fields are zeroed).
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

fn from_v4(k: &FlowKeyV4) -> FlowKey {
    FlowKey {
        src: [k.src, 0, 0, 0],
        dst: [k.dst, 0, 0, 0],
        source_port: k.source_port,
        dest_port: k.dest_port,
        ifindex: k.ifindex,
        protocol: k.protocol,
        family: 4,
        direction: k.direction,
        _pad: 0,
    }
}

fn to_v4(k: &FlowKey) -> FlowKeyV4 {
    FlowKeyV4 {
        src: k.src[0],
        dst: k.dst[0],
        source_port: k.source_port,
        dest_port: k.dest_port,
        ifindex: k.ifindex,
        protocol: k.protocol,
        direction: k.direction,
        _pad: 0,
    }
}

/// One flow from its CPUs' shares; `None` when no CPU has a packet of it.
fn combine(per_cpu: impl Iterator<Item = FlowValue>) -> Option<FlowValue> {
    let mut total = FlowValue {
        first_seen_ns: u64::MAX,
        ..FlowValue::default()
    };
    for v in per_cpu.filter(|v| v.packets > 0) {
        total.packets += v.packets;
        total.bytes += v.bytes;
        total.first_seen_ns = total.first_seen_ns.min(v.first_seen_ns);
        if v.last_seen_ns >= total.last_seen_ns {
            total.last_seen_ns = v.last_seen_ns;
            total.outcome = v.outcome;
        }
        total.tcp_flags |= v.tcp_flags;
    }
    (total.packets > 0).then_some(total)
}

/// Turns the kernel's CLOCK_MONOTONIC nanoseconds into wall-clock times.
pub struct MonotonicToWall {
    wall: std::time::SystemTime,
    mono_ns: u64,
}

impl MonotonicToWall {
    pub fn now() -> Self {
        // The kernel stamps flows with the coarse monotonic clock; the precise one can run
        // ahead of it by one tick, which only ever makes a flow look a tick older.
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(0);
        MonotonicToWall {
            wall: std::time::SystemTime::now(),
            mono_ns: mono,
        }
    }

    /// CLOCK_MONOTONIC nanoseconds when this was taken.
    pub fn mono_ns(&self) -> u64 {
        self.mono_ns
    }

    pub fn rfc3339(&self, mono_ns: u64) -> String {
        let at = self.wall - std::time::Duration::from_nanos(self.mono_ns.saturating_sub(mono_ns));
        humantime::format_rfc3339_nanos(at).to_string()
    }
}

pub fn protocol_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        other => other.to_string(),
    }
}

/// A flow as `flows` shows it. `interface` is the name of `key.ifindex`.
pub fn flow_record(
    key: &FlowKey,
    v: &FlowValue,
    program_id: &str,
    interface: &str,
    clock: &MonotonicToWall,
) -> FlowRecord {
    FlowRecord {
        source: crate::sys::address_from_words(&key.src, key.family == 6),
        destination: crate::sys::address_from_words(&key.dst, key.family == 6),
        source_port: key.source_port,
        destination_port: key.dest_port,
        protocol: protocol_name(key.protocol),
        packets: v.packets,
        bytes: v.bytes,
        first_seen: clock.rfc3339(v.first_seen_ns),
        last_seen: clock.rfc3339(v.last_seen_ns),
        verdict: flow_verdict(v),
        interface: interface.to_string(),
        direction: if key.direction == 0 {
            "ingress"
        } else {
            "egress"
        }
        .into(),
        tcp_flags: if key.protocol == proto::TCP {
            tcp_flag_names(v.tcp_flags)
        } else {
            String::new()
        },
        program_id: program_id.to_string(),
        packets_per_second: 0.0,
        bytes_per_second: 0.0,
        last_seen_ns: v.last_seen_ns,
    }
}

/// The verdict a flow's latest packet got.
pub fn flow_verdict(v: &FlowValue) -> FlowVerdict {
    if v.outcome == Outcome::Passed as u32 {
        FlowVerdict::Forwarded
    } else {
        FlowVerdict::Dropped
    }
}

/// Interface names by index, looked up once each (a table holds many flows per interface).
#[derive(Default)]
pub struct InterfaceNames(HashMap<u32, String>);

impl InterfaceNames {
    pub fn get(&mut self, ifindex: u32) -> &str {
        self.0
            .entry(ifindex)
            .or_insert_with(|| crate::sys::interface_name(ifindex))
    }
}

/// Every flow of a loaded firewall as records, and its table's bookkeeping.
pub fn read_flows(
    ebpf: &aya::Ebpf,
    program_id: &str,
) -> Result<(Vec<FlowRecord>, crate::api::FlowTable), FlowTableError> {
    let scan = scan_loaded(ebpf)?;
    let clock = MonotonicToWall::now();
    let mut names = InterfaceNames::default();
    let records = scan
        .flows
        .iter()
        .map(|(k, v)| flow_record(k, v, program_id, names.get(k.ifindex), &clock))
        .collect();
    Ok((records, scan.table(program_id)))
}

impl FlowScan {
    pub fn table(&self, program_id: &str) -> crate::api::FlowTable {
        crate::api::FlowTable {
            program_id: program_id.to_string(),
            capacity: self.capacity,
            entries: self.flows.len() as u64,
            table_entries: self.table_entries,
            inserts: self.inserts,
            insert_failures: self.insert_failures,
            evicted: self.evicted(),
            aged_out: self.aged_out,
        }
    }
}
