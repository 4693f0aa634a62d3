//! User-space side of `xdp_firewall`: installs a compiled rule set, reads the counters.
//! The kernel side is `ebpf-kern/src/bin/xdp_firewall.rs`; both read `ebpf_shared`.

use std::collections::BTreeMap;

use aya::Ebpf;
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key};
use ebpf_shared::{
    DropReason, FieldMatch, FirewallConfig, FirewallStats, MISC_SLOTS, PortKey, RuleSetHeader,
    field, maps,
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
    let current = {
        let config: Array<&MapData, FirewallConfig> = Array::try_from(
            ebpf.map(maps::FW_CONFIG)
                .ok_or(FirewallError::MissingMap(maps::FW_CONFIG))?,
        )
        .map_err(map_err(maps::FW_CONFIG))?;
        config
            .get(&0, 0)
            .map_err(map_err(maps::FW_CONFIG))?
            .generation
    };
    let target = if current == 0 { 1 } else { 0 };
    let names = &maps::RULE_MAPS[target as usize];
    write_cidrs(ebpf, names[maps::SRC_V4], &compiled.src_v4)?;
    write_cidrs(ebpf, names[maps::SRC_V6], &compiled.src_v6)?;
    write_cidrs(ebpf, names[maps::DST_V4], &compiled.dst_v4)?;
    write_cidrs(ebpf, names[maps::DST_V6], &compiled.dst_v6)?;
    write_ports(ebpf, names[maps::SPORT], &compiled.sport)?;
    write_ports(ebpf, names[maps::DPORT], &compiled.dport)?;
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
        let mut header: Array<&mut MapData, RuleSetHeader> =
            Array::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
        header.set(0, compiled.header, 0).map_err(map_err(name))?;
    }
    let mut config: Array<&mut MapData, FirewallConfig> =
        Array::try_from(map_mut(ebpf, maps::FW_CONFIG)?).map_err(map_err(maps::FW_CONFIG))?;
    let switched = FirewallConfig {
        generation: target,
        _reserved: 0,
    };
    config
        .set(0, switched, 0)
        .map_err(map_err(maps::FW_CONFIG))?;
    Ok(target)
}

fn write_cidrs<const N: usize>(
    ebpf: &mut Ebpf,
    name: &'static str,
    table: &CidrTable<N>,
) -> Result<(), FirewallError>
where
    [u8; N]: aya::Pod,
{
    let mut trie: LpmTrie<&mut MapData, [u8; N], FieldMatch> =
        LpmTrie::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
    let stale: Vec<Key<[u8; N]>> = trie
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    for key in stale {
        trie.remove(&key).map_err(map_err(name))?;
    }
    for (&(len, net), m) in table {
        trie.insert(&Key::new(u32::from(len), net), *m, 0)
            .map_err(map_err(name))?;
    }
    Ok(())
}

fn write_ports(
    ebpf: &mut Ebpf,
    name: &'static str,
    table: &std::collections::HashMap<PortKey, FieldMatch>,
) -> Result<(), FirewallError> {
    let mut ports: HashMap<&mut MapData, PortKey, FieldMatch> =
        HashMap::try_from(map_mut(ebpf, name)?).map_err(map_err(name))?;
    let stale: Vec<PortKey> = ports
        .keys()
        .collect::<Result<_, _>>()
        .map_err(map_err(name))?;
    for key in stale {
        ports.remove(&key).map_err(map_err(name))?;
    }
    for (key, m) in table {
        ports.insert(*key, *m, 0).map_err(map_err(name))?;
    }
    Ok(())
}

/// The counters of a loaded `xdp_firewall`, summed over CPUs; `None` when the object has no
/// firewall counter map (a user-loaded program).
pub fn read_counters(ebpf: &Ebpf) -> Result<Option<PacketCounters>, FirewallError> {
    let Some(map) = ebpf.map(maps::FW_STATS) else {
        return Ok(None);
    };
    let stats: PerCpuArray<&MapData, FirewallStats> =
        PerCpuArray::try_from(map).map_err(map_err(maps::FW_STATS))?;
    let per_cpu = stats.get(&0, 0).map_err(map_err(maps::FW_STATS))?;
    let mut sum = FirewallStats::default();
    for cpu in per_cpu.iter() {
        sum.accumulate(cpu);
    }
    Ok(Some(counters_from(&sum)))
}

pub fn counters_from(s: &FirewallStats) -> PacketCounters {
    let dropped_by_reason: BTreeMap<String, u64> = DropReason::ALL
        .iter()
        .map(|r| (r.label().to_string(), s.dropped_by_reason[*r as usize]))
        .collect();
    PacketCounters {
        processed_packets: s.processed_packets,
        processed_bytes: s.processed_bytes,
        passed_packets: s.passed_packets,
        passed_bytes: s.passed_bytes,
        dropped_packets: s.dropped_packets,
        dropped_bytes: s.dropped_bytes,
        dropped_by_reason,
    }
}
