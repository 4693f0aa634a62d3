//! User-space side of `tcp_state`: reads its per-peer statistics and latency histogram.

use aya::Ebpf;
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use ebpf_shared::{LATENCY_BUCKETS, TcpPeerKey, TcpPeerStats, tcp};

use crate::api::TcpPeer;

fn address(words: &[u32; 4], family: u16) -> std::net::IpAddr {
    let mut bytes = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    if family == 6 {
        std::net::IpAddr::from(bytes)
    } else {
        std::net::IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

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
            peer: address(&key.addr, key.family),
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
