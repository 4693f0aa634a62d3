//! The TC shaper through the real daemon and CLI: iperf3 TCP across a veth pair holds to the
//! configured rate, the queueing delay stays under the latency target, the shaping survives a
//! SIGKILL of the daemon, and `clear` gives the interface back.

use std::time::Duration;

use chaos_tests::{Daemon, Iperf3Server, NetNs, TwoHosts, iperf3_with_ping};

fn root_qdisc(ns: &NetNs, interface: &str) -> String {
    let out = ns.exec(&["tc", "qdisc", "show", "dev", interface, "root"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn shaper_holds_iperf3_to_the_rate_with_the_delay_under_the_target() {
    let hosts = TwoHosts::new();
    let mut daemon = Daemon::start_with_flags(&hosts.a, "", &["--enable-fault-injection"]);
    let to = hosts.ips_b[0];
    let _server = Iperf3Server::start(&hosts.b, to);
    let latency_ms = 50.0;

    // Unshaped first, for the comparison at the end.
    let (line_rate, _) = iperf3_with_ping(&hosts.a, to, 2);

    for mbit in [20.0, 100.0] {
        let shown = daemon.shaper_set(&hosts.if_a, &format!("{mbit}mbit"), "50ms");
        assert_eq!(shown[0]["state"], "active", "{shown}");
        assert!(root_qdisc(&hosts.a, &hosts.if_a).contains("htb 7830:"));
        let (rate, rtts) = iperf3_with_ping(&hosts.a, to, 5);

        let wanted = mbit * 1e6;
        eprintln!(
            "{mbit} mbit: iperf3 {:.2} mbit ({:+.1}%), ping under load: max {:.1} ms over {} replies (line rate {:.0} mbit)",
            rate / 1e6,
            (rate / wanted - 1.0) * 100.0,
            rtts.iter().cloned().fold(0.0, f64::max),
            rtts.len(),
            line_rate / 1e6
        );
        assert!(
            (rate - wanted).abs() <= wanted * 0.10,
            "iperf3 got {:.2} mbit through a {mbit} mbit shaper (more than 10% off)",
            rate / 1e6
        );
        assert!(rtts.len() > 100, "ping got too few replies: {rtts:?}");
        let worst = rtts.iter().cloned().fold(0.0, f64::max);
        assert!(
            worst < latency_ms,
            "a ping waited {worst} ms behind iperf3, over the 50 ms target"
        );
    }
    let shown = daemon.cli_json(&["shaper", "show"]);
    let s = &shown[0];
    assert_eq!(s["interface"], hosts.if_a.as_str());
    assert_eq!(s["rate_bits_per_second"], 100_000_000);
    // 12.5 MB/s × 45 ms (nine tenths of the target).
    assert_eq!(s["queue_limit_bytes"], 562_500);
    assert!(s["classified_packets"].as_u64().unwrap() > 1000, "{s}");
    assert!(s["sent_bytes"].as_u64().unwrap() > 10_000_000, "{s}");

    // Bad input: named, and nothing changes.
    daemon.cli_fails(&["shaper", "set", "nosuch0", "--rate", "10mbit"], "nosuch0");
    daemon.cli_fails(&["shaper", "set", &hosts.if_a, "--rate", "fast"], "500kbit");
    let out = daemon.cli(&["shaper", "clear", "nosuch0"]);
    assert!(!out.status.success());
    assert_eq!(
        daemon.cli_json(&["shaper", "show"])[0]["rate_bits_per_second"],
        100_000_000
    );

    // The ShaperActor panics: it is restarted and adopts its own link.
    daemon.cli_json(&["debug", "crash", "shaper"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(daemon.cli_json(&["shaper", "show"])[0]["state"], "active");

    // A qdisc deleted by hand is put back within the second's check.
    hosts
        .a
        .exec(&["tc", "qdisc", "del", "dev", &hosts.if_a, "root"]);
    assert!(!root_qdisc(&hosts.a, &hosts.if_a).contains("htb"));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(root_qdisc(&hosts.a, &hosts.if_a).contains("htb 7830:"));
    // An interface that goes away: the setting is shown as not in force and `health` is
    // degraded; when an interface of that name comes back, it is shaped again.
    let extra = format!("xsh{}", std::process::id() % 100_000);
    let peer = format!("{extra}p");
    let add = [
        "ip", "link", "add", &extra, "type", "veth", "peer", "name", &peer,
    ];
    hosts.a.exec(&add);
    daemon.cli_json(&["shaper", "set", &extra, "--rate", "10mbit"]);
    hosts.a.exec(&["ip", "link", "del", &extra]);
    std::thread::sleep(Duration::from_millis(1500));
    let health = daemon.cli_json(&["health"]);
    assert_eq!(health["checks"]["shaper"]["status"], "degraded", "{health}");
    assert!(
        health["checks"]["shaper"]["message"]
            .as_str()
            .unwrap()
            .contains(&extra),
        "{health}"
    );
    hosts.a.exec(&add);
    std::thread::sleep(Duration::from_millis(1500));
    let health = daemon.cli_json(&["health"]);
    assert_eq!(health["checks"]["shaper"]["status"], "healthy", "{health}");
    assert!(root_qdisc(&hosts.a, &extra).contains("htb 7830:"));
    daemon.cli_json(&["shaper", "clear", &extra]);
    hosts.a.exec(&["ip", "link", "del", &extra]);

    // SIGKILL: the qdisc and the classifier's pinned link stay, so the interface stays
    // shaped while no daemon runs; the next daemon adopts the link.
    daemon.kill();
    assert!(root_qdisc(&hosts.a, &hosts.if_a).contains("htb 7830:"));
    let (rate, _) = iperf3_with_ping(&hosts.a, to, 3);
    assert!(
        (rate - 100e6).abs() <= 10e6,
        "with the daemon dead the interface ran at {:.1} mbit, not 100",
        rate / 1e6
    );
    daemon.start_again(&hosts.a);
    let shown = daemon.cli_json(&["shaper", "show"]);
    assert_eq!(shown[0]["state"], "active", "{shown}");
    assert!(
        daemon
            .log_text()
            .contains("shaper: adopted the pinned classifier link"),
        "{}",
        daemon.log_text()
    );

    // Clear: the qdisc goes, the rate comes back.
    let shown = daemon.cli_json(&["shaper", "clear", &hosts.if_a]);
    assert_eq!(shown, serde_json::json!([]));
    assert!(!root_qdisc(&hosts.a, &hosts.if_a).contains("htb"));
    let (rate, _) = iperf3_with_ping(&hosts.a, to, 2);
    assert!(
        rate > 300e6,
        "after clear iperf3 got {:.0} mbit (line rate was {:.0})",
        rate / 1e6,
        line_rate / 1e6
    );
}

/// `programs.tc_shaper` in the daemon's config shapes the daemon's `interface` at start.
#[test]
fn the_config_shapes_the_interface_at_start() {
    let hosts = TwoHosts::new();
    let mut daemon = Daemon::start(
        &hosts.a,
        &format!(
            "interface = \"{}\"\n[programs.tc_shaper]\ntype = \"tc\"\nbandwidth_limit = \"20mbit\"\nlatency_target = \"20ms\"\n",
            hosts.if_a
        ),
    );
    let shown = daemon.cli_json(&["shaper", "show"]);
    assert_eq!(shown[0]["interface"], hosts.if_a.as_str(), "{shown}");
    assert_eq!(shown[0]["rate_bits_per_second"], 20_000_000);
    // 2.5 MB/s × 18 ms.
    assert_eq!(shown[0]["queue_limit_bytes"], 45_000);
    assert_eq!(shown[0]["state"], "active");
    assert!(root_qdisc(&hosts.a, &hosts.if_a).contains("htb 7830:"));
    // A clean stop takes the shaper out of the kernel: qdiscs, link, pins.
    assert!(daemon.stop().success());
    assert!(!root_qdisc(&hosts.a, &hosts.if_a).contains("htb"));
    assert!(!daemon.pin_root.exists(), "no pins of ours are left behind");
}
