//! Attachments other than XDP, through the real daemon and CLI: `cgroup_counter` on a test
//! cgroup (a real process moved into it; counts per direction, deny, surviving a SIGKILL),
//! `socket_counter` on an AF_PACKET socket (real traffic counted exactly, samples received),
//! and user objects of these types loaded from programs_dir (cgroup_skb, TC, tracepoint).

use std::path::PathBuf;
use std::time::Duration;

use chaos_tests::{Daemon, NetNs, TwoHosts, kernel_link_details_of, kernel_links_of};
use serde_json::Value;

/// A cgroup v2 directory made for the test, removed when the test ends (its processes have
/// exited by then).
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new() -> TestCgroup {
        let path = PathBuf::from(format!(
            "/sys/fs/cgroup/unified/x0t-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir(&path).unwrap_or_else(|e| {
            panic!(
                "cannot make the test cgroup {} ({e}): the tests need cgroup2 at /sys/fs/cgroup/unified and root",
                path.display()
            )
        });
        TestCgroup(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// Pings `to` from inside this cgroup, in `ns`; returns the replies.
    fn ping(&self, ns: &NetNs, to: &str, count: u32) -> u32 {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec ping -n -q -c {count} -i 0.01 -W 1 {to}",
            self.path()
        );
        let out = ns
            .command("sh")
            .args(["-c", &script])
            .output()
            .expect("run ping in the cgroup");
        chaos_tests::ping_replies(&out)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

/// The counter of `hooks --json` whose `what` ends with `suffix`.
fn counter(hooks: &Value, program_id: &str, suffix: &str) -> Option<Value> {
    hooks.as_array()?.iter().find_map(|h| {
        if h["hook"]["program_id"] != program_id {
            return None;
        }
        h["counters"]
            .as_array()?
            .iter()
            .find(|c| c["what"].as_str().is_some_and(|w| w.ends_with(suffix)))
            .cloned()
    })
}

#[test]
fn cgroup_counter_counts_a_cgroups_packets_both_ways_and_denies_them() {
    let hosts = TwoHosts::new();
    let cgroup = TestCgroup::new();
    let mut daemon = Daemon::start(&hosts.a, "auto_load_programs = false\n");
    let to = hosts.ip_a.to_string();
    let id = daemon.cli_json(&["load", "cgroup_counter"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let hooked = daemon.cli_json(&["attach", &id, "--cgroup", cgroup.path()]);
    assert_eq!(
        hooked["directions"],
        serde_json::json!(["ingress", "egress"])
    );

    // Five echo requests leave the cgroup's socket, five replies come back to it: 84 bytes
    // of IP each.
    assert_eq!(cgroup.ping(&hosts.b, &to, 5), 5);
    // A ping from outside the cgroup is not counted.
    assert_eq!(hosts.ping(hosts.ips_b[0], 3), 3);
    let hooks = daemon.cli_json(&["hooks"]);
    let egress = counter(&hooks, &id, "egress").expect("egress counted");
    let ingress = counter(&hooks, &id, "ingress").expect("ingress counted");
    assert_eq!(egress["packets"], 5, "{hooks}");
    assert_eq!(egress["bytes"], 5 * 84, "{hooks}");
    assert_eq!(ingress["packets"], 5, "{hooks}");
    assert_eq!(ingress["bytes"], 5 * 84, "{hooks}");
    assert_eq!(egress["denied"], 0);
    let text = String::from_utf8_lossy(&daemon.cli(&["hooks"]).stdout).into_owned();
    assert!(
        text.contains(cgroup.path()) && text.contains("egress"),
        "{text}"
    );

    // Deny: the cgroup's packets are dropped and counted; others pass.
    let hooked = daemon.cli_json(&["attach", &id, "--cgroup", cgroup.path(), "--deny"]);
    assert_eq!(hooked["deny"], true);
    assert_eq!(cgroup.ping(&hosts.b, &to, 3), 0);
    assert_eq!(hosts.ping(hosts.ips_b[0], 3), 3);
    let hooks = daemon.cli_json(&["hooks"]);
    let egress = counter(&hooks, &id, "egress").unwrap();
    assert_eq!(egress["denied"], 3, "{hooks}");

    // SIGKILL: the pinned links keep the deny in force while no daemon runs; the next
    // daemon takes them over.
    daemon.kill();
    assert_eq!(cgroup.ping(&hosts.b, &to, 2), 0);
    daemon.start_again(&hosts.a);
    let programs = daemon.cli_json(&["programs"]);
    let hooks_of = &programs[0]["hooks"];
    assert_eq!(
        hooks_of[0]["target"]["cgroup"]["path"],
        cgroup.path(),
        "{programs}"
    );
    assert_eq!(hooks_of[0]["deny"], true);
    let status = daemon.cli_json(&["status"]);
    assert!(
        status["reconciliation"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["kind"] == "adopted" && s["detail"].as_str().unwrap().contains("cgroup")),
        "{status}"
    );
    let egress = counter(&daemon.cli_json(&["hooks"]), &id, "egress").unwrap();
    assert_eq!(
        egress["denied"], 5,
        "the counts carried on across the restart"
    );

    // Detach: the deny goes with it, and the cgroup talks again.
    daemon.cli_json(&["detach", &id, "--cgroup", cgroup.path()]);
    assert_eq!(cgroup.ping(&hosts.b, &to, 3), 3);
    assert_eq!(daemon.cli_json(&["hooks"]), serde_json::json!([]));

    // Mistakes are named.
    daemon.cli_fails(
        &["attach", &id, "--cgroup", "/sys/fs/cgroup/unified/nosuch"],
        "cgroup v2 directory",
    );
    daemon.cli_fails(&["attach", &id, &hosts.if_a], "--cgroup");
    daemon.cli_fails(&["attach", &id, "--cgroup", "/tmp"], "cgroup v2");
}

#[test]
fn socket_counter_counts_what_its_socket_sees_and_passes_samples_up() {
    let hosts = TwoHosts::new();
    let daemon = Daemon::start(&hosts.a, "auto_load_programs = false\n");
    let id = daemon.cli_json(&["load", "socket_counter"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let hooked = daemon.cli_json(&["attach", &id, &hosts.if_a, "--sample", "2"]);
    assert_eq!(hooked["target"]["socket"]["interface"], hosts.if_a.as_str());
    // Ten UDP datagrams of 100 bytes: 142-byte frames.
    hosts.send_udp(hosts.ips_b[0], 9, 10, 100);
    std::thread::sleep(Duration::from_millis(300));
    let hooks = daemon.cli_json(&["hooks"]);
    let udp = counter(&hooks, &id, " udp").expect("udp counted");
    assert_eq!(udp["packets"], 10, "{hooks}");
    assert_eq!(udp["bytes"], 1420, "{hooks}");
    // Every second packet of each kind is passed up (the count is per interface and
    // protocol): the UDP and a's ICMP port-unreachable answers.
    let samples = hooks[0]["samples"].as_u64().unwrap();
    let expected: u64 = hooks[0]["counters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["packets"].as_u64().unwrap() / 2)
        .sum();
    assert_eq!(samples, expected, "one in two sampled: {hooks}");
    assert!(hooks[0]["sample_bytes"].as_u64().unwrap() >= 5 * 142);

    daemon.cli_fails(&["attach", &id, "nosuch0"], "nosuch0");
    daemon.cli_fails(
        &["attach", &id, "--cgroup", "/sys/fs/cgroup/unified"],
        "interface",
    );
    daemon.cli_json(&["detach", &id, &hosts.if_a]);
    assert_eq!(daemon.cli_json(&["hooks"]), serde_json::json!([]));
}

/// User objects of these types, from programs_dir, load and attach the same way.
#[test]
fn user_objects_of_cgroup_skb_tc_and_tracepoint_types_load_and_attach() {
    let hosts = TwoHosts::new();
    let cgroup = TestCgroup::new();
    let daemon = Daemon::start(&hosts.a, "auto_load_programs = false\n");
    let programs = daemon.dir.path().join("programs");
    std::fs::write(
        programs.join("my_cgroup.o"),
        actors::builtin::CGROUP_COUNTER,
    )
    .unwrap();
    std::fs::write(programs.join("my_tc.o"), actors::builtin::TC_SHAPER).unwrap();

    let cg = daemon.cli_json(&["load", "my_cgroup"]);
    assert_eq!(cg["program_type"], "cgroup_skb", "{cg}");
    let cg_id = cg["id"].as_str().unwrap().to_string();
    daemon.cli_json(&["attach", &cg_id, "--cgroup", cgroup.path()]);
    assert_eq!(cgroup.ping(&hosts.b, &hosts.ip_a.to_string(), 2), 2);
    let egress = counter(&daemon.cli_json(&["hooks"]), &cg_id, "egress").unwrap();
    assert_eq!(egress["packets"], 2);

    let tc = daemon.cli_json(&["load", "my_tc"]);
    assert_eq!(tc["program_type"], "tc", "{tc}");
    let tc_id = tc["id"].as_str().unwrap().to_string();
    let kernel_id = tc["kernel_id"].as_u64().unwrap();
    daemon.cli_json(&["attach", &tc_id, &hosts.if_a, "--direction", "egress"]);
    let links = kernel_link_details_of(kernel_id);
    // Debian's bpftool names the link type by number (11: BPF_LINK_TYPE_TCX).
    assert!(
        links.iter().any(|l| l["type"] == "tcx" || l["type"] == 11),
        "no TCX link of program {kernel_id}: {links:?}"
    );
    let hooks = daemon.cli_json(&["hooks"]);
    assert!(
        hooks
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["hook"]["target"]["tc"]["direction"] == "egress"),
        "{hooks}"
    );
    // A tracepoint program is attached to the tracepoint named.
    std::fs::write(programs.join("my_tp.o"), actors::builtin::TCP_STATE).unwrap();
    let tp = daemon.cli_json(&["load", "my_tp"]);
    assert_eq!(tp["program_type"], "tracepoint", "{tp}");
    let tp_id = tp["id"].as_str().unwrap().to_string();
    let tp_kernel_id = tp["kernel_id"].as_u64().unwrap();
    daemon.cli_fails(&["attach", &tp_id, "--tracepoint", "sock"], "CATEGORY/NAME");
    daemon.cli_fails(
        &["attach", &tp_id, "--tracepoint", "sock/no_such_event"],
        "no_such_event",
    );
    daemon.cli_json(&["attach", &tp_id, "--tracepoint", "sock/inet_sock_set_state"]);
    assert!(
        !kernel_links_of(tp_kernel_id).is_empty(),
        "no link of the tracepoint program {tp_kernel_id}"
    );
    daemon.cli_json(&["detach", &tp_id, "--tracepoint", "sock/inet_sock_set_state"]);
    daemon.cli_json(&["unload", &tp_id]);

    // An XDP flag on a TC program is refused.
    daemon.cli_fails(&["attach", &tc_id, &hosts.if_a, "--mode", "skb"], "XDP");
    // Unloading takes the hooks with it.
    daemon.cli_json(&["unload", &tc_id]);
    daemon.cli_json(&["unload", &cg_id]);
    assert_eq!(daemon.cli_json(&["hooks"]), serde_json::json!([]));
}
