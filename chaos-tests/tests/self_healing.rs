//! Self-healing watched from outside: faults injected through the real CLI
//! (`debug crash`), traffic the whole time, the firewall never lets the denied source through.

use std::time::{Duration, Instant};

use chaos_tests::{Daemon, TwoHosts, stderr};

#[test]
fn debug_changes_the_log_level_at_run_time_and_refuses_faults_by_default() {
    let hosts = TwoHosts::new();
    let daemon = Daemon::start(&hosts.a, "auto_load_programs = false\n");
    let out = daemon.cli(&["debug", "crash", "loader"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--enable-fault-injection"),
        "{}",
        stderr(&out)
    );

    assert!(!daemon.log_text().contains("DEBUG"));
    let done = daemon.cli_json(&["debug", "--enable", "--log-level", "DEBUG"]);
    assert!(done["done"].as_str().unwrap().contains("debug"), "{done}");
    daemon.cli_json(&["status"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.log_text().contains("DEBUG") {
        assert!(
            Instant::now() < deadline,
            "no debug line after --enable:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = daemon.cli(&["debug", "--enable", "--log-level", "x=[[["]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a log filter"),
        "{}",
        stderr(&out)
    );
    daemon.cli_json(&["debug", "--disable"]);
    assert!(daemon.log_text().contains("log filter changed"));
}

#[test]
fn crashed_actors_are_restarted_and_the_firewall_never_opens() {
    let hosts = TwoHosts::new();
    let [allowed, denied] = hosts.ips_b;
    let config = format!(
        "interface = \"{}\"\n[programs.xdp_firewall]\nattach_mode = \"skb\"\nrules = [{{ action = \"drop\", source_ip = \"{denied}\" }}]\n",
        hosts.if_a
    );
    let daemon = Daemon::start_with_flags(&hosts.a, &config, &["--enable-fault-injection"]);
    daemon.wait_attached();
    let interface = hosts.if_a.clone();

    for (actor, restarts) in [
        (format!("attach:{interface}"), 1u64),
        ("loader".to_string(), 2),
        ("interfaces".to_string(), 3),
        ("flows".to_string(), 4),
    ] {
        let said = daemon.cli_json(&["debug", "crash", &actor]);
        assert!(said["done"].as_str().unwrap().contains("panic"), "{said}");
        // Traffic right through the restart: never a denied packet through.
        assert_eq!(
            hosts.ping(denied, 5),
            0,
            "the denied source got through while {actor} restarted"
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let health = loop {
            if let Ok(h) = std::panic::catch_unwind(|| daemon.cli_json(&["health"]))
                && h["checks"]["supervisor"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(&format!("{restarts} actor restart")))
                && h["checks"]["attachments"]["status"] == "healthy"
            {
                break h;
            }
            assert!(
                Instant::now() < deadline,
                "{actor} was not repaired:\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(
            health["status"], "degraded",
            "restarts show as degraded: {health}"
        );
        let programs = daemon.cli_json(&["programs"]);
        assert_eq!(
            programs.as_array().unwrap().len(),
            1,
            "still one firewall after {actor}: {programs}"
        );
        assert_eq!(programs[0]["id"], "xdp_firewall-1");
        assert_eq!(
            programs[0]["attachments"][0]["interface"],
            interface.as_str()
        );
        assert_eq!(hosts.ping(allowed, 2), 2);
        let flows = daemon.cli_json(&["flows", "--protocol", "icmp"]);
        assert!(
            !flows.as_array().unwrap().is_empty(),
            "flows are answered after {actor}: {flows}"
        );
    }
    // The tree shows each actor once restarted, with when and why it died.
    let tree = daemon.cli_json(&["supervisor"]);
    let node = |name: &str| -> serde_json::Value {
        tree.as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {tree:#}"))
    };
    for name in [
        format!("AttachActor[{interface}]"),
        "LoaderActor".to_string(),
        "InterfaceSupervisor".to_string(),
        "FlowActor".to_string(),
    ] {
        let n = node(&name);
        assert_eq!(
            (n["restarts"].as_u64(), n["state"].as_str()),
            (Some(1), Some("running")),
            "{n}"
        );
        assert!(
            n["last_failure"].as_str().unwrap().contains("fault inject"),
            "{n}"
        );
    }
    assert_eq!(node("RootSupervisor")["depth"], 0);
    assert_eq!(node(&format!("AttachActor[{interface}]"))["depth"], 2);
    let human = String::from_utf8(daemon.cli(&["supervisor"]).stdout).unwrap();
    assert!(human.contains("└─ LoaderActor"), "{human}");
    let metrics = daemon.cli_json(&["metrics"]);
    let restarts_of = |actor: &str| {
        metrics["samples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["name"] == "ebpf_supervisor_restarts_total" && s["labels"]["actor"] == actor
            })
            .and_then(|s| s["value"].as_f64())
    };
    assert_eq!(restarts_of("FlowActor"), Some(1.0));

    let log = daemon.log_text();
    assert!(log.contains("fault injected into AttachActor"), "{log}");
    assert!(log.contains("fault injected into LoaderActor"), "{log}");
}

fn wait_for(what: &str, daemon: &Daemon, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what} did not happen within 10s:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

#[test]
fn lost_attachments_are_noticed_and_made_again() {
    let hosts = TwoHosts::new();
    let denied = hosts.ips_b[1];
    let config = format!(
        "interface = \"{}\"\n[programs.xdp_firewall]\nattach_mode = \"skb\"\nrules = [{{ action = \"drop\", source_ip = \"{denied}\" }}]\n",
        hosts.if_a
    );
    let daemon = Daemon::start(&hosts.a, &config);
    let programs = daemon.wait_attached();
    let kernel_id = programs[0]["kernel_id"].as_u64().unwrap();
    let links = chaos_tests::kernel_links_of(kernel_id);
    assert_eq!(links.len(), 1);

    // Detached behind the daemon's back.
    chaos_tests::run(std::process::Command::new("bpftool").args([
        "link",
        "detach",
        "id",
        &links[0].to_string(),
    ]));
    let took = wait_for("re-attach after bpftool link detach", &daemon, || {
        let now = chaos_tests::kernel_links_of(kernel_id);
        now.len() == 1 && now != links
    });
    assert!(
        took < Duration::from_secs(3),
        "noticed and repaired in {took:?}"
    );
    eprintln!("bpftool link detach noticed and repaired in {took:?}");
    assert_eq!(hosts.ping(denied, 3), 0, "the firewall is back");
    assert!(
        daemon
            .log_text()
            .contains("detached behind the daemon's back")
    );

    // The interface goes down (netlink tells the daemon at once): reported, not "repaired"
    // (the program stays attached); up again, the report clears.
    let attachments = || daemon.cli_json(&["health"])["checks"]["attachments"].clone();
    hosts.a.exec(&["ip", "link", "set", &hosts.if_a, "down"]);
    let took = wait_for("the interface down in health", &daemon, || {
        attachments()["message"]
            .as_str()
            .is_some_and(|m| m.contains("is down (administratively)"))
    });
    eprintln!("interface down noticed in {took:?}");
    assert_eq!(attachments()["status"], "degraded");
    assert_eq!(
        chaos_tests::kernel_links_of(kernel_id).len(),
        1,
        "still attached"
    );
    hosts.a.exec(&["ip", "link", "set", &hosts.if_a, "up"]);
    let took = wait_for("the interface up again in health", &daemon, || {
        attachments()["status"] == "healthy"
    });
    eprintln!("interface up noticed in {took:?}");
    assert!(daemon.log_text().contains("interface up again"));

    // The interface is deleted, then comes back under the same name.
    hosts.a.exec(&["ip", "link", "del", &hosts.if_a]);
    let took = wait_for("the loss to show in health", &daemon, || {
        let h = daemon.cli_json(&["health"]);
        h["checks"]["attachments"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("deleted"))
    });
    eprintln!("interface deletion noticed in {took:?}");
    chaos_tests::run(std::process::Command::new("ip").args([
        "link",
        "add",
        &hosts.if_a,
        "netns",
        &hosts.a.name,
        "type",
        "veth",
        "peer",
        "name",
        &hosts.if_b,
        "netns",
        &hosts.b.name,
    ]));
    hosts.a.exec(&["ip", "link", "set", &hosts.if_a, "up"]);
    hosts.b.exec(&["ip", "link", "set", &hosts.if_b, "up"]);
    let took = wait_for("re-attach to the recreated interface", &daemon, || {
        let shown = hosts
            .a
            .exec(&["bpftool", "-j", "net", "show", "dev", &hosts.if_a]);
        let v: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap_or_default();
        v[0]["xdp"][0]["id"].as_u64() == Some(kernel_id)
    });
    eprintln!("re-attached to the recreated interface in {took:?}");
    wait_for(
        "health to clear once the new link has its carrier",
        &daemon,
        || attachments()["status"] == "healthy",
    );
}

/// The systemd notify protocol, with a fake NOTIFY_SOCKET: READY=1 once the daemon serves and
/// has restored its state, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1 at SIGTERM.
#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    let hosts = TwoHosts::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let config = format!(
        "interface = \"{}\"\n[programs.xdp_firewall]\nattach_mode = \"skb\"\n",
        hosts.if_a
    );
    let started = Instant::now();
    let mut daemon = Daemon::start_with(
        &hosts.a,
        &config,
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut buf = [0u8; 256];
    let mut next = || {
        let n = socket
            .recv(&mut buf)
            .expect("a notification from the daemon");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next().trim(), "READY=1");
    // Ready means ready: the startup plan already attached the firewall.
    let status = daemon.cli_json(&["status"]);
    assert_eq!(
        status["attachments"].as_array().unwrap().len(),
        1,
        "{status}"
    );
    let pings = (0..3)
        .map(|_| next())
        .filter(|m| m.trim() == "WATCHDOG=1")
        .count();
    assert_eq!(pings, 3, "watchdog pings every 200 ms");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(daemon.stop().success());
    let mut last = String::new();
    while let Ok(n) = socket.recv(&mut buf) {
        last = String::from_utf8_lossy(&buf[..n]).into_owned();
        if last.trim() == "STOPPING=1" {
            break;
        }
    }
    assert_eq!(last.trim(), "STOPPING=1");
}

#[test]
fn a_refused_driver_mode_degrades_visibly_and_upgrades_back_when_the_driver_takes_it() {
    let hosts = TwoHosts::new();
    let [allowed, denied] = hosts.ips_b;
    // veth refuses native XDP while its peer's MTU is larger than an XDP frame holds (the
    // kernel: "Peer MTU is too large to set XDP"); skb mode is not bound by it.
    hosts
        .b
        .exec(&["ip", "link", "set", &hosts.if_b, "mtu", "9000"]);
    let config = format!(
        "interface = \"{}\"\nenable_dynamic_fallback = true\nfallback_probe_interval_seconds = 0.5\nmonitoring_interval_seconds = 0.5\n[programs.xdp_firewall]\nattach_mode = \"drv\"\nrules = [{{ action = \"drop\", source_ip = \"{denied}\" }}]\n",
        hosts.if_a
    );
    let daemon = Daemon::start(&hosts.a, &config);
    let programs = daemon.wait_attached();
    let attachment = &programs[0]["attachments"][0];
    assert_eq!(
        (&attachment["mode"], &attachment["requested_mode"]),
        (&"skb".into(), &"drv".into()),
        "{programs}"
    );
    assert!(daemon.log_text().contains("degrading to skb mode"));
    wait_for("the xdp_mode_degraded alert", &daemon, || {
        daemon
            .alert_ids()
            .contains(&"xdp_mode_degraded".to_string())
    });
    let if_a = hosts.if_a.as_str();
    assert_eq!(
        daemon.metric(
            "ebpf_attach_mode",
            &[
                ("interface", if_a),
                ("mode", "skb"),
                ("requested_mode", "drv")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(hosts.ping(denied, 2), 0, "degraded, and still the firewall");
    assert_eq!(hosts.ping(allowed, 2), 2);

    // Probes while the cause lasts are refused, and spaced further apart each time.
    wait_for("two refused probes", &daemon, || {
        daemon
            .metric(
                "ebpf_fallback_events_total",
                &[("interface", if_a), ("event", "probe_refused")],
            )
            .unwrap_or(0.0)
            >= 2.0
    });
    assert!(
        daemon
            .log_text()
            .contains("still refused; staying in skb mode")
    );

    // The cause goes away: the next probe upgrades back to driver mode.
    hosts
        .b
        .exec(&["ip", "link", "set", &hosts.if_b, "mtu", "1500"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let p = daemon.cli_json(&["programs"]);
        if p[0]["attachments"][0]["mode"] == "drv" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no upgrade back to drv within 20 s:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        daemon.metric(
            "ebpf_fallback_events_total",
            &[("interface", if_a), ("event", "upgraded")],
        ),
        Some(1.0)
    );
    assert_eq!(
        daemon.metric(
            "ebpf_attach_mode",
            &[
                ("interface", if_a),
                ("mode", "drv"),
                ("requested_mode", "drv")
            ]
        ),
        Some(1.0)
    );
    wait_for("the alert to clear", &daemon, || {
        !daemon
            .alert_ids()
            .contains(&"xdp_mode_degraded".to_string())
    });
    assert_eq!(hosts.ping(denied, 2), 0, "upgraded, and still the firewall");
    assert_eq!(hosts.ping(allowed, 2), 2);
    let health = daemon.cli_json(&["health"]);
    assert_eq!(
        health["checks"]["attachments"]["status"], "healthy",
        "{health}"
    );
}

#[test]
fn a_tree_that_keeps_dying_escalates_the_daemon_exits_and_the_firewall_stays() {
    let hosts = TwoHosts::new();
    let [allowed, denied] = hosts.ips_b;
    let config = format!(
        "interface = \"{}\"\n[programs.xdp_firewall]\nattach_mode = \"skb\"\nrules = [{{ action = \"drop\", source_ip = \"{denied}\" }}]\n",
        hosts.if_a
    );
    let mut daemon = Daemon::start_with_flags(&hosts.a, &config, &["--enable-fault-injection"]);
    let programs = daemon.wait_attached();
    let kernel_id = programs[0]["kernel_id"].as_u64().unwrap();
    // The root allows 5 restarts in 30 s; the 6th death escalates.
    for n in 1..=6 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = daemon.cli(&["debug", "crash", "flows"]);
            if out.status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "crash {n}: {}", stderr(&out));
            std::thread::sleep(Duration::from_millis(50));
        }
        if n < 6 {
            // Wait for the restart before the next crash.
            wait_for("the FlowActor back", &daemon, || {
                daemon.cli(&["flows"]).status.success()
            });
        }
    }
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .expect("the daemon exits once its tree gives up");
    assert_eq!(status.code(), Some(1), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(
        log.contains("more often than 5 restarts in 30s")
            && log.contains("the supervision tree gave up"),
        "{log}"
    );
    // Nothing was detached on the way out: the firewall goes on.
    assert_eq!(chaos_tests::kernel_links_of(kernel_id).len(), 1);
    assert_eq!(hosts.ping(denied, 2), 0);
    // What a service manager does next: start it again; it adopts the firewall.
    daemon.start_again(&hosts.a);
    daemon.wait_attached();
    assert_eq!(hosts.ping(allowed, 2), 2);
    assert_eq!(hosts.ping(denied, 2), 0);
}

#[test]
fn devices_without_native_xdp_degrade_to_skb_or_fail_clearly_with_fallback_off() {
    let hosts = TwoHosts::new();
    for cmd in [
        vec![
            "ip",
            "link",
            "add",
            "link",
            &hosts.if_a,
            "name",
            "mv0",
            "type",
            "macvlan",
            "mode",
            "bridge",
        ],
        vec!["ip", "link", "set", "mv0", "up"],
        vec!["ip", "link", "add", "ifb0", "type", "ifb"],
        vec!["ip", "link", "set", "ifb0", "up"],
    ] {
        hosts.a.exec(&cmd);
    }
    let daemon = Daemon::start(
        &hosts.a,
        "auto_load_programs = false\nenable_dynamic_fallback = true\n",
    );
    for device in ["mv0", "ifb0"] {
        let id = daemon.cli_json(&["load", "xdp_firewall"])["id"]
            .as_str()
            .unwrap()
            .to_string();
        let attached = daemon.cli_json(&["attach", &id, device, "--mode", "drv"]);
        assert_eq!(
            (&attached["mode"], &attached["requested_mode"]),
            (&"skb".into(), &"drv".into()),
            "{device}: {attached}"
        );
    }
    assert!(daemon.log_text().contains("degrading to skb mode"));
    let health = daemon.cli_json(&["health"]);
    assert_eq!(
        health["checks"]["attachments"]["status"], "degraded",
        "{health}"
    );

    // Detached at its SIGTERM, so that the next daemon finds the devices free.
    drop(daemon);
    let strict = Daemon::start(
        &hosts.a,
        "auto_load_programs = false\nenable_dynamic_fallback = false\n",
    );
    let id = strict.cli_json(&["load", "xdp_firewall"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = strict.cli(&["attach", &id, "mv0", "--mode", "drv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("interface mv0 has no native XDP support")
            && stderr(&out).contains("--mode skb"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_driver_mode_attachment_that_keeps_aborting_is_degraded_to_skb() {
    let hosts = TwoHosts::new();
    let daemon = Daemon::start(
        &hosts.a,
        "auto_load_programs = false\nfallback_abort_rate = 50\nfallback_probe_interval_seconds = 600\nmonitoring_interval_seconds = 0.5\n",
    );
    // A faulty user program: it aborts UDP to port 9.
    std::fs::write(
        daemon.dir.path().join("programs/xdp_abort_udp9.o"),
        actors::builtin::XDP_ABORT_UDP9,
    )
    .unwrap();
    let id = daemon.cli_json(&["load", "xdp_abort_udp9"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let attached = daemon.cli_json(&["attach", &id, &hosts.if_a, "--mode", "drv"]);
    assert_eq!(attached["mode"], "drv", "{attached}");
    let programs = daemon.cli_json(&["programs"]);
    assert!(
        programs
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "xdp_exceptions"),
        "the abort watch is loaded: {programs}"
    );

    // ~500 aborts a second for 2 s, well over 50.
    let to = std::net::SocketAddrV4::new(hosts.ip_a, 9);
    hosts.b.within(|| {
        let s = std::net::UdpSocket::bind((hosts.ips_b[0], 0)).unwrap();
        for _ in 0..1000 {
            s.send_to(b"x", to).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let took = wait_for("the aborting attachment to degrade", &daemon, || {
        let p = daemon.cli_json(&["programs"]);
        p.as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == id.as_str() && p["attachments"][0]["mode"] == "skb")
    });
    eprintln!("degraded {took:?} after the aborts stopped");
    let p = daemon.cli_json(&["programs"]);
    let ours = p
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id.as_str())
        .unwrap();
    assert_eq!(ours["attachments"][0]["requested_mode"], "drv", "{ours}");
    assert!(
        daemon.log_text().contains("XDP_ABORTED a second on"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(
        daemon.metric(
            "ebpf_fallback_events_total",
            &[
                ("interface", hosts.if_a.as_str()),
                ("event", "degraded_aborting")
            ],
        ),
        Some(1.0)
    );
    wait_for("the xdp_mode_degraded alert", &daemon, || {
        daemon
            .alert_ids()
            .contains(&"xdp_mode_degraded".to_string())
    });
}
