//! User-space side of `xdp_firewall`: writes the rule maps, reads the counters.
//! The kernel side is `ebpf-kern/src/bin/xdp_firewall.rs`; both read `ebpf_shared`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use aya::Ebpf;
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key};
use ebpf_shared::{DropReason, FirewallConfig, FirewallStats, PortKey, action, maps};

use crate::api::{FirewallRule, PacketCounters, RuleAction};

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
    #[error("rule {index}: {message}")]
    InvalidRule { index: usize, message: String },
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> FirewallError {
    move |source| FirewallError::Map { map, source }
}

fn to_kernel(a: RuleAction) -> u32 {
    match a {
        RuleAction::Allow => action::ALLOW,
        RuleAction::Drop => action::DROP,
    }
}

/// Writes `rules` and the default policy into a freshly loaded `xdp_firewall`. Rules are
/// checked first, so a bad rule set writes nothing.
pub fn apply_rules(
    ebpf: &mut Ebpf,
    rules: &[FirewallRule],
    default_policy: RuleAction,
) -> Result<(), FirewallError> {
    for (index, rule) in rules.iter().enumerate() {
        rule.validate()
            .map_err(|message| FirewallError::InvalidRule { index, message })?;
    }
    {
        let map = ebpf
            .map_mut(maps::FW_CONFIG)
            .ok_or(FirewallError::MissingMap(maps::FW_CONFIG))?;
        let mut config: Array<&mut MapData, FirewallConfig> =
            Array::try_from(map).map_err(map_err(maps::FW_CONFIG))?;
        let value = FirewallConfig {
            default_action: to_kernel(default_policy),
            _reserved: 0,
        };
        config.set(0, value, 0).map_err(map_err(maps::FW_CONFIG))?;
    }
    for rule in rules {
        let value = to_kernel(rule.action);
        match (rule.source_ip, rule.protocol) {
            (Some(IpAddr::V4(ip)), _) => {
                let map = ebpf
                    .map_mut(maps::FW_SRC_V4)
                    .ok_or(FirewallError::MissingMap(maps::FW_SRC_V4))?;
                let mut trie: LpmTrie<&mut MapData, [u8; 4], u32> =
                    LpmTrie::try_from(map).map_err(map_err(maps::FW_SRC_V4))?;
                trie.insert(&Key::new(32, ip.octets()), value, 0)
                    .map_err(map_err(maps::FW_SRC_V4))?;
            }
            (Some(IpAddr::V6(ip)), _) => {
                let map = ebpf
                    .map_mut(maps::FW_SRC_V6)
                    .ok_or(FirewallError::MissingMap(maps::FW_SRC_V6))?;
                let mut trie: LpmTrie<&mut MapData, [u8; 16], u32> =
                    LpmTrie::try_from(map).map_err(map_err(maps::FW_SRC_V6))?;
                trie.insert(&Key::new(128, ip.octets()), value, 0)
                    .map_err(map_err(maps::FW_SRC_V6))?;
            }
            (None, Some(protocol)) => {
                let map = ebpf
                    .map_mut(maps::FW_PORTS)
                    .ok_or(FirewallError::MissingMap(maps::FW_PORTS))?;
                let mut ports: HashMap<&mut MapData, PortKey, u32> =
                    HashMap::try_from(map).map_err(map_err(maps::FW_PORTS))?;
                let key = PortKey {
                    protocol: protocol.number(),
                    _pad: 0,
                    port: rule.port.unwrap_or(0),
                };
                ports
                    .insert(key, value, 0)
                    .map_err(map_err(maps::FW_PORTS))?;
            }
            (None, None) => unreachable!("validated above"),
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
