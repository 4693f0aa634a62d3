//! `x0tta6bl4-ebpf rules …` through the real daemon, on real traffic.

use std::time::{Duration, Instant};

use chaos_tests::{Daemon, TwoHosts};
use serde_json::Value;

fn dropped_by_rules(daemon: &Daemon, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = daemon.cli_json(&["stats"]);
        let n = stats[0]["counters"]["dropped_by_reason"]["rule"]
            .as_u64()
            .unwrap();
        if n >= at_least || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rules_change_live_traffic_explain_themselves_and_survive_a_restart() {
    let hosts = TwoHosts::new();
    let config = format!(
        "interface = \"{}\"\nauto_load_programs = true\n[programs.xdp_firewall]\nattach_mode = \"skb\"\n",
        hosts.if_a
    );
    let mut daemon = Daemon::start(&hosts.a, &config);
    daemon.wait_attached();
    let [allowed, denied] = hosts.ips_b;
    let (allowed_s, denied_s, a_s) = (
        allowed.to_string(),
        denied.to_string(),
        hosts.ip_a.to_string(),
    );

    assert_eq!(
        daemon.cli_json(&["rules", "list"])["rules"],
        Value::Array(vec![])
    );
    hosts.send_udp(denied, 9999, 5, 10);
    assert_eq!(
        dropped_by_rules(&daemon, 0),
        0,
        "no rules: nothing dropped by a rule"
    );

    // A rule added at run time is in force for the next packet.
    let set = daemon.cli_json(&["rules", "add", "--action", "drop", "--src", &denied_s]);
    assert_eq!(set["rules"].as_array().unwrap().len(), 1);
    hosts.send_udp(denied, 9999, 7, 10);
    hosts.send_udp(allowed, 9999, 4, 10);
    assert_eq!(dropped_by_rules(&daemon, 7), 7);

    // Insert a broader rule in front; explain says which one decides and which also match.
    daemon.cli_json(&[
        "rules",
        "add",
        "--action",
        "drop",
        "--protocol",
        "udp",
        "--dport",
        "9000-9999",
        "--position",
        "1",
    ]);
    let explained = daemon.cli_json(&[
        "rules",
        "explain",
        "--src",
        &denied_s,
        "--dst",
        &a_s,
        "--protocol",
        "udp",
        "--sport",
        "5",
        "--dport",
        "9999",
    ]);
    assert_eq!(explained["action"], "drop");
    assert_eq!(explained["rule_number"], 1);
    assert_eq!(explained["also_matching"], serde_json::json!([2]));
    let human = daemon.cli(&[
        "rules",
        "explain",
        "--src",
        &allowed_s,
        "--dst",
        &a_s,
        "--protocol",
        "tcp",
        "--dport",
        "22",
    ]);
    let human = String::from_utf8(human.stdout).unwrap();
    assert_eq!(
        human.trim(),
        "allow: no rule matches; the default policy is allow"
    );
    // One flow (a fixed source port) under this rule set and the next: its verdict, cached
    // by each CPU, must not outlive the rule set it was reached under.
    hosts.send_udp_from_port(allowed, 40002, 9500, 3, 10);
    assert_eq!(
        dropped_by_rules(&daemon, 10),
        10,
        "the range rule drops the allowed source's UDP too"
    );

    // Delete it again: the allowed source gets through.
    daemon.cli_json(&["rules", "del", "1"]);
    hosts.send_udp_from_port(allowed, 40002, 9500, 3, 10);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(dropped_by_rules(&daemon, 10), 10);

    // Replace the whole set from a file in the original design's format.
    let file = daemon.dir.path().join("rules.json");
    std::fs::write(
        &file,
        format!(
            r#"{{"xdp_firewall": {{"type": "xdp", "rules": [{{"action": "drop", "source_ip": "{allowed_s}"}}, {{"action": "allow", "protocol": "tcp", "port": 443}}]}}}}"#
        ),
    )
    .unwrap();
    let applied = daemon.cli_json(&["rules", "apply", file.to_str().unwrap()]);
    assert_eq!(applied["rules"][0]["source_ip"], allowed_s.as_str());
    assert_eq!(applied["rules"][1]["port"], 443);
    hosts.send_udp(allowed, 1234, 2, 10);
    hosts.send_udp(denied, 1234, 2, 10);
    assert_eq!(
        dropped_by_rules(&daemon, 12),
        12,
        "now the other source is the denied one"
    );

    // Refusals change nothing.
    let before = daemon.cli_json(&["rules", "list"]);
    let out = daemon.cli(&["rules", "del", "9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no rule #9"));
    let out = daemon.cli(&[
        "rules", "add", "--action", "drop", "--src", "10.0.0.1", "--dst", "fd00::1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("different IP versions"));
    let out = daemon.cli(&["rules", "apply", "/nonexistent/rules.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/rules.json"));
    assert_eq!(daemon.cli_json(&["rules", "list"]), before);

    // The rule set is saved in the state dir and comes back after a restart.
    daemon.restart(&hosts.a);
    daemon.wait_attached();
    assert_eq!(daemon.cli_json(&["rules", "list"]), before);
    hosts.send_udp(allowed, 1234, 3, 10);
    assert_eq!(
        dropped_by_rules(&daemon, 3),
        3,
        "restored rules are enforced by the new program"
    );
    let saved =
        std::fs::read_to_string(daemon.dir.path().join("state/firewall-rules.json")).unwrap();
    assert!(saved.contains(&allowed_s), "{saved}");
}

#[test]
fn a_rule_set_larger_than_one_frame_is_applied_in_one_step() {
    let hosts = TwoHosts::new();
    let config = format!(
        "interface = \"{}\"\nauto_load_programs = true\n[programs.xdp_firewall]\nattach_mode = \"skb\"\n",
        hosts.if_a
    );
    let daemon = Daemon::start(&hosts.a, &config);
    daemon.wait_attached();
    // 9,999 rules that match nothing here, then the one that matters, in the last chunk.
    let mut rules: Vec<String> = (0..9_999)
        .map(|i| {
            format!(
                r#"{{"action":"drop","source_ip":"10.200.{}.{}"}}"#,
                i / 256,
                i % 256
            )
        })
        .collect();
    rules.push(format!(
        r#"{{"action":"drop","source_ip":"{}"}}"#,
        hosts.ips_b[1]
    ));
    let file = daemon.dir.path().join("big.json");
    std::fs::write(&file, format!("[{}]", rules.join(","))).unwrap();
    let applied = daemon.cli_json(&["rules", "apply", file.to_str().unwrap()]);
    assert_eq!(applied["rules"].as_array().unwrap().len(), 10_000);
    hosts.send_udp(hosts.ips_b[1], 9, 4, 10);
    hosts.send_udp(hosts.ips_b[0], 9, 4, 10);
    assert_eq!(dropped_by_rules(&daemon, 4), 4);
    let explained = daemon.cli_json(&[
        "rules",
        "explain",
        "--src",
        &hosts.ips_b[1].to_string(),
        "--dst",
        &hosts.ip_a.to_string(),
        "--protocol",
        "udp",
    ]);
    assert_eq!(explained["rule_number"], 10_000);
}
