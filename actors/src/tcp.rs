//! User-space side of `tcp_state`: reads its per-peer statistics and latency histogram.

use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use ebpf_shared::{LATENCY_BUCKETS, TcpPeerKey, TcpPeerStats, tcp};

use crate::api::TcpPeer;

/// Per-peer statistics (CPUs' shares summed) and the connect-latency histogram.
pub fn read(ebpf: &Ebpf) -> Result<(Vec<TcpPeer>, Vec<u64>), String> {
    let peers_map = ebpf.map(tcp::TCP_PEERS).ok_or("no TCP_PEERS map")?;
    let peers: PerCpuHashMap<&MapData, TcpPeerKey, TcpPeerStats> =
        PerCpuHashMap::try_from(peers_map).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for entry in peers.iter() {
        let Ok((key, per_cpu)) = entry else { continue };
        let mut total = TcpPeerStats::default();
        for s in per_cpu.iter() {
            total.connects += s.connects;
            total.connect_ns_sum += s.connect_ns_sum;
            total.failed += s.failed;
            total.resets += s.resets;
            total.closes += s.closes;
        }
        out.push(TcpPeer {
            peer: crate::sys::address_from_words(&key.addr, key.family == 6),
            port: key.port,
            connects: total.connects,
            connect_avg_us: if total.connects == 0 {
                0.0
            } else {
                total.connect_ns_sum as f64 / total.connects as f64 / 1000.0
            },
            failed: total.failed,
            resets: total.resets,
            closes: total.closes,
        });
    }
    out.sort_by_key(|p| (p.peer, p.port));
    let hist_map = ebpf
        .map(tcp::TCP_CONNECT_LATENCY)
        .ok_or("no TCP_CONNECT_LATENCY map")?;
    let hist: PerCpuArray<&MapData, u64> =
        PerCpuArray::try_from(hist_map).map_err(|e| e.to_string())?;
    let buckets = (0..LATENCY_BUCKETS)
        .map(|b| {
            hist.get(&b, 0)
                .map(|v| v.iter().sum())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<u64>, String>>()?;
    Ok((out, buckets))
}
