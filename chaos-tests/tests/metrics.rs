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
        "ebpf_supervisor_restarts_total{actor=\"LoaderActor\"} 0".to_string(),
    ] {
        assert!(body.contains(&expected), "missing {expected:?} in:\n{body}");
    }

    // Map memory, one series per map: the kernel's figures, the same ones bpftool prints. The
    // kernel keeps 15 bytes of a map's name; the metric names the map as the object does.
    let kernel_id = daemon.cli_json(&["programs"])[0]["kernel_id"]
        .as_u64()
        .unwrap();
    let kernel_maps = chaos_tests::kernel_map_memlock_of(kernel_id);
    assert!(kernel_maps.len() >= 5, "{kernel_maps:?}");
    let served: Vec<(String, u64)> = body
        .lines()
        .filter_map(|l| l.strip_prefix("ebpf_memory_usage_bytes{"))
        .filter_map(|l| {
            let (labels, value) = l.split_once("} ")?;
            assert!(
                labels.starts_with("program=\"xdp_firewall-1\",map=\""),
                "{l}"
            );
            let map = labels.split("map=\"").nth(1)?.trim_end_matches('"');
            Some((map.to_string(), value.parse().ok()?))
        })
        .collect();
    assert_eq!(
        served.len(),
        kernel_maps.len(),
        "{served:?} vs bpftool {kernel_maps:?}"
    );
    for (name, bytes) in &kernel_maps {
        assert!(
            served
                .iter()
                .any(|(map, b)| b == bytes && (map == name || map.starts_with(name.as_str()))),
            "bpftool's map {name} ({bytes} B) is not in {served:?}"
        );
    }
    let names: std::collections::BTreeSet<&str> = served.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(names.len(), served.len(), "one series per map: {served:?}");
    for map in ["FW_FLOWS4", "FW_SRC_V4_EXACT_0", "FW_SRC_V4_EXACT_1"] {
        assert!(
            served.iter().filter(|(m, b)| m == map && *b > 0).count() == 1,
            "{map} once in {served:?}"
        );
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

    // The same values from the CLI, printed and exported.
    let human = String::from_utf8(daemon.cli(&["metrics"]).stdout).unwrap();
    assert!(
        human.contains("ebpf_programs_loaded") && human.contains("reason=rule"),
        "{human}"
    );
    let json_file = daemon.dir.path().join("metrics.json");
    let out = daemon.cli(&["metrics", "--export", json_file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_file).unwrap()).unwrap();
    let loaded = snapshot["samples"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ebpf_programs_loaded")
        .expect("ebpf_programs_loaded in the export");
    assert_eq!(loaded["value"], 1.0);
    let text_file = daemon.dir.path().join("metrics.prom");
    let out = daemon.cli(&[
        "metrics",
        "--export",
        text_file.to_str().unwrap(),
        "--format",
        "prometheus",
    ]);
    assert!(out.status.success());
    let text = std::fs::read_to_string(&text_file).unwrap();
    assert!(
        text.contains("# TYPE ebpf_packets_dropped_total counter"),
        "{text}"
    );

    let (status, health) = get(&hosts.a, 9464, "/health");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "healthy", "{health}");
    assert!(health["checks"]["attachments"].is_object());
    let (status, _) = get(&hosts.a, 9464, "/nope");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}

#[test]
fn a_taken_metrics_port_is_reported_not_fatal_and_a_restarted_metrics_actor_binds_it() {
    let hosts = TwoHosts::new();
    let blocker = hosts
        .a
        .within(|| std::net::TcpListener::bind(("127.0.0.1", 9466)).unwrap());
    let daemon = Daemon::start_with_flags(
        &hosts.a,
        "auto_load_programs = false\nprometheus_port = 9466\nmetrics_bind_address = \"127.0.0.1\"\n",
        &["--enable-fault-injection"],
    );
    let health = daemon.cli_json(&["health"]);
    assert_eq!(health["status"], "degraded", "{health}");
    let message = health["checks"]["metrics"]["message"].as_str().unwrap();
    assert!(
        message.contains("9466") && message.contains("prometheus_port"),
        "{message}"
    );
    drop(blocker);

    // The MetricsActor dies; its supervisor starts it again, and it binds the port, free now.
    daemon.cli_json(&["debug", "crash", "metrics"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tree = daemon.cli_json(&["supervisor"]);
        let node = tree
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "MetricsActor")
            .cloned()
            .unwrap();
        if node["restarts"] == 1 && node["state"] == "running" {
            assert!(
                node["last_failure"]
                    .as_str()
                    .unwrap()
                    .contains("fault injected into MetricsActor"),
                "{node}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{tree:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = get(&hosts.a, 9466, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("ebpf_programs_loaded"), "{body}");
    let health = daemon.cli_json(&["health"]);
    assert!(health["checks"].get("metrics").is_none(), "{health}");
}

/// A Prometheus server, started by the test inside a namespace on loopback with a temporary
/// config and storage; killed (and its files removed) on drop.
struct PrometheusServer {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_prometheus(ns: &NetNs, target: u16, port: u16) -> PrometheusServer {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: x0tta6bl4\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        ),
    )
    .unwrap();
    let child = ns
        .command("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus; `cargo xtask setup` installs it)");
    PrometheusServer { child, _dir: dir }
}

#[test]
fn a_real_prometheus_scrapes_the_daemon_and_promql_returns_the_drops() {
    let hosts = TwoHosts::new();
    let denied = hosts.ips_b[1];
    let config = format!(
        "interface = \"{}\"\nprometheus_port = 9467\nmetrics_bind_address = \"127.0.0.1\"\n[programs.xdp_firewall]\nattach_mode = \"skb\"\nrules = [{{ action = \"drop\", source_ip = \"{denied}\" }}]\n",
        hosts.if_a
    );
    let daemon = Daemon::start(&hosts.a, &config);
    daemon.wait_attached();
    hosts.send_udp(denied, 53, 21, 20);
    let _prometheus = start_prometheus(&hosts.a, 9467, 9468);
    let query =
        "GET /api/v1/query?query=sum(ebpf_packets_dropped_total%7Breason%3D%22rule%22%7D) HTTP/1.0";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = hosts.a.within(|| -> Option<String> {
            let mut s = TcpStream::connect(("127.0.0.1", 9468)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(s, "{query}\r\nHost: localhost\r\nConnection: close\r\n\r\n").ok()?;
            let mut response = String::new();
            s.read_to_string(&mut response).ok()?;
            Some(response.split_once("\r\n\r\n")?.1.to_string())
        });
        if let Some(body) = answer
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(
                body.trim_start_matches(|c: char| c.is_ascii_hexdigit() || c.is_whitespace()),
            )
            && let Some(value) = v["data"]["result"][0]["value"][1].as_str()
        {
            assert_eq!(
                value, "21",
                "PromQL sees the 21 packets the test had dropped: {v}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the daemon within 30s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
