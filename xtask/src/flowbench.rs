//! Reading a full flow table: a million IPv4 flows written into a loaded firewall's pinned
//! table, then read the ways an operator can read them: `x0tta6bl4-ebpf flows` (the
//! FlowActor's batched read, filter, sort and answer), a per-key walk of the same map with
//! aya (two system calls per flow, how the daemon read it before), and `bpftool map dump`.
//! Meanwhile `status` is timed, idle and with reads back to back, to show that a big read
//! does not hold up the daemon's other actors.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context as _, bail};
use aya::maps::{Map, MapData, PerCpuHashMap, PerCpuValues};
use chaos_tests::{Daemon, NetNs};
use ebpf_shared::{FlowKeyV4, FlowValue, Outcome, maps};

use crate::bench::Stats;

pub const FLOWS: u32 = 1_000_000;
const TABLE: u32 = 1_048_576;
const RUNS: usize = 5;
const STATUS_CALLS: usize = 30;
/// Reads of the whole table that `status` is timed across.
const BUSY_READS: usize = 3;

pub struct FlowRead {
    present: u64,
    /// `flows --limit 10` through the CLI, ms.
    cli_ms: Stats,
    /// aya's per-key iteration over the same map, ms.
    walk_ms: Stats,
    /// `bpftool -j map dump pinned …`, ms (one run).
    bpftool_ms: u64,
    /// `status` through the CLI, ms: idle, and while reads run back to back.
    status_idle_ms: Stats,
    status_busy_ms: Stats,
    reads_during: usize,
}

fn timed(f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<u64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_millis() as u64)
}

fn cli_ok(daemon: &Daemon, args: &[&str]) -> anyhow::Result<()> {
    let out = daemon.cli(args);
    if !out.status.success() {
        bail!(
            "x0tta6bl4-ebpf {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

pub fn run() -> anyhow::Result<FlowRead> {
    let ns = NetNs::new("flowbench");
    // No timed reads and no ageing: only the reads measured here touch the table.
    let daemon = Daemon::start(
        &ns,
        &format!(
            "auto_load_programs = false\nflow_table_size = {TABLE}\nflow_poll_interval_seconds = 3600\nflow_idle_timeout_seconds = 86400\n"
        ),
    );
    let loaded = daemon.cli_json(&["load", "xdp_firewall"]);
    let id = loaded["id"].as_str().context("program id")?.to_string();
    let pin = daemon.pin_root.join(&id).join(maps::FW_FLOWS4);

    let mut map = Map::from_map_data(MapData::from_pin(&pin)?)?;
    {
        let mut table: PerCpuHashMap<&mut MapData, FlowKeyV4, FlowValue> =
            PerCpuHashMap::try_from(&mut map)?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        let now = mono_ns();
        let value = FlowValue {
            packets: 3,
            bytes: 300,
            first_seen_ns: now,
            last_seen_ns: now,
            tcp_flags: 0,
            outcome: Outcome::Passed as u32,
        };
        for i in 0..FLOWS {
            let key = FlowKeyV4 {
                src: u32::from_be_bytes([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]).to_be(),
                dst: u32::from_be_bytes([10, 255, 0, 1]).to_be(),
                source_port: 1024 + (i % 50_000) as u16,
                dest_port: 443,
                ifindex: 1,
                protocol: 17,
                direction: 0,
                _pad: 0,
            };
            let per_cpu = PerCpuValues::try_from(vec![value; cpus])?;
            table.insert(key, per_cpu, 0)?;
        }
    }

    let flows = |limit: &str| cli_ok(&daemon, &["flows", "--limit", limit]);
    flows("1")?; // the first read also opens the pins
    let present = daemon.cli_json(&["metrics"])["samples"]
        .as_array()
        .and_then(|s| {
            s.iter()
                .find(|m| m["name"] == "ebpf_flows_active")
                .and_then(|m| m["value"].as_f64())
        })
        .context("ebpf_flows_active")? as u64;

    let mut cli = Vec::new();
    let mut walk = Vec::new();
    for _ in 0..RUNS {
        cli.push(timed(|| flows("10"))?);
        walk.push(timed(|| {
            let table: PerCpuHashMap<&MapData, FlowKeyV4, FlowValue> =
                PerCpuHashMap::try_from(&map)?;
            let n = table.iter().filter(|e| e.is_ok()).count() as u64;
            if n + 1000 < present {
                bail!("the per-key walk saw {n} flows of {present}");
            }
            Ok(())
        })?);
    }
    let bpftool_ms = timed(|| {
        let status = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&pin)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("bpftool map dump: {status}");
        }
        Ok(())
    })?;

    // `status` calls until at least STATUS_CALLS were made and `reads` has reached `until`.
    let reads = AtomicUsize::new(0);
    let status = |until: usize| -> anyhow::Result<Stats> {
        let mut ms = Vec::new();
        while ms.len() < STATUS_CALLS || reads.load(Ordering::Relaxed) < until {
            ms.push(timed(|| cli_ok(&daemon, &["status"]))?);
        }
        Ok(Stats::of(ms))
    };
    let status_idle_ms = status(0)?;
    let stop = AtomicBool::new(false);
    let status_busy_ms = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                if flows("1").is_ok() {
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let busy = status(BUSY_READS);
        stop.store(true, Ordering::Relaxed);
        busy
    })?;
    let reads_during = reads.load(Ordering::Relaxed);
    Ok(FlowRead {
        present,
        cli_ms: Stats::of(cli),
        walk_ms: Stats::of(walk),
        bpftool_ms,
        status_idle_ms,
        status_busy_ms,
        reads_during,
    })
}

pub fn render(r: &FlowRead) -> anyhow::Result<String> {
    let mut s = String::new();
    writeln!(s, "## Reading a million flows")?;
    writeln!(s)?;
    writeln!(
        s,
        "{FLOWS} IPv4 flows written into a loaded `xdp_firewall`'s pinned table (`flow_table_size = {TABLE}`; {} present after the LRU's own housekeeping), then read {RUNS} times each way; ms as min / median / max.",
        r.present
    )?;
    writeln!(s)?;
    writeln!(s, "| read | ms |")?;
    writeln!(s, "|---|---|")?;
    writeln!(
        s,
        "| `x0tta6bl4-ebpf flows --limit 10` (FlowActor: BPF_MAP_LOOKUP_BATCH, 4,096 per call; filter, sort, answer; CLI start included) | {} / {} / {} |",
        r.cli_ms.min, r.cli_ms.median, r.cli_ms.max
    )?;
    writeln!(
        s,
        "| aya per-key walk of the same map (get-next-key + lookup per flow) | {} / {} / {} |",
        r.walk_ms.min, r.walk_ms.median, r.walk_ms.max
    )?;
    writeln!(
        s,
        "| `bpftool -j map dump pinned …` (one run) | {} |",
        r.bpftool_ms
    )?;
    writeln!(s)?;
    writeln!(
        s,
        "The rest of the daemon meanwhile: `x0tta6bl4-ebpf status` (CLI start included) takes {} / {} / {} ms idle, and {} / {} / {} ms while another client has `flows` read the million flows back to back ({} reads while `status` was called over and over).",
        r.status_idle_ms.min,
        r.status_idle_ms.median,
        r.status_idle_ms.max,
        r.status_busy_ms.min,
        r.status_busy_ms.median,
        r.status_busy_ms.max,
        r.reads_during
    )?;
    Ok(s)
}
