//! User-space side of `xdp_firewall`: installs a compiled rule set, reads the counters.
//! The kernel side is `ebpf-kern/src/bin/xdp_firewall.rs`; both read `ebpf_shared`.

use std::collections::BTreeMap;

use aya::Ebpf;
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key};
use ebpf_shared::{
    Counter, FW_PORT_CLASSES, FastPath, FieldMatch, FirewallConfig, LATENCY_BUCKETS, MISC_SLOTS,
    OUTCOMES, Outcome, PortKey, RuleSetHeader, VERDICT_BLOCKS, VerdictBlock, field, maps, proto,
    tables,
};

use crate::api::{FirewallRule, PacketCounters, RuleAction};
use crate::rules::{CidrTable, CompileError, CompiledRules, compile};

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("the object has no map {0}: is it really xdp_firewall?")]
    MissingMap(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(
        "the port rules make {classes} distinct port groups; at most {FW_PORT_CLASSES}: use fewer, \
         wider port ranges"
    )]
    TooManyPortClasses { classes: usize },
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> FirewallError {
    move |source| FirewallError::Map { map, source }
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Map, FirewallError> {
    ebpf.map_mut(name).ok_or(FirewallError::MissingMap(name))
}

/// Compiles `rules` and installs them: see [`install`].
pub fn apply_rules(
    ebpf: &mut Ebpf,
    rules: &[FirewallRule],
    default_policy: RuleAction,
) -> Result<u32, FirewallError> {
    install(ebpf, &compile(rules, default_policy)?)
}

/// Writes `compiled` into the generation packets are not using, then switches packets to it
/// with one store; returns the new generation. A packet is matched against the old rule set
/// or the new one, never a mix. The old generation's tables stay as they are until the next
/// install clears them.
pub fn install(ebpf: &mut Ebpf, compiled: &CompiledRules) -> Result<u32, FirewallError> {
    let current = read_array::<FirewallConfig>(ebpf, maps::FW_CONFIG)?.generation;
    let target = if current == 0 { 1 } else { 0 };
    let names = &maps::RULE_MAPS[target as usize];
    // Port entries of older installs are told apart by their epoch, so they need no clearing.
    let epoch = maps::RULE_MAPS
        .iter()
        .map(|g| read_array::<RuleSetHeader>(ebpf, g[maps::HEADER]).map(|h| h.port_epoch))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .unwrap_or(0)
        .wrapping_add(1)
        .max(1);
    let mut header = compiled.header;
    header.port_epoch = epoch;
    header.address_tables = 0;
    for (table, exact, cidr, exact_bit, cidr_bit) in [
        (
            &compiled.src_v4,
            maps::SRC_V4_EXACT,
            maps::SRC_V4,
            tables::SRC_V4_EXACT,
            tables::SRC_V4_CIDR,
        ),
        (
            &compiled.dst_v4,
            maps::DST_V4_EXACT,
            maps::DST_V4,
            tables::DST_V4_EXACT,
            tables::DST_V4_CIDR,
        ),
    ] {
        let (hosts, networks) = write_addresses(ebpf, names[exact], names[cidr], table, v4_key)?;
        header.address_tables |=
            if hosts { exact_bit } else { 0 } | if networks { cidr_bit } else { 0 };
    }
    for (table, exact, cidr, exact_bit, cidr_bit) in [
        (
            &compiled.src_v6,
            maps::SRC_V6_EXACT,
            maps::SRC_V6,
            tables::SRC_V6_EXACT,
            tables::SRC_V6_CIDR,
        ),
        (
            &compiled.dst_v6,
            maps::DST_V6_EXACT,
            maps::DST_V6,
            tables::DST_V6_EXACT,
            tables::DST_V6_CIDR,
        ),
    ] {
        let (hosts, networks) = write_addresses(ebpf, names[exact], names[cidr], table, v6_key)?;
        header.address_tables |=
            if hosts { exact_bit } else { 0 } | if networks { cidr_bit } else { 0 };
    }
    write_ports(
        ebpf,
        [
            names[maps::SPORT_TCP],
            names[maps::SPORT_UDP],
            names[maps::SPORT_CLASS],
        ],
        &compiled.sport,
        compiled.misses[field::SPORT as usize],
        epoch,
    )?;
    write_ports(
        ebpf,
        [
            names[maps::DPORT_TCP],
            names[maps::DPORT_UDP],
            names[maps::DPORT_CLASS],
        ],
        &compiled.dport,
        compiled.misses[field::DPORT as usize],
        epoch,
    )?;
    {
        let name = names[maps::PROTO];
        let mut proto: Array<&mut MapData, FieldMatch> =
            Array::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
        for (i, m) in compiled.proto.iter().enumerate() {
            proto.set(i as u32, *m, 0).map_err(map_err(name))?;
        }
    }
    {
        let name = names[maps::MISC];
        let mut misc: Array<&mut MapData, FieldMatch> =
            Array::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
        for f in 0..field::COUNT {
            misc.set(f, compiled.misses[f as usize], 0)
                .map_err(map_err(name))?;
        }
        for (slot, enc) in compiled.slots.iter().enumerate() {
            let entry = FieldMatch {
                first_simple: *enc,
                ..FieldMatch::EMPTY
            };
            misc.set(MISC_SLOTS + slot as u32, entry, 0)
                .map_err(map_err(name))?;
        }
    }
    {
        let name = names[maps::HEADER];
        let mut h: Array<&mut MapData, RuleSetHeader> =
            Array::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
        h.set(0, header, 0).map_err(map_err(name))?;
    }
    let mut config: Array<&mut MapData, FirewallConfig> =
        Array::try_from(map_mut(ebpf, maps::FW_CONFIG)?).map_err(map_err(maps::FW_CONFIG))?;
    // The epoch also tags the CPUs' verdict caches: verdicts taken under older rule sets
    // stop counting with this store.
    let switched = FirewallConfig {
        generation: target,
        epoch,
    };
    config
        .set(0, switched, 0)
        .map_err(map_err(maps::FW_CONFIG))?;
    // The fast path answers only for this epoch, and learns it only now, after the switch:
    // every verdict it gives was taken under the rule set packets use.
    let mut fast = fast_path(ebpf)?;
    let mut state = fast.get(&0, 0).map_err(map_err(maps::FW_FAST_PATH))?;
    state.epoch = if state.enabled != 0 { epoch } else { 0 };
    fast.set(0, state, 0).map_err(map_err(maps::FW_FAST_PATH))?;
    Ok(target)
}

fn fast_path(ebpf: &mut Ebpf) -> Result<Array<&mut MapData, FastPath>, FirewallError> {
    Array::try_from(map_mut(ebpf, maps::FW_FAST_PATH)?).map_err(map_err(maps::FW_FAST_PATH))
}

/// Lets the fast path answer (from the next install on) or not: call it once after loading,
/// with `false` when the program accounts flows or does not cache verdicts (the fast path
/// does neither), before the first [`install`].
pub fn enable_fast_path(ebpf: &mut Ebpf, enabled: bool) -> Result<(), FirewallError> {
    let state = FastPath {
        epoch: 0,
        enabled: u32::from(enabled),
    };
    fast_path(ebpf)?
        .set(0, state, 0)
        .map_err(map_err(maps::FW_FAST_PATH))
}

fn read_array<T: aya::Pod>(ebpf: &Ebpf, name: &'static str) -> Result<T, FirewallError> {
    let map = ebpf.map(name).ok_or(FirewallError::MissingMap(name))?;
    let array: Array<&MapData, T> = Array::try_from(map).map_err(map_err(name))?;
    array.get(&0, 0).map_err(map_err(name))
}

/// The kernel keys addresses by the raw network-order words it reads from the packet
/// (see `ebpf_kern::Packet`): the same bytes, in words.
fn v4_key(octets: &[u8; 4]) -> u32 {
    u32::from_ne_bytes(*octets)
}

fn v6_key(octets: &[u8; 16]) -> [u32; 4] {
    let word =
        |i: usize| u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]]);
    [word(0), word(4), word(8), word(12)]
}

/// Up to this many host entries stay in the trie: a shallow trie answers faster than a hash
/// lookup (jhash plus a bucket walk) costs, a deep one slower (see BENCHMARKS.md: one host
/// rule, 26 ns in the trie against 41 ns hashed; 1,000, 48 ns against 36 ns).
const HOSTS_IN_TRIE: usize = 64;

/// Host entries go to the exact table (when there are many), networks to the trie; returns
/// which of the two got entries.
fn write_addresses<const N: usize, K: aya::Pod + Eq + std::hash::Hash>(
    ebpf: &mut Ebpf,
    exact_name: &'static str,
    cidr_name: &'static str,
    table: &CidrTable<N>,
    to_key: fn(&[u8; N]) -> K,
) -> Result<(bool, bool), FirewallError> {
    let host_len = (N * 8) as u8;
    let host_count = table.keys().filter(|(len, _)| *len == host_len).count();
    let hashed = |len: u8| len == host_len && host_count > HOSTS_IN_TRIE;
    let mut hosts = 0;
    {
        let mut exact: HashMap<&mut MapData, K, FieldMatch> =
            HashMap::try_from(map_mut(ebpf, exact_name)?).map_err(map_err(exact_name))?;
        let stale: Vec<K> = exact
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(exact_name))?;
        for key in stale {
            exact.remove(&key).map_err(map_err(exact_name))?;
        }
        for (&(_, net), m) in table.iter().filter(|((len, _), _)| hashed(*len)) {
            exact
                .insert(to_key(&net), *m, 0)
                .map_err(map_err(exact_name))?;
            hosts += 1;
        }
    }
    let mut networks = 0;
    let mut trie: LpmTrie<&mut MapData, K, FieldMatch> =
        LpmTrie::try_from(map_mut(ebpf, cidr_name)?).map_err(map_err(cidr_name))?;
    let stale: Vec<Key<K>> = trie
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(cidr_name))?;
    for key in stale {
        trie.remove(&key).map_err(map_err(cidr_name))?;
    }
    for (&(len, net), m) in table.iter().filter(|((len, _), _)| !hashed(*len)) {
        trie.insert(&Key::new(u32::from(len), to_key(&net)), *m, 0)
            .map_err(map_err(cidr_name))?;
        networks += 1;
    }
    Ok((hosts > 0, networks > 0))
}

/// Port entries become classes (distinct table values; class 0 is the miss value) written
/// under this install's epoch into the per-protocol port arrays.
fn write_ports(
    ebpf: &mut Ebpf,
    [tcp_name, udp_name, class_name]: [&'static str; 3],
    table: &std::collections::HashMap<PortKey, FieldMatch>,
    miss: FieldMatch,
    epoch: u32,
) -> Result<(), FirewallError> {
    let mut classes: std::collections::HashMap<FieldMatch, u32> = std::collections::HashMap::new();
    classes.insert(miss, 0);
    let mut ordered = vec![miss];
    let mut entries = Vec::with_capacity(table.len());
    for (key, m) in table {
        let next = ordered.len() as u32;
        let class = *classes.entry(*m).or_insert_with(|| {
            ordered.push(*m);
            next
        });
        entries.push((*key, class));
    }
    if ordered.len() > FW_PORT_CLASSES as usize {
        return Err(FirewallError::TooManyPortClasses {
            classes: ordered.len(),
        });
    }
    {
        let mut class_table: Array<&mut MapData, FieldMatch> =
            Array::try_from(map_mut(ebpf, class_name)?).map_err(map_err(class_name))?;
        for (i, m) in ordered.iter().enumerate() {
            class_table
                .set(i as u32, *m, 0)
                .map_err(map_err(class_name))?;
        }
    }
    for (protocol, name) in [(proto::TCP, tcp_name), (proto::UDP, udp_name)] {
        let mut ports: Array<&mut MapData, u64> =
            Array::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
        for (key, class) in entries.iter().filter(|(k, _)| k.protocol == protocol) {
            let value = (u64::from(epoch) << 32) | u64::from(*class);
            ports
                .set(u32::from(key.port), value, 0)
                .map_err(map_err(name))?;
        }
    }
    Ok(())
}

/// The counters of a loaded `xdp_firewall`, summed over CPUs; `None` when the object has no
/// firewall counter map (a user-loaded program).
pub fn read_counters(ebpf: &Ebpf) -> Result<Option<PacketCounters>, FirewallError> {
    let Some(map) = ebpf.map(maps::FW_STATS) else {
        return Ok(None);
    };
    let stats: PerCpuArray<&MapData, Counter> =
        PerCpuArray::try_from(map).map_err(map_err(maps::FW_STATS))?;
    let mut by_outcome = [Counter::default(); OUTCOMES as usize];
    for (i, total) in by_outcome.iter_mut().enumerate() {
        for cpu in stats
            .get(&(i as u32), 0)
            .map_err(map_err(maps::FW_STATS))?
            .iter()
        {
            total.packets += cpu.packets;
            total.bytes += cpu.bytes;
        }
    }
    // The packets the fast path answered are counted in the verdict blocks it found them in.
    let map = ebpf
        .map(maps::FW_VERDICTS4)
        .ok_or(FirewallError::MissingMap(maps::FW_VERDICTS4))?;
    let blocks: PerCpuArray<&MapData, VerdictBlock> =
        PerCpuArray::try_from(map).map_err(map_err(maps::FW_VERDICTS4))?;
    for b in 0..VERDICT_BLOCKS {
        for cpu in blocks
            .get(&b, 0)
            .map_err(map_err(maps::FW_VERDICTS4))?
            .iter()
        {
            for (total, c) in by_outcome.iter_mut().zip(&cpu.counters) {
                total.packets += c.packets;
                total.bytes += c.bytes;
            }
        }
    }
    Ok(Some(counters_from(&by_outcome)))
}

/// The processing-time histogram: packets per log2-of-nanoseconds bucket, CPUs summed.
pub fn read_latency(ebpf: &Ebpf) -> Result<Vec<u64>, FirewallError> {
    let map = ebpf
        .map(maps::FW_LATENCY)
        .ok_or(FirewallError::MissingMap(maps::FW_LATENCY))?;
    let histogram: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(map).map_err(map_err(maps::FW_LATENCY))?;
    (0..LATENCY_BUCKETS)
        .map(|b| {
            histogram
                .get(&b, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .map_err(map_err(maps::FW_LATENCY))
        })
        .collect()
}

/// Totals derived from the per-outcome counters.
pub fn counters_from(by_outcome: &[Counter; OUTCOMES as usize]) -> PacketCounters {
    let passed = by_outcome[Outcome::Passed as usize];
    let dropped = Outcome::DROPS.iter().map(|o| by_outcome[*o as usize]);
    let (dropped_packets, dropped_bytes) =
        dropped.fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
    PacketCounters {
        processed_packets: passed.packets + dropped_packets,
        processed_bytes: passed.bytes + dropped_bytes,
        passed_packets: passed.packets,
        passed_bytes: passed.bytes,
        dropped_packets,
        dropped_bytes,
        dropped_by_reason: Outcome::DROPS
            .iter()
            .map(|o| (o.label().to_string(), by_outcome[*o as usize].packets))
            .collect::<BTreeMap<String, u64>>(),
    }
}
