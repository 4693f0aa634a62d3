//! Custom metrics (`metrics add --from-map`): a map of a user's own program, loaded from
//! programs_dir and attached, exported with labels decoded from its keys; listed, refused
//! with reasons, kept across a restart, removed.

use chaos_tests::{Daemon, TwoHosts, stderr};
use serde_json::Value;

#[test]
fn a_map_of_a_user_program_is_a_metric_with_labels_from_its_keys() {
    let hosts = TwoHosts::new();
    let [sender, _] = hosts.ips_b;
    let mut daemon = Daemon::start(&hosts.a, "auto_load_programs = false\n");
    std::fs::write(
        daemon.dir.path().join("programs/xdp_count.o"),
        actors::builtin::XDP_COUNT,
    )
    .unwrap();
    let loaded = daemon.cli_json(&["load", "xdp_count", "--mode", "skb"]);
    let id = loaded["id"].as_str().unwrap().to_string();
    daemon.cli_json(&["attach", &id, &hosts.if_a]);

    let packets_map = format!("{id}:PACKETS");
    let added = daemon.cli_json(&[
        "metrics",
        "add",
        "--name",
        "ebpf_custom_packets",
        "--type",
        "counter",
        "--description",
        "Custom packet counter",
        "--labels",
        "interface:ifindex,protocol",
        "--from-map",
        &packets_map,
    ]);
    assert_eq!(added[0]["metric"]["name"], "ebpf_custom_packets", "{added}");
    daemon.cli_json(&[
        "metrics",
        "add",
        "--name",
        "ebpf_custom_bytes",
        "--type",
        "gauge",
        "--labels",
        "interface:ifindex,protocol",
        "--from-map",
        &format!("{id}:BYTES"),
    ]);

    hosts.send_udp(sender, 7000, 10, 58);
    assert_eq!(hosts.ping(sender, 3), 3);
    let if_a = hosts.if_a.as_str();
    let udp = [("interface", if_a), ("protocol", "17")];
    let icmp = [("interface", if_a), ("protocol", "1")];
    assert_eq!(daemon.metric("ebpf_custom_packets", &udp), Some(10.0));
    assert_eq!(daemon.metric("ebpf_custom_packets", &icmp), Some(3.0));
    assert_eq!(daemon.metric("ebpf_custom_bytes", &udp), Some(1000.0));
    assert_eq!(daemon.metric("ebpf_custom_bytes", &icmp), Some(3.0 * 98.0));

    let text =
        String::from_utf8(daemon.cli(&["metrics", "--format", "prometheus"]).stdout).unwrap();
    assert!(
        text.contains("# HELP ebpf_custom_packets Custom packet counter")
            && text.contains("# TYPE ebpf_custom_packets counter")
            && text.contains("# TYPE ebpf_custom_bytes gauge")
            && text.contains(&format!(
                "ebpf_custom_packets{{interface=\"{if_a}\",protocol=\"17\"}} 10"
            )),
        "{text}"
    );
    let list = daemon.cli_json(&["metrics", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    assert!(list[0]["series"].as_u64().unwrap() >= 2, "{list}");
    let human = String::from_utf8(daemon.cli(&["metrics", "list"]).stdout).unwrap();
    assert!(human.contains(&packets_map), "{human}");

    // Refusals name the problem.
    let refused = |args: &[&str], says: &str| {
        let out = daemon.cli(&[&["metrics", "add", "--type", "counter"], args].concat());
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    };
    refused(
        &["--name", "ebpf_flows_active", "--from-map", &packets_map],
        "one of the daemon's own metrics",
    );
    refused(
        &["--name", "bad-name", "--from-map", &packets_map],
        "not a Prometheus name",
    );
    refused(
        &["--name", "ebpf_custom_packets", "--from-map", &packets_map],
        "exists already",
    );
    refused(
        &["--name", "x", "--from-map", "nope-1:PACKETS"],
        "no program nope-1 is loaded",
    );
    refused(
        &["--name", "x", "--from-map", &format!("{id}:NOPE")],
        "has no map NOPE (it has: ",
    );
    refused(
        &[
            "--name",
            "x",
            "--labels",
            "a:u16,b:u32",
            "--from-map",
            &packets_map,
        ],
        "the labels take 6 bytes (a:2, b:4) but the keys of PACKETS have 8",
    );
    let out = daemon.cli(&[
        "metrics",
        "add",
        "--name",
        "x",
        "--type",
        "counter",
        "--from-map",
        "nocolon",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("PROGRAM_ID:MAP"), "{}", stderr(&out));

    // Kept across a daemon crash; the program comes back under its id (its maps, not
    // pinned, start from zero).
    daemon.kill();
    daemon.start_again(&hosts.a);
    // Until the new daemon has swapped its program into the pinned link, the old one (with
    // the old, unpinned maps) still counts the packets.
    daemon.wait_attached();
    let list = daemon.cli_json(&["metrics", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    hosts.send_udp(sender, 7000, 4, 58);
    assert_eq!(daemon.metric("ebpf_custom_packets", &udp), Some(4.0));

    // Removed; removing again says what exists.
    let left = daemon.cli_json(&["metrics", "remove", "ebpf_custom_packets"]);
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(daemon.metric("ebpf_custom_packets", &udp), None);
    let out = daemon.cli(&["metrics", "remove", "ebpf_custom_packets"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("no custom metric ebpf_custom_packets (there are: ebpf_custom_bytes)"),
        "{}",
        stderr(&out)
    );

    // Its program unloaded: the metric stays defined, is not served, and `list` says why.
    daemon.cli(&["detach", &id, &hosts.if_a]);
    daemon.cli_json(&["unload", &id]);
    assert_eq!(daemon.metric("ebpf_custom_bytes", &udp), None);
    let list: Value = daemon.cli_json(&["metrics", "list"]);
    assert!(
        list[0]["problem"]
            .as_str()
            .is_some_and(|p| p.contains(&format!("no program {id} is loaded"))),
        "{list}"
    );
}
