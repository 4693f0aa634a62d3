//! State that survives the daemon: a SIGKILLed daemon leaves the firewall dropping what it
//! should, and the next one adopts the pinned link (no detach, no packet gap) with the same
//! program id, counters that carry on, the same rules and the same flows.

use std::time::{Duration, Instant};

use chaos_tests::{Daemon, TwoHosts, kernel_has_program, kernel_links_of};
use serde_json::Value;

fn counters(daemon: &Daemon) -> Value {
    daemon.cli_json(&["stats"])[0]["counters"].clone()
}

fn wait_counters(daemon: &Daemon, dropped: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = counters(daemon);
        if c["dropped_packets"].as_u64() >= Some(dropped) || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_daemon_leaves_the_firewall_working_and_the_next_one_adopts_it() {
    let hosts = TwoHosts::new();
    let [allowed, denied] = hosts.ips_b;
    let config = format!(
        "interface = \"{}\"\nauto_load_programs = true\n[programs.xdp_firewall]\nattach_mode = \"drv\"\nrules = [{{ action = \"drop\", source_ip = \"{denied}\" }}]\n",
        hosts.if_a
    );
    let mut daemon = Daemon::start(&hosts.a, &config);
    let before = daemon.wait_attached();
    let kernel_id = before[0]["kernel_id"].as_u64().unwrap();
    let links = kernel_links_of(kernel_id);
    assert_eq!(links.len(), 1, "one bpf_link");
    daemon.cli_json(&[
        "rules",
        "add",
        "--action",
        "drop",
        "--protocol",
        "udp",
        "--dport",
        "9",
    ]);
    let rules = daemon.cli_json(&["rules", "list"]);
    hosts.send_udp(denied, 7000, 10, 50);
    hosts.send_udp(allowed, 7000, 4, 50);
    assert_eq!(wait_counters(&daemon, 10)["dropped_packets"], 10);

    // The daemon dies. The firewall does not.
    daemon.kill();
    hosts.send_udp(denied, 7000, 20, 50);
    assert_eq!(
        hosts.ping(denied, 3),
        0,
        "the denied source is still dropped with the daemon dead"
    );
    assert_eq!(
        hosts.ping(allowed, 2),
        2,
        "and the allowed one still passes"
    );
    assert_eq!(
        kernel_links_of(kernel_id),
        links,
        "the link outlived the daemon"
    );

    // Meanwhile: pins of ours that no saved program owns, and another tool's XDP program on
    // another interface.
    let orphan = daemon.pin_root.join("xdp_firewall-9");
    std::fs::create_dir_all(&orphan).unwrap();
    // Not named like a program id: not a program's leftover, not swept.
    let not_ours = daemon.pin_root.join("someone-elses");
    std::fs::create_dir_all(&not_ours).unwrap();
    chaos_tests::run(std::process::Command::new("bpftool").args([
        "map",
        "create",
        orphan.join("FW_STATS").to_str().unwrap(),
        "type",
        "array",
        "key",
        "4",
        "value",
        "8",
        "entries",
        "1",
        "name",
        "orphan",
    ]));
    hosts.a.exec(&[
        "ip", "link", "add", "fx0", "type", "veth", "peer", "name", "fx1",
    ]);
    chaos_tests::attach_foreign_xdp(&hosts.a, "fx0", actors::builtin::XDP_PASS);

    // The next daemon adopts what it finds: same id, same link, counters carry on.
    daemon.start_again(&hosts.a);
    let after = daemon.wait_attached();
    // And says what it did.
    let status = daemon.cli_json(&["status"]);
    let steps: Vec<(String, String)> = status["reconciliation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["kind"].as_str().unwrap().to_string(),
                r["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let has = |kind: &str, text: &str| steps.iter().any(|(k, d)| k == kind && d.contains(text));
    assert!(
        has("adopted", "xdp_firewall-1: loaded again")
            && has("adopted", "pinned maps; counters, flows and rules carry on")
            && has(
                "adopted",
                &format!("xdp_firewall-1 on {}: its pinned link", hosts.if_a)
            )
            && has("removed", "xdp_firewall-9: pinned under")
            && has("foreign", "fx0 runs XDP program id")
            && has("foreign", "(xdp_pass, skb mode)"),
        "{steps:#?}"
    );
    assert!(!orphan.exists(), "the orphan pins are gone");
    assert!(
        not_ours.exists(),
        "a directory not named like a program id is left alone"
    );
    assert!(!has("removed", "someone-elses"), "{steps:#?}");
    let human = String::from_utf8(daemon.cli(&["status"]).stdout).unwrap();
    assert!(human.contains("reconciliation"), "{human}");
    assert_eq!(after[0]["id"], before[0]["id"], "the same program id");
    assert_eq!(after[0]["attachments"], before[0]["attachments"]);
    let new_kernel_id = after[0]["kernel_id"].as_u64().unwrap();
    assert_eq!(
        kernel_links_of(new_kernel_id),
        links,
        "the same bpf_link, now running the new program"
    );
    assert!(
        !kernel_has_program(kernel_id),
        "the old program is gone once nothing holds it"
    );
    let c = wait_counters(&daemon, 33);
    assert_eq!(
        c["dropped_packets"],
        10 + 20 + 3,
        "drops while the daemon was dead were counted: {c}"
    );
    assert_eq!(c["passed_packets"], 4 + 2, "{c}");
    assert_eq!(daemon.cli_json(&["rules", "list"]), rules, "the same rules");
    let flows = daemon.cli_json(&[
        "flows",
        "--source",
        &denied.to_string(),
        "--protocol",
        "udp",
    ]);
    let udp: u64 = flows
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["packets"].as_u64().unwrap())
        .sum();
    assert_eq!(
        udp, 30,
        "the flows from before the crash are still there: {flows:#}"
    );
    hosts.send_udp(denied, 7000, 5, 50);
    assert_eq!(
        wait_counters(&daemon, 38)["dropped_packets"],
        38,
        "and the new program counts on"
    );
    assert!(
        daemon.log_text().contains("adopted the pinned link"),
        "{}",
        daemon.log_text()
    );

    // A clean stop (keep_attached_on_shutdown = false) leaves nothing behind.
    assert!(daemon.stop().success());
    assert!(
        kernel_links_of(new_kernel_id).is_empty(),
        "detached at shutdown"
    );
    // Nothing of ours is left: only the directory that was never ours.
    let left: Vec<String> = std::fs::read_dir(&daemon.pin_root)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        left,
        vec!["someone-elses".to_string()],
        "no pins of ours left"
    );
    std::fs::remove_dir(&not_ours).unwrap();
    assert_eq!(hosts.ping(denied, 2), 2);
}

#[test]
fn keep_attached_on_shutdown_hands_the_firewall_to_the_next_start() {
    let hosts = TwoHosts::new();
    let denied = hosts.ips_b[1];
    let config = format!(
        "interface = \"{}\"\nkeep_attached_on_shutdown = true\n[programs.xdp_firewall]\nattach_mode = \"skb\"\nrules = [{{ action = \"drop\", source_ip = \"{denied}\" }}]\n",
        hosts.if_a
    );
    let mut daemon = Daemon::start(&hosts.a, &config);
    let before = daemon.wait_attached();
    let links = kernel_links_of(before[0]["kernel_id"].as_u64().unwrap());
    hosts.send_udp(denied, 7000, 6, 50);
    assert_eq!(wait_counters(&daemon, 6)["dropped_packets"], 6);
    assert!(daemon.stop().success());
    assert_eq!(
        hosts.ping(denied, 2),
        0,
        "still filtering between the two daemons"
    );
    daemon.start_again(&hosts.a);
    let after = daemon.wait_attached();
    assert_eq!(after[0]["id"], before[0]["id"]);
    assert_eq!(
        kernel_links_of(after[0]["kernel_id"].as_u64().unwrap()),
        links
    );
    assert_eq!(wait_counters(&daemon, 8)["dropped_packets"], 8);
    assert_eq!(
        after.as_array().unwrap().len(),
        1,
        "the startup plan did not load a second firewall"
    );
    // The guard's SIGTERM keeps them attached too; take them off for the test's cleanup.
    daemon.cli_json(&["unload", after[0]["id"].as_str().unwrap()]);
}
