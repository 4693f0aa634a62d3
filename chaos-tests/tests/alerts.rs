//! Every alert of the original design, caused for real, seen by `alerts` and `/metrics`, and
//! (where its condition can end) seen to clear.

use std::time::{Duration, Instant};

use chaos_tests::{Daemon, TwoHosts};

/// Polls until every alert in `ids` has been active at some point (an alert for one interval
/// of 0.5 s may come and go between two looks at it together).
fn wait_seen(daemon: &Daemon, ids: &[&str]) {
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ids.iter().all(|id| seen.contains(*id)) {
        seen.extend(daemon.alert_ids());
        assert!(
            Instant::now() < deadline,
            "{ids:?} should fire; seen: {seen:?}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_until(
    daemon: &Daemon,
    what: &str,
    mut holds: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = daemon.alert_ids();
        if holds(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}; active: {now:?}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn each_alert_fires_on_its_condition_and_clears_when_it_ends() {
    let hosts = TwoHosts::new();
    let [allowed, denied] = hosts.ips_b;
    let config = format!(
        "interface = \"{}\"\nmonitoring_interval_seconds = 0.5\nlatency_threshold_ms = 0.00001\nflow_table_size = 1024\n[programs.xdp_firewall]\nattach_mode = \"skb\"\nrules = [{{ action = \"drop\", source_ip = \"{denied}\" }}]\n",
        hosts.if_a
    );
    let daemon = Daemon::start(&hosts.a, &config);
    let id = daemon.wait_attached()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // drop_rate: more than 5% of an interval's packets dropped; and high_latency: the
    // threshold is 10 ns, which any timed packet exceeds (one in 64 is timed).
    hosts.send_udp(denied, 9, 100, 10);
    hosts.send_udp(allowed, 9, 100, 10);
    wait_seen(&daemon, &["drop_rate", "high_latency"]);
    // An interval with only allowed traffic (and nothing timed): both clear.
    hosts.send_udp(allowed, 9, 20, 10);
    wait_until(&daemon, "drop_rate and high_latency should clear", |a| {
        !a.contains(&"drop_rate".into()) && !a.contains(&"high_latency".into())
    });

    // program_load_failure and attach_failure: a refused load, a refused attach.
    std::fs::write(daemon.dir.path().join("programs/bad.o"), b"not an object").unwrap();
    assert_eq!(daemon.cli(&["load", "bad.o"]).status.code(), Some(1));
    assert_eq!(
        daemon.cli(&["attach", &id, "nosuch0"]).status.code(),
        Some(1)
    );
    wait_seen(&daemon, &["program_load_failure", "attach_failure"]);
    wait_until(
        &daemon,
        "the failure alerts should clear an interval later",
        |a| !a.contains(&"program_load_failure".into()) && !a.contains(&"attach_failure".into()),
    );

    // map_memory: the flow table over 80% full (900 flows in 1024 entries).
    let to = std::net::SocketAddrV4::new(hosts.ip_a, 9);
    hosts.b.within(|| {
        for port in 20_000..20_900u16 {
            let s = std::net::UdpSocket::bind((allowed, port)).unwrap();
            s.send_to(b"x", to).unwrap();
        }
    });
    wait_seen(&daemon, &["map_memory"]);
    assert!(daemon.log_text().contains("raise flow_table_size"));

    // They are metrics too: one series per alert, 1 while active.
    let body = hosts.a.within(|| {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", 9090)).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).unwrap();
        r
    });
    for id in [
        "high_latency",
        "program_load_failure",
        "attach_failure",
        "map_memory",
        "drop_rate",
    ] {
        assert!(
            body.contains(&format!("ebpf_alerts_active{{alert=\"{id}\"}}")),
            "{id} in:\n{body}"
        );
    }
    let human = String::from_utf8(daemon.cli(&["alerts"]).stdout).unwrap();
    assert!(
        human.contains("no active alerts") || human.contains("ALERT"),
        "{human}"
    );
}
