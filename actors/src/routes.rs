//! Mesh routes (`routes update FILE`, `routes list`): checked and compiled here, installed
//! into the maps of every loaded `xdp_router`, saved in the state dir.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use aya::Ebpf;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, PerCpuArray, PerCpuValues};
use ebpf_shared::routes::{LOCAL, NextHop, ROUTE_NEXT, ROUTE_STATS, ROUTES, ROUTES_MAX};
use ipnet::Ipv4Net;

use crate::api::{ApiError, ErrorKind, Route, RouteStatus};
use crate::sys::{self, internal};

/// A route ready for the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub net: Ipv4Net,
    pub next: NextHop,
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2))
        .collect::<Option<_>>()?;
    parts.try_into().ok()
}

/// Every interface's MAC in this namespace (one getifaddrs for all the routes).
fn interface_macs() -> std::collections::BTreeMap<String, [u8; 6]> {
    nix::ifaddrs::getifaddrs()
        .map(|list| {
            list.filter_map(|a| Some((a.interface_name, a.address?.as_link_addr()?.addr()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// This node's own IPv4 addresses: packets to them are never forwarded.
fn local_addresses() -> BTreeSet<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .map(|list| {
            list.filter_map(|a| Some(a.address?.as_sockaddr_in()?.ip()))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks every route; the error names the first bad one and what is wrong with it.
pub fn compile(routes: &[Route]) -> Result<Vec<Compiled>, ApiError> {
    if routes.len() > ROUTES_MAX as usize {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("{} routes; the fast path holds {ROUTES_MAX}", routes.len()),
        ));
    }
    let mut seen = BTreeSet::new();
    let macs = interface_macs();
    routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let bad = |m: String| {
                ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!("route {i} ({}): {m}", r.prefix),
                )
            };
            let net: Ipv4Net = r
                .prefix
                .parse()
                .or_else(|_| r.prefix.parse::<Ipv4Addr>().map(Ipv4Net::from))
                .map_err(|_| {
                    bad("not an IPv4 prefix: write e.g. 10.3.0.0/24 (IPv6 routes are not supported yet)".into())
                })?
                .trunc();
            if !seen.insert(net) {
                return Err(bad(format!("{net} is given twice")));
            }
            let ifindex = sys::interface_index(&r.interface).map_err(|e| bad(e.message))?;
            let dst_mac = parse_mac(&r.next_hop_mac).ok_or_else(|| {
                bad(format!(
                    "next_hop_mac {:?} is not a MAC address: write aa:bb:cc:dd:ee:ff",
                    r.next_hop_mac
                ))
            })?;
            let src_mac = *macs
                .get(&r.interface)
                .ok_or_else(|| bad(format!("{} has no MAC address", r.interface)))?;
            Ok(Compiled {
                net,
                next: NextHop {
                    ifindex,
                    dst_mac,
                    src_mac,
                },
            })
        })
        .collect()
}

/// Puts `routes` into one router's maps: next hops first, then prefixes (new and changed),
/// then this node's addresses as local, then the prefixes no longer wanted are removed.
/// Counters start again from zero.
pub fn install(ebpf: &mut Ebpf, routes: &[Compiled]) -> Result<(), ApiError> {
    {
        let mut next: Array<_, NextHop> =
            Array::try_from(ebpf.map_mut(ROUTE_NEXT).ok_or_else(|| {
                ApiError::new(ErrorKind::Internal, "xdp_router has no next-hop map")
            })?)
            .map_err(|e| internal("the next-hop map", &e))?;
        for (slot, r) in routes.iter().enumerate() {
            next.set(slot as u32, r.next, 0)
                .map_err(|e| internal("writing a next hop", &e))?;
        }
    }
    {
        let mut stats: PerCpuArray<_, [u64; 2]> =
            PerCpuArray::try_from(ebpf.map_mut(ROUTE_STATS).ok_or_else(|| {
                ApiError::new(ErrorKind::Internal, "xdp_router has no stats map")
            })?)
            .map_err(|e| internal("the route stats map", &e))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| internal("counting CPUs", &e))?;
        for slot in 0..routes.len() as u32 {
            let zero = PerCpuValues::try_from(vec![[0u64; 2]; cpus])
                .map_err(|e| internal("zero counters", &e))?;
            stats
                .set(slot, zero, 0)
                .map_err(|e| internal("clearing a route's counters", &e))?;
        }
    }
    let mut trie: LpmTrie<_, [u8; 4], u32> = LpmTrie::try_from(
        ebpf.map_mut(ROUTES)
            .ok_or_else(|| ApiError::new(ErrorKind::Internal, "xdp_router has no route map"))?,
    )
    .map_err(|e| internal("the route map", &e))?;
    let mut wanted = BTreeSet::new();
    for (slot, r) in routes.iter().enumerate() {
        let key = Key::new(u32::from(r.net.prefix_len()), r.net.network().octets());
        trie.insert(&key, slot as u32, 0)
            .map_err(|e| internal("writing a route", &e))?;
        wanted.insert((r.net.prefix_len(), r.net.network().octets()));
    }
    for address in local_addresses() {
        let key = Key::new(32, address.octets());
        trie.insert(&key, LOCAL, 0)
            .map_err(|e| internal("writing a local address", &e))?;
        wanted.insert((32, address.octets()));
    }
    let stale: Vec<Key<[u8; 4]>> = trie
        .keys()
        .flatten()
        .filter(|k| !wanted.contains(&(k.prefix_len() as u8, k.data())))
        .collect();
    for k in stale {
        let _ = trie.remove(&k);
    }
    Ok(())
}

/// What one router forwarded per route slot.
pub fn counters(ebpf: &Ebpf, slots: usize) -> Vec<(u64, u64)> {
    let Some(map) = ebpf.map(ROUTE_STATS) else {
        return vec![(0, 0); slots];
    };
    let Ok(stats) = PerCpuArray::<_, [u64; 2]>::try_from(map) else {
        return vec![(0, 0); slots];
    };
    (0..slots as u32)
        .map(|slot| {
            stats
                .get(&slot, 0)
                .map(|v| v.iter().fold((0, 0), |(p, b), x| (p + x[0], b + x[1])))
                .unwrap_or((0, 0))
        })
        .collect()
}

/// `routes` with the counters of every router summed.
pub fn status(routes: &[Route], per_router: &[Vec<(u64, u64)>]) -> Vec<RouteStatus> {
    routes
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (packets, bytes) = per_router
                .iter()
                .filter_map(|c| c.get(i))
                .fold((0, 0), |(p, b), (x, y)| (p + x, b + y));
            RouteStatus {
                route: r.clone(),
                packets,
                bytes,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:1"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:00:01"), None);
    }

    #[test]
    fn bad_routes_are_named() {
        let r = |prefix: &str, interface: &str, mac: &str| Route {
            prefix: prefix.into(),
            interface: interface.into(),
            next_hop_mac: mac.into(),
        };
        let e = compile(&[r("10.3.0.0/33", "lo", "02:00:00:00:00:01")]).unwrap_err();
        assert!(
            e.message.contains("route 0") && e.message.contains("IPv4 prefix"),
            "{e}"
        );
        let e = compile(&[r("10.3.0.0/24", "nosuch0", "02:00:00:00:00:01")]).unwrap_err();
        assert!(e.message.contains("nosuch0"), "{e}");
        let e = compile(&[r("10.3.0.0/24", "lo", "bad")]).unwrap_err();
        assert!(e.message.contains("next_hop_mac"), "{e}");
    }
}
