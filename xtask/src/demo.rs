//! `cargo xtask run`: the built-in demo. Two namespaces joined by a veth pair; the daemon runs
//! in one with `xdp_firewall` on its end and a rule that denies one of the other side's two
//! addresses; traffic flows from both; the CLI's view is printed every few seconds. Everything
//! is removed on exit (RAII guards), Ctrl-C included.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chaos_tests::{Daemon, TwoHosts};

const REFRESH: Duration = Duration::from_secs(3);

pub fn run(duration: Option<u64>) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the demo creates network namespaces and loads BPF programs: run `sudo -E cargo xtask run`"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;

    let hosts = TwoHosts::new();
    let [allowed, denied] = hosts.ips_b;
    let config = format!(
        "interface = \"{}\"\nauto_load_programs = true\n\n[programs.xdp_firewall]\nattach_mode = \"drv\"\nrules = [\n  {{ action = \"drop\", source_ip = \"{denied}\" }},\n  {{ action = \"drop\", protocol = \"tcp\", port = 22 }},\n]\n",
        hosts.if_a
    );
    let mut daemon = Daemon::start(&hosts.a, &config);
    println!(
        "demo: namespaces {} (daemon, {} = {}) and {} ({} = {allowed} allowed, {denied} denied)",
        hosts.a.name, hosts.if_a, hosts.ip_a, hosts.b.name, hosts.if_b
    );
    println!("demo: config:\n{config}");
    println!(
        "demo: CLI: x0tta6bl4-ebpf --socket {} <verb>",
        daemon.socket.display()
    );
    println!(
        "demo: Ctrl-C stops{}\n",
        duration
            .map(|d| format!(", or it stops by itself after {d}s"))
            .unwrap_or_default()
    );

    let started = Instant::now();
    let mut last_print = Instant::now() - REFRESH;
    let mut sent = (0u64, 0u64);
    while !stop.load(Ordering::SeqCst)
        && duration.is_none_or(|d| started.elapsed() < Duration::from_secs(d))
    {
        if last_print.elapsed() >= REFRESH {
            last_print = Instant::now();
            println!(
                "=== after {:.0}s: sent {} allowed and {} denied datagrams ===",
                started.elapsed().as_secs_f64(),
                sent.0,
                sent.1
            );
            for args in [
                &["status"][..],
                &["programs"],
                &["stats"],
                &["flows", "--limit", "5"],
            ] {
                let out = daemon.cli(args);
                print!(
                    "$ x0tta6bl4-ebpf {}\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout)
                );
                eprint!("{}", String::from_utf8_lossy(&out.stderr));
            }
            println!();
        }
        hosts.send_udp_from_port(allowed, 40001, 5000, 20, 200);
        hosts.send_udp_from_port(denied, 40002, 5000, 10, 200);
        sent.0 += 20;
        sent.1 += 10;
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("demo: stopping the daemon and removing the namespaces");
    daemon.stop();
    drop(daemon);
    drop(hosts);
    println!("demo: done; nothing is left behind");
    Ok(())
}
