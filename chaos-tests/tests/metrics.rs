//! `/metrics` and `/health` of the real daemon, scraped over TCP inside its namespace.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use chaos_tests::{Daemon, NetNs, TwoHosts};

/// One HTTP GET inside `ns`: (status line, body).
fn get(ns: &NetNs, port: u16, path: &str) -> (String, String) {
    ns.within(|| {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        (
            head.lines().next().unwrap_or("").to_string(),
            body.to_string(),
        )
    })
}

#[test]
fn metrics_carry_the_kernel_counters_and_pass_promtool() {
    let hosts = TwoHosts::new();
    let [allowed, denied] = hosts.ips_b;
    let config = format!(
        "interface = \"{}\"\nprometheus_port = 9464\nmetrics_bind_address = \"127.0.0.1\"\n[programs.xdp_firewall]\nattach_mode = \"skb\"\nrules = [{{ action = \"drop\", source_ip = \"{denied}\" }}]\n",
        hosts.if_a
    );
    let daemon = Daemon::start(&hosts.a, &config);
    daemon.wait_attached();
    hosts.send_udp(denied, 53, 12, 20);
    hosts.send_udp(allowed, 53, 5, 20);
    let dropped = format!(
        "ebpf_packets_dropped_total{{interface=\"{}\",program=\"xdp_firewall-1\",reason=\"rule\"}} 12",
        hosts.if_a
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let (status, body) = loop {
        let (status, body) = get(&hosts.a, 9464, "/metrics");
        if body.contains(&dropped) || Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, "HTTP/1.1 200 OK");
    for expected in [
        "ebpf_programs_loaded 1".to_string(),
        dropped,
        format!(
            "ebpf_packets_processed_total{{interface=\"{}\",program=\"xdp_firewall-1\"}} 17",
            hosts.if_a
        ),
        "ebpf_flows_active{program=\"xdp_firewall-1\"} 2".to_string(),
        "ebpf_flows_lost_total{program=\"xdp_firewall-1\"} 0".to_string(),
        format!(
            "ebpf_attach_mode{{interface=\"{}\",program=\"xdp_firewall-1\",mode=\"skb\",requested_mode=\"skb\"}} 1",
            hosts.if_a
        ),
        "# TYPE ebpf_latency_microseconds histogram".to_string(),
        "ebpf_latency_microseconds_bucket{program=\"xdp_firewall-1\",le=\"+Inf\"}".to_string(),
        "ebpf_supervisor_restarts_total{actor=\"attach_actor\"} 0".to_string(),
    ] {
        assert!(body.contains(&expected), "missing {expected:?} in:\n{body}");
    }

    // promtool parses it (exit 1 would be a format error). Its linter's one remark is the
    // original design's metric name, which carries a unit other than seconds.
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let findings =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0) | Some(3)),
        "promtool: {findings}"
    );
    for line in findings.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.contains("ebpf_latency_microseconds use base unit"),
            "unexpected promtool finding: {line}"
        );
    }

    let (status, health) = get(&hosts.a, 9464, "/health");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "healthy", "{health}");
    assert!(health["checks"]["attachments"].is_object());
    let (status, _) = get(&hosts.a, 9464, "/nope");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn a_taken_metrics_port_is_reported_not_fatal() {
    let hosts = TwoHosts::new();
    let blocker = hosts
        .a
        .within(|| std::net::TcpListener::bind(("127.0.0.1", 9466)).unwrap());
    let daemon = Daemon::start(
        &hosts.a,
        "auto_load_programs = false\nprometheus_port = 9466\nmetrics_bind_address = \"127.0.0.1\"\n",
    );
    let health = daemon.cli_json(&["health"]);
    assert_eq!(health["status"], "degraded", "{health}");
    let message = health["checks"]["metrics"]["message"].as_str().unwrap();
    assert!(
        message.contains("9466") && message.contains("prometheus_port"),
        "{message}"
    );
    drop(blocker);
}
