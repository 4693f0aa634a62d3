//! The shaper's accuracy (iperf3 through `shaper set`) and the mesh fast path's forwarding
//! rate (`xdp_router` on the middle host of A — B — C against the kernel's own forwarding).

use std::fmt::Write as _;

use anyhow::Context as _;
use chaos_tests::{Chain, Daemon, Iperf3Server, NetNs, TwoHosts, iperf3_with_ping};

use crate::bench::{LIVE_SECONDS, Stats, blast};

const SHAPER_RUNS: usize = 3;
const SHAPER_SECONDS: u32 = 4;
const ROUTE_RUNS: usize = 5;

pub struct ShaperRow {
    mbit: u64,
    /// iperf3's received rate, kbit/s.
    rate_kbit: Stats,
    /// The longest ping RTT under load per run, µs.
    worst_rtt_us: Stats,
}

pub struct RouteRow {
    what: &'static str,
    pps: Stats,
}

pub struct Report {
    shaper: Vec<ShaperRow>,
    routes: Vec<RouteRow>,
}

fn shaper() -> anyhow::Result<Vec<ShaperRow>> {
    let hosts = TwoHosts::new();
    let daemon = Daemon::start(&hosts.a, "auto_load_programs = false\n");
    let to = hosts.ips_b[0];
    let _server = Iperf3Server::start(&hosts.b, to);
    let mut rows = Vec::new();
    for mbit in [20u64, 100] {
        daemon.shaper_set(&hosts.if_a, &format!("{mbit}mbit"), "50ms");
        let (mut rates, mut worst) = (Vec::new(), Vec::new());
        for _ in 0..SHAPER_RUNS {
            let (rate, rtts_ms) = iperf3_with_ping(&hosts.a, to, SHAPER_SECONDS);
            rates.push((rate / 1000.0) as u64);
            worst.push((rtts_ms.iter().cloned().fold(0.0, f64::max) * 1000.0) as u64);
        }
        rows.push(ShaperRow {
            mbit,
            rate_kbit: Stats::of(rates),
            worst_rtt_us: Stats::of(worst),
        });
    }
    Ok(rows)
}

fn rx_packets(ns: &NetNs, ifname: &str) -> anyhow::Result<u64> {
    let out = ns.exec(&["ip", "-s", "-j", "link", "show", "dev", ifname]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .context("rx packets in `ip -s -j link`")
}

/// Packets per second that reached C during one blast from A.
fn forwarded_pps(chain: &Chain) -> anyhow::Result<u64> {
    let before = rx_packets(&chain.c, &chain.c_if)?;
    blast(&chain.a, Chain::A, Chain::C);
    let after = rx_packets(&chain.c, &chain.c_if)?;
    Ok(((after - before) as f64 / LIVE_SECONDS) as u64)
}

fn routes() -> anyhow::Result<Vec<RouteRow>> {
    let chain = Chain::new();
    // C answers with ICMP port unreachable, which the kernel rate-limits to a trickle.
    let daemon = Daemon::start(&chain.b, "auto_load_programs = false\n");
    let id = daemon.cli_json(&["load", "xdp_router", "--mode", "skb"])["id"]
        .as_str()
        .context("router id")?
        .to_string();
    let file = daemon.dir.path().join("routes.json");
    std::fs::write(&file, chain.routes_json())?;
    daemon.cli_json(&["routes", "update", file.to_str().context("path")?]);
    let (mut xdp, mut kernel) = (Vec::new(), Vec::new());
    for _ in 0..ROUTE_RUNS {
        // The XDP fast path (B's kernel forwarding off)...
        chain
            .b
            .exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]);
        daemon.cli_json(&["attach", &id, &chain.b_to_a]);
        daemon.cli_json(&["attach", &id, &chain.b_to_c]);
        xdp.push(forwarded_pps(&chain)?);
        daemon.cli_json(&["detach", &id, &chain.b_to_a]);
        daemon.cli_json(&["detach", &id, &chain.b_to_c]);
        // ...and the kernel's forwarding, no XDP.
        chain
            .b
            .exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
        kernel.push(forwarded_pps(&chain)?);
    }
    Ok(vec![
        RouteRow {
            what: "xdp_router (skb mode), B's forwarding off",
            pps: Stats::of(xdp),
        },
        RouteRow {
            what: "kernel IPv4 forwarding on B, no XDP",
            pps: Stats::of(kernel),
        },
    ])
}

pub fn run() -> anyhow::Result<Report> {
    Ok(Report {
        shaper: shaper()?,
        routes: routes()?,
    })
}

pub fn render(r: &Report) -> anyhow::Result<String> {
    let mut s = String::new();
    writeln!(s, "## TC shaper accuracy")?;
    writeln!(s)?;
    writeln!(
        s,
        "- Method: `x0tta6bl4-ebpf shaper set IF --rate R --latency 50ms` on the sender's veth; iperf3 TCP for {SHAPER_SECONDS} s (first second left out), {SHAPER_RUNS} runs per rate, while ping sends every 20 ms along the same path. iperf3 reports goodput (TCP payload); the shaper counts whole frames, so the expected goodput is 1448/1514 = 95.6% of the rate. Min / median / max."
    )?;
    writeln!(s)?;
    writeln!(
        s,
        "| rate | iperf3 mbit | median / rate | worst ping RTT under load, ms | latency target |"
    )?;
    writeln!(s, "|---|---|---|---|---|")?;
    for row in &r.shaper {
        writeln!(
            s,
            "| {} mbit | {:.2} / {:.2} / {:.2} | {:.3} | {:.1} / {:.1} / {:.1} | 50 ms |",
            row.mbit,
            row.rate_kbit.min as f64 / 1000.0,
            row.rate_kbit.median as f64 / 1000.0,
            row.rate_kbit.max as f64 / 1000.0,
            row.rate_kbit.median as f64 / (row.mbit as f64 * 1000.0),
            row.worst_rtt_us.min as f64 / 1000.0,
            row.worst_rtt_us.median as f64 / 1000.0,
            row.worst_rtt_us.max as f64 / 1000.0,
        )?;
    }
    writeln!(s)?;
    writeln!(s, "## Mesh routes fast path")?;
    writeln!(s)?;
    writeln!(
        s,
        "- Method: three namespaces A — B — C. A sender pinned to CPU 0 in A (sendmmsg, 18-byte UDP payloads, {LIVE_SECONDS} s) sends to C; packets per second counted at C's interface (`rx_packets`). {ROUTE_RUNS} runs, alternating: `xdp_router` on both of B's interfaces (skb mode, B's IPv4 forwarding off) and B's kernel forwarding without XDP. Min / median / max."
    )?;
    writeln!(s)?;
    writeln!(s, "| path through B | pps at C |")?;
    writeln!(s, "|---|---|")?;
    for row in &r.routes {
        writeln!(
            s,
            "| {} | {} / {} / {} |",
            row.what, row.pps.min, row.pps.median, row.pps.max
        )?;
    }
    if let [xdp, kernel] = r.routes.as_slice() {
        writeln!(s)?;
        writeln!(
            s,
            "xdp_router / kernel forwarding (medians): {:.2}",
            xdp.pps.median as f64 / kernel.pps.median.max(1) as f64
        )?;
    }
    Ok(s)
}
