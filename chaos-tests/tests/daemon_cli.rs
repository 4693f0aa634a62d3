//! Integration tier: the real `x0tta6bl4-ebpfd` in a network namespace, the real
//! `x0tta6bl4-ebpf` CLI, real traffic across a veth pair. Needs root; never skips.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use chaos_tests::{Daemon, TwoHosts, kernel_has_program, kernel_linked_programs, stderr};
use serde_json::Value;

/// Config that denies `b`'s second address and loads nothing at start.
fn deny_config(hosts: &TwoHosts) -> String {
    format!(
        "interface = \"{}\"\nauto_load_programs = false\nenable_dynamic_fallback = false\n[programs.xdp_firewall]\nrules = [{{ action = \"drop\", source_ip = \"{}\" }}]\n",
        hosts.if_a, hosts.ips_b[1]
    )
}

/// Polls `stats --json` until the program has seen `processed` packets (XDP on veth runs in
/// NAPI, a moment after send() returns), then returns its counters.
fn counters_after(daemon: &Daemon, program_id: &str, processed: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = daemon.cli_json(&["stats"]);
        let row = stats
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["program_id"] == program_id)
            .cloned()
            .expect("stats has a row for the program");
        let c = row["counters"].clone();
        if c["processed_packets"].as_u64().unwrap() >= processed || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn firewall_blocks_exactly_the_denied_source(mode: &str) {
    let hosts = TwoHosts::new();
    let mut daemon = Daemon::start(&hosts.a, &deny_config(&hosts));
    let loaded = daemon.cli_json(&["load", "xdp_firewall"]);
    let id = loaded["id"].as_str().unwrap().to_string();
    let kernel_id = loaded["kernel_id"].as_u64().unwrap();
    assert_eq!(id, "xdp_firewall-1");
    let attached = daemon.cli_json(&["attach", &id, &hosts.if_a, "--mode", mode]);
    assert_eq!(attached["mode"], mode);

    let [allowed, denied] = hosts.ips_b;
    hosts.send_udp(allowed, 9999, 50, 100);
    hosts.send_udp(denied, 9999, 30, 100);
    assert_eq!(
        hosts.ping(allowed, 5),
        5,
        "pings from the allowed source are answered"
    );
    assert_eq!(
        hosts.ping(denied, 3),
        0,
        "pings from the denied source are dropped"
    );

    // Ingress on the daemon's side: 50 + 5 allowed, 30 + 3 denied, nothing else (no ARP, no IPv6).
    let c = counters_after(&daemon, &id, 88);
    assert_eq!(c["processed_packets"], 88, "{c}");
    assert_eq!(c["passed_packets"], 55, "{c}");
    assert_eq!(c["dropped_packets"], 33, "{c}");
    assert_eq!(c["dropped_by_reason"]["rule"], 33, "{c}");
    // UDP frames: 14 + 20 + 8 + 100 bytes; pings: 14 + 20 + 8 + 56.
    assert_eq!(c["dropped_bytes"], 30 * 142 + 3 * 98, "{c}");

    let status = daemon.cli_json(&["status"]);
    assert_eq!(status["blocked_packets"], 33);
    assert_eq!(status["passed_packets"], 55);
    assert_eq!(status["programs_loaded"], 1);
    assert_eq!(status["attachments"][0]["interface"], hosts.if_a.as_str());
    assert_eq!(status["attachments"][0]["mode"], mode);
    assert_eq!(status["attachments"][0]["program_type"], "xdp");
    let health = daemon.cli_json(&["health"]);
    assert_eq!(health["status"], "healthy", "{health}");

    // The human output carries the same numbers.
    let table = String::from_utf8(daemon.cli(&["stats"]).stdout).unwrap();
    assert!(table.contains("rule=33"), "{table}");

    assert!(kernel_has_program(kernel_id));
    assert!(
        kernel_linked_programs().contains(&kernel_id),
        "attached through a bpf_link"
    );
    daemon.cli_json(&["detach", &id, &hosts.if_a]);
    assert!(
        !kernel_linked_programs().contains(&kernel_id),
        "detach removes the link"
    );
    assert_eq!(
        hosts.ping(denied, 2),
        2,
        "with the firewall detached the denied source gets through"
    );
    daemon.cli_json(&["unload", &id]);
    assert!(
        !kernel_has_program(kernel_id),
        "unload removes the program from the kernel"
    );
    assert_eq!(daemon.cli_json(&["programs"]), Value::Array(vec![]));

    assert!(daemon.stop().success());
    assert!(!daemon.pin_root.exists(), "no pins of ours are left behind");
    assert!(!daemon.socket.exists(), "the socket is removed at shutdown");
}

#[test]
fn firewall_in_driver_mode_blocks_exactly_the_denied_source() {
    firewall_blocks_exactly_the_denied_source("drv");
}

#[test]
fn firewall_in_skb_mode_blocks_exactly_the_denied_source() {
    firewall_blocks_exactly_the_denied_source("skb");
}

#[test]
fn auto_load_attaches_at_start_and_shutdown_detaches_everything() {
    let hosts = TwoHosts::new();
    let config = format!(
        "interface = \"{}\"\nauto_load_programs = true\n[programs.xdp_firewall]\nattach_mode = \"skb\"\nrules = [{{ action = \"drop\", protocol = \"icmp\" }}]\n",
        hosts.if_a
    );
    let mut daemon = Daemon::start(&hosts.a, &config);
    let deadline = Instant::now() + Duration::from_secs(10);
    let programs = loop {
        let p = daemon.cli_json(&["programs"]);
        if p[0]["attachments"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            || Instant::now() > deadline
        {
            break p;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(programs[0]["id"], "xdp_firewall-1", "{programs}");
    assert_eq!(programs[0]["program_type"], "xdp");
    assert_eq!(
        programs[0]["attachments"][0]["interface"],
        hosts.if_a.as_str()
    );
    assert_eq!(programs[0]["attachments"][0]["mode"], "skb");
    assert!(programs[0]["loaded_at"].as_str().unwrap().ends_with('Z'));
    let kernel_id = programs[0]["kernel_id"].as_u64().unwrap();
    assert_eq!(
        hosts.ping(hosts.ips_b[0], 3),
        0,
        "ICMP is denied by the configured rule"
    );
    hosts.send_udp(hosts.ips_b[0], 7, 4, 10);
    let c = counters_after(&daemon, "xdp_firewall-1", 7);
    assert_eq!(
        (c["dropped_packets"].as_u64(), c["passed_packets"].as_u64()),
        (Some(3), Some(4)),
        "{c}"
    );

    assert!(daemon.stop().success(), "SIGTERM is a clean shutdown");
    assert!(
        !kernel_has_program(kernel_id),
        "shutdown detaches and unloads everything"
    );
    assert_eq!(hosts.ping(hosts.ips_b[0], 2), 2);
    let log = daemon.log_text();
    assert!(log.contains("shutting down"), "{log}");
}

#[test]
fn user_errors_get_clear_messages_and_change_nothing() {
    let hosts = TwoHosts::new();
    let daemon = Daemon::start(&hosts.a, &deny_config(&hosts));
    let id = daemon.cli_json(&["load", "xdp_firewall.o"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    daemon.cli_json(&["attach", &id, &hosts.if_a]);
    let before = daemon.cli_json(&["programs"]);

    let refused = |args: &[&str], needles: &[&str]| {
        let out = daemon.cli(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} must be refused with exit code 1"
        );
        let err = stderr(&out);
        for needle in needles {
            assert!(
                err.contains(needle),
                "{args:?}: {err:?} should mention {needle:?}"
            );
        }
        assert_eq!(err.trim().lines().count(), 1, "one line: {err:?}");
    };
    refused(
        &["attach", &id, "nosuch0"],
        &["nosuch0 does not exist", &hosts.if_a, "lo"],
    );
    refused(
        &["detach", "xdp_firewall-9", &hosts.if_a],
        &["not attached"],
    );
    refused(&["unload", "xdp_firewall-9"], &["xdp_firewall-9", &id]);
    refused(
        &["attach", "nope-1", &hosts.if_a],
        &["no program with id", &id],
    );
    refused(&["load", "../../etc/passwd"], &["leaves programs_dir"]);
    refused(
        &["load", "missing.o"],
        &["no program \"missing.o\"", "xdp_firewall (built-in)"],
    );
    std::fs::write(
        daemon.dir.path().join("programs/garbage.o"),
        b"this is not an object file",
    )
    .unwrap();
    refused(&["load", "garbage.o"], &["not an ELF object"]);
    std::fs::copy("/bin/true", daemon.dir.path().join("programs/host.o")).unwrap();
    refused(&["load", "host"], &["machine type 62", "not BPF"]);
    refused(
        &["attach", &id, "lo", "--mode", "drv"],
        &["no native XDP", "--mode skb"],
    );
    refused(&["attach", &id, &hosts.if_a], &["already attached"]);
    let second = daemon.cli_json(&["load", "xdp_firewall"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    refused(
        &["attach", &second, &hosts.if_a],
        &["already has", &id, "detach it first"],
    );
    let hw = daemon.cli_json(&["load", "xdp_firewall", "--mode", "hw"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    refused(&["attach", &hw, "lo"], &["cannot offload", "--mode skb"]);

    // A program this daemon does not manage: another daemon's, on a fresh pair.
    let other_hosts = TwoHosts::new();
    let mut other = Daemon::start(&other_hosts.a, "auto_load_programs = false\n");
    let other_id = other.cli_json(&["load", "xdp_firewall"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    other.cli_json(&["attach", &other_id, &other_hosts.if_a, "--mode", "skb"]);
    // That manager dies, leaving its pinned link attached. (A live one would attach again the
    // moment --force detaches it, and two managers that both insist have no winner.)
    other.kill();
    let foreign = Daemon::start(&other_hosts.a, "auto_load_programs = false\n");
    let fid = foreign.cli_json(&["load", "xdp_firewall"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = foreign.cli(&["attach", &fid, &other_hosts.if_a, "--mode", "skb"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("(xdp_firewall, skb mode) that this daemon does not manage")
            && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    // --force takes it off the interface (BPF_LINK_DETACH on the other manager's link).
    let forced = foreign.cli_json(&[
        "attach",
        &fid,
        &other_hosts.if_a,
        "--mode",
        "skb",
        "--force",
    ]);
    assert_eq!(forced["program_id"], fid.as_str(), "{forced}");
    assert!(
        foreign
            .log_text()
            .contains("replaced an XDP program this daemon did not manage"),
        "{}",
        foreign.log_text()
    );

    // Usage errors exit 2.
    assert_eq!(daemon.cli(&["attach", &id]).status.code(), Some(2));
    assert_eq!(
        daemon
            .cli(&["attach", &id, "lo", "--mode", "turbo"])
            .status
            .code(),
        Some(2)
    );

    // Refusals changed nothing but the programs loaded on purpose.
    let after = daemon.cli_json(&["programs"]);
    assert_eq!(after[0], before[0]);
    assert_eq!(after.as_array().unwrap().len(), 3);
    let health = daemon.cli_json(&["health"]);
    assert_eq!(health["status"], "healthy", "{health}");
}

fn raw_exchange(socket: &std::path::Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply
}

#[test]
fn bad_frames_get_errors_and_the_daemon_goes_on() {
    let hosts = TwoHosts::new();
    let daemon = Daemon::start(&hosts.a, "auto_load_programs = false\n");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o660,
        "the control socket is rw for owner and group only"
    );
    let decode = |reply: &[u8]| -> actors::api::Response {
        assert!(reply.len() > 5, "an error response, not silence: {reply:?}");
        actors::api::decode_body(&reply[4..]).expect("the reply is a frame")
    };
    let is_protocol_error = |r: actors::api::Response, needle: &str| match r {
        actors::api::Response::Error(e) => {
            assert_eq!(e.kind, actors::api::ErrorKind::Protocol);
            assert!(
                e.message.contains(needle),
                "{} should mention {needle}",
                e.message
            );
        }
        other => panic!("expected a protocol error, got {other:?}"),
    };
    // Oversized length prefix: refused before any of it is read.
    let reply = raw_exchange(&daemon.socket, &(64u32 << 20).to_be_bytes());
    is_protocol_error(decode(&reply), "larger than");
    // Unknown version.
    let mut frame = actors::api::encode_frame(&actors::api::Request::Status).unwrap();
    frame[4] = 0xee;
    is_protocol_error(decode(&raw_exchange(&daemon.socket, &frame)), "version 238");
    // Garbage payload in a well-formed frame.
    let mut garbage = 6u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[actors::api::PROTOCOL_VERSION, 0xff, 0xfe, 0xfd, 0xfc, 0xfb]);
    is_protocol_error(
        decode(&raw_exchange(&daemon.socket, &garbage)),
        "undecodable",
    );
    // A client that connects and leaves at once.
    drop(UnixStream::connect(&daemon.socket).unwrap());

    let status = daemon.cli_json(&["status"]);
    assert_eq!(status["programs_loaded"], 0);
}

#[test]
fn one_daemon_per_socket_and_stale_sockets_are_replaced() {
    let hosts = TwoHosts::new();
    let first = Daemon::start(&hosts.a, "auto_load_programs = false\n");
    // A second daemon on the same socket must refuse and leave the first one serving.
    let config = first.dir.path().join("ebpf.toml");
    let out = hosts
        .a
        .command(chaos_tests::binary("x0tta6bl4-ebpfd").to_str().unwrap())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already serving"), "{}", stderr(&out));
    first.cli_json(&["status"]);

    // A socket file nobody listens on (a killed daemon's) is replaced.
    let stale_dir = tempfile::tempdir().unwrap();
    let stale = stale_dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let mut second = Daemon::start(&hosts.a, "auto_load_programs = false\n");
    // Restart `second` on the stale path by hand, through its CLI flag.
    second.stop();
    let out = hosts
        .a
        .command(chaos_tests::binary("x0tta6bl4-ebpfd").to_str().unwrap())
        .arg("--config")
        .arg(second.dir.path().join("ebpf.toml"))
        .arg("--socket")
        .arg(&stale)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let mut child = hosts
        .a
        .command(chaos_tests::binary("x0tta6bl4-ebpfd").to_str().unwrap())
        .arg("--config")
        .arg(second.dir.path().join("ebpf.toml"))
        .arg("--socket")
        .arg(&stale)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while UnixStream::connect(&stale).is_err() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not take over the stale socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    assert!(child.wait().unwrap().success());
    assert!(!stale.exists(), "the socket is removed at shutdown");
}

#[test]
fn cli_without_a_daemon_says_where_it_looked_and_what_to_do() {
    let out = std::process::Command::new(chaos_tests::binary("x0tta6bl4-ebpf"))
        .args(["--socket", "/nonexistent/x0tta6bl4.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/x0tta6bl4.sock"), "{err}");
    assert!(err.contains("no such socket"), "{err}");
    assert!(err.contains("x0tta6bl4-ebpfd"), "{err}");
}

#[test]
fn config_errors_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    let check = |text: &str| {
        std::fs::write(&config, text).unwrap();
        std::process::Command::new(chaos_tests::binary("x0tta6bl4-ebpfd"))
            .arg("--config")
            .arg(&config)
            .arg("--check-config")
            .output()
            .unwrap()
    };
    let out = check("interface = \"eth0\"\nmonitoring_interval = 5\n");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("monitoring_interval") && err.contains("bad.toml"),
        "{err}"
    );
    let out = check("prometheus_port = 9100\n");
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn an_object_from_programs_dir_loads_and_attaches_like_a_built_in() {
    let hosts = TwoHosts::new();
    let daemon = Daemon::start(&hosts.a, "auto_load_programs = false\n");
    // Any libbpf-style XDP object will do; the firewall's own ELF is one at hand.
    std::fs::write(
        daemon.dir.path().join("programs/edge_fw.o"),
        actors::builtin::XDP_FIREWALL,
    )
    .unwrap();
    let loaded = daemon.cli_json(&["load", "edge_fw", "--mode", "skb"]);
    assert_eq!(loaded["id"], "edge_fw-1");
    assert_eq!(loaded["name"], "xdp_firewall");
    assert_eq!(loaded["default_mode"], "skb");
    assert!(
        loaded["source"]
            .as_str()
            .unwrap()
            .ends_with("programs/edge_fw.o"),
        "{loaded}"
    );
    let again = daemon.cli_json(&["load", "edge_fw.o"]);
    assert_eq!(again["id"], "edge_fw-2", "ids count up per name");
    let attached = daemon.cli_json(&["attach", "edge_fw-1", &hosts.if_a]);
    assert_eq!(attached["mode"], "skb", "the default mode given at load");
    hosts.send_udp(hosts.ips_b[0], 4000, 5, 10);
    let c = counters_after(&daemon, "edge_fw-1", 5);
    assert_eq!(c["processed_packets"], 5, "{c}");
    // An absolute path is fine inside programs_dir, refused outside it.
    let inside = daemon.dir.path().join("programs/edge_fw.o");
    assert_eq!(
        daemon.cli_json(&["load", inside.to_str().unwrap()])["id"],
        "edge_fw-3"
    );
    let outside = daemon.dir.path().join("outside.o");
    std::fs::write(&outside, actors::builtin::XDP_FIREWALL).unwrap();
    let out = daemon.cli(&["load", outside.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("outside programs_dir"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_daemon_refuses_to_start_without_privileges_and_says_how() {
    let hosts = TwoHosts::new();
    let dir = tempfile::tempdir().unwrap();
    let out = hosts
        .a
        .command("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(chaos_tests::binary("x0tta6bl4-ebpfd"))
        .args(["--auto-load-programs", "false", "--socket"])
        .arg(dir.path().join("s.sock"))
        .arg("--log-file")
        .arg(dir.path().join("log"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("needs root") && err.contains("CAP_BPF") && err.contains("sudo"),
        "{err}"
    );
}

#[test]
fn completions_need_no_daemon() {
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(chaos_tests::binary("x0tta6bl4-ebpf"))
            .args(["--socket", "/nonexistent.sock", "completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("x0tta6bl4-ebpf") && script.contains("attach"),
            "{shell}"
        );
    }
}

#[test]
fn a_failed_attach_at_start_is_reported_by_health_and_leaves_nothing_loaded() {
    let hosts = TwoHosts::new();
    // lo has no native XDP: the configured drv attach fails at start.
    let daemon = Daemon::start(
        &hosts.a,
        "interface = \"lo\"\nauto_load_programs = true\nenable_dynamic_fallback = false\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let h = daemon.cli_json(&["health"]);
        if h["status"] != "healthy" || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(health["status"], "unhealthy", "{health}");
    let message = health["checks"]["programs"]["message"].as_str().unwrap();
    assert!(
        message.contains("no native XDP") && message.contains("attach_mode = \"skb\""),
        "{message}"
    );
    assert_eq!(daemon.cli_json(&["programs"]), Value::Array(vec![]));
    assert_eq!(daemon.cli_json(&["status"])["programs_loaded"], 0);
}

#[test]
fn a_refused_driver_mode_degrades_to_skb_visibly() {
    let hosts = TwoHosts::new();
    // enable_dynamic_fallback is on by default, as in the original design.
    let daemon = Daemon::start(&hosts.a, "auto_load_programs = false\n");
    let id = daemon.cli_json(&["load", "xdp_firewall"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = daemon.cli(&["attach", &id, "lo", "--mode", "drv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.contains("in skb mode") && said.contains("drv mode was requested"),
        "{said}"
    );
    let status = daemon.cli_json(&["status"]);
    assert_eq!(status["attachments"][0]["mode"], "skb");
    assert_eq!(status["attachments"][0]["requested_mode"], "drv");
    let programs = daemon.cli_json(&["programs"]);
    assert_eq!(programs[0]["attachments"][0]["requested_mode"], "drv");
    let health = daemon.cli_json(&["health"]);
    assert_eq!(health["status"], "degraded", "{health}");
    let message = health["checks"]["attachments"]["message"].as_str().unwrap();
    assert!(
        message.contains("xdp_mode_degraded") && message.contains("lo"),
        "{message}"
    );
    assert!(daemon.log_text().contains("degrading to skb mode"));
    // A veth has native XDP: no degrade there.
    let second = daemon.cli_json(&["load", "xdp_firewall"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let on_veth = daemon.cli_json(&["attach", &second, &hosts.if_a, "--mode", "drv"]);
    assert_eq!(
        (on_veth["mode"].as_str(), on_veth["requested_mode"].as_str()),
        (Some("drv"), Some("drv"))
    );
}

/// The XDP program `bpftool net show` reports on `interface` in `ns`.
fn xdp_program_on(ns: &chaos_tests::NetNs, interface: &str) -> Option<u64> {
    let out = ns.exec(&["bpftool", "-j", "net", "show", "dev", interface]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v[0]["xdp"][0]["id"].as_u64()
}

#[test]
fn a_foreign_xdp_program_is_a_conflict_unless_forced() {
    let hosts = TwoHosts::new();
    let daemon = Daemon::start(&hosts.a, "auto_load_programs = false\n");
    // Attached the old way (netlink), as `ip link` and libxdp do.
    let attached =
        chaos_tests::attach_foreign_xdp(&hosts.a, &hosts.if_a, actors::builtin::XDP_PASS);
    let theirs = xdp_program_on(&hosts.a, &hosts.if_a).expect("xdp_pass attached");
    assert_eq!(theirs, attached);

    let loaded = daemon.cli_json(&["load", "xdp_firewall"]);
    let id = loaded["id"].as_str().unwrap();
    let ours = loaded["kernel_id"].as_u64().unwrap();
    let out = daemon.cli(&["attach", id, &hosts.if_a, "--mode", "skb"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let message = stderr(&out);
    assert!(
        message.contains(&format!(
            "runs XDP program id {theirs} (xdp_pass, skb mode) that this daemon does not manage"
        )) && message.contains("attach with --force"),
        "{message}"
    );
    assert_eq!(
        xdp_program_on(&hosts.a, &hosts.if_a),
        Some(theirs),
        "left alone"
    );

    let forced = daemon.cli_json(&["attach", id, &hosts.if_a, "--mode", "skb", "--force"]);
    assert_eq!(forced["mode"], "skb", "{forced}");
    assert_eq!(
        xdp_program_on(&hosts.a, &hosts.if_a),
        Some(ours),
        "replaced"
    );
    let log = daemon.log_text();
    assert!(
        log.lines().any(
            |l| l.contains("replaced an XDP program this daemon did not manage")
                && l.contains(&theirs.to_string())
                && l.contains("xdp_pass")
        ),
        "{log}"
    );
    // Ours from then on: the firewall works and health is clean.
    assert_eq!(hosts.ping(hosts.ips_b[0], 2), 2);
    assert_eq!(daemon.cli_json(&["health"])["status"], "healthy");
}
