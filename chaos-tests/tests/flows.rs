//! `x0tta6bl4-ebpf flows` through the real daemon: for traffic whose packets are known, every
//! flow's packets and bytes equal the truth.

use std::time::{Duration, Instant};

use chaos_tests::{Daemon, TwoHosts};
use serde_json::Value;

#[test]
fn flows_count_exactly_what_was_sent_and_filter_like_hubble() {
    let hosts = TwoHosts::new();
    let [allowed, denied] = hosts.ips_b;
    let config = format!(
        "interface = \"{}\"\nauto_load_programs = true\n[programs.xdp_firewall]\nattach_mode = \"skb\"\nrules = [{{ action = \"drop\", source_ip = \"{denied}\" }}]\n",
        hosts.if_a
    );
    let daemon = Daemon::start(&hosts.a, &config);
    daemon.wait_attached();
    hosts.send_udp(allowed, 5000, 40, 100);
    hosts.send_udp(allowed, 5001, 25, 300);
    hosts.send_udp(denied, 5000, 15, 50);
    assert_eq!(hosts.ping(allowed, 3), 3);

    // No waiting: a query is answered by a read of the table that starts after it arrives.
    let flows = daemon.cli_json(&["flows"]);
    let flows = flows.as_array().unwrap();
    assert_eq!(flows.len(), 4, "{flows:#?}");
    let find = |src: std::net::Ipv4Addr, protocol: &str, dport: u64| -> &Value {
        flows
            .iter()
            .find(|f| {
                f["source"] == src.to_string()
                    && f["protocol"] == protocol
                    && f["destination_port"] == dport
            })
            .unwrap_or_else(|| panic!("no {protocol} flow from {src} to port {dport}: {flows:#?}"))
    };
    // UDP frames: 14 + 20 + 8 + payload bytes; echo requests: 14 + 20 + 8 + 56.
    let a = find(allowed, "udp", 5000);
    assert_eq!(
        (a["packets"].as_u64(), a["bytes"].as_u64()),
        (Some(40), Some(40 * 142))
    );
    assert_eq!(a["verdict"], "forwarded");
    assert_eq!(a["destination"], hosts.ip_a.to_string());
    assert_eq!(a["interface"], hosts.if_a.as_str());
    assert_eq!(a["direction"], "ingress");
    for key in [
        "source_port",
        "first_seen",
        "last_seen",
        "tcp_flags",
        "program_id",
    ] {
        assert!(a.get(key).is_some(), "field {key} in {a}");
    }
    let b = find(allowed, "udp", 5001);
    assert_eq!(
        (b["packets"].as_u64(), b["bytes"].as_u64()),
        (Some(25), Some(25 * 342))
    );
    let d = find(denied, "udp", 5000);
    assert_eq!(
        (d["packets"].as_u64(), d["bytes"].as_u64()),
        (Some(15), Some(15 * 92))
    );
    assert_eq!(d["verdict"], "dropped");
    let icmp = find(allowed, "icmp", 0);
    assert_eq!(
        (icmp["packets"].as_u64(), icmp["bytes"].as_u64()),
        (Some(3), Some(3 * 98))
    );

    // Filters.
    let only = |args: &[&str]| daemon.cli_json(&[&["flows"], args].concat());
    assert_eq!(only(&["--verdict", "dropped"]).as_array().unwrap().len(), 1);
    let by_port = only(&["--source", &allowed.to_string(), "--dport", "5001"]);
    assert_eq!(by_port.as_array().unwrap().len(), 1);
    assert_eq!(only(&["--min-packets", "30"]).as_array().unwrap().len(), 1);
    assert_eq!(only(&["--protocol", "icmp"]).as_array().unwrap().len(), 1);
    assert_eq!(
        only(&["--source", "10.77.0.0/24", "--port", "5000"])
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let top = only(&["--sort", "bytes", "--limit", "1"]);
    assert_eq!(top[0]["destination_port"], 5001);
    let human = String::from_utf8(daemon.cli(&["flows", "--verdict", "dropped"]).stdout).unwrap();
    assert!(
        human.contains("dropped") && human.contains(&denied.to_string()),
        "{human}"
    );
}

#[test]
fn flows_can_be_turned_off() {
    let hosts = TwoHosts::new();
    let daemon = Daemon::start(
        &hosts.a,
        &format!(
            "interface = \"{}\"\nenable_flow_observability = false\n[programs.xdp_firewall]\nattach_mode = \"skb\"\n",
            hosts.if_a
        ),
    );
    daemon.wait_attached();
    hosts.send_udp(hosts.ips_b[0], 7, 5, 10);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(daemon.cli_json(&["flows"]), Value::Array(vec![]));
    let human = String::from_utf8(daemon.cli(&["flows"]).stdout).unwrap();
    assert!(human.contains("flow accounting is off"), "{human}");
}

#[test]
fn follow_streams_new_and_updated_flows() {
    use std::io::BufRead as _;
    let hosts = TwoHosts::new();
    let config = format!(
        "interface = \"{}\"\n[programs.xdp_firewall]\nattach_mode = \"skb\"\n",
        hosts.if_a
    );
    let daemon = Daemon::start(&hosts.a, &config);
    daemon.wait_attached();
    struct Follower(std::process::Child);
    impl Drop for Follower {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut follower = Follower(
        std::process::Command::new(chaos_tests::binary("x0tta6bl4-ebpf"))
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["flows", "--follow", "--json", "--dport", "7777"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let packets_seen = |want: u64| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no flow line with {want} packets"));
            let f: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(f["destination_port"], 7777, "the filter applies: {f}");
            if f["packets"] == want {
                return;
            }
        }
    };
    hosts.send_udp_from_port(hosts.ips_b[0], 47777, 7777, 5, 10);
    packets_seen(5);
    hosts.send_udp_from_port(hosts.ips_b[0], 47777, 7777, 3, 10);
    packets_seen(8);
}

#[test]
fn the_flow_actor_keeps_rates_and_ages_out_idle_flows() {
    let hosts = TwoHosts::new();
    let sender = hosts.ips_b[0];
    let config = format!(
        "interface = \"{}\"\nflow_poll_interval_seconds = 0.5\nflow_idle_timeout_seconds = 1.5\n[programs.xdp_firewall]\nattach_mode = \"skb\"\n",
        hosts.if_a
    );
    let daemon = Daemon::start(&hosts.a, &config);
    daemon.wait_attached();

    // 100 datagrams a second for 3 s, while the rate is read in the middle.
    let to = std::net::SocketAddrV4::new(hosts.ip_a, 6100);
    let rate = std::thread::scope(|s| {
        s.spawn(|| {
            hosts.b.within(|| {
                let socket =
                    std::net::UdpSocket::bind(std::net::SocketAddrV4::new(sender, 46100)).unwrap();
                let start = Instant::now();
                for i in 0..300u32 {
                    let due = start + Duration::from_millis(10) * i;
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    socket.send_to(&[0u8; 58], to).unwrap();
                }
            })
        });
        std::thread::sleep(Duration::from_millis(1500));
        let flows = daemon.cli_json(&["flows", "--dport", "6100"]);
        flows[0]["packets_per_second"].as_f64().unwrap()
    });
    assert!(
        (70.0..=130.0).contains(&rate),
        "100 packets a second shows as {rate} pps"
    );
    let flows = daemon.cli_json(&["flows", "--dport", "6100"]);
    assert_eq!(flows[0]["packets"], 300, "{flows}");
    assert_eq!(flows[0]["bytes"], 300 * 100, "{flows}");

    // Idle for longer than flow_idle_timeout_seconds: removed from the kernel table, counted
    // as aged out, not as lost.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon
        .cli_json(&["flows", "--dport", "6100"])
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the idle flow was not aged out:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        daemon
            .metric("ebpf_flows_aged_out_total", &[])
            .unwrap_or(0.0)
            >= 1.0
    );
    assert_eq!(daemon.metric("ebpf_flows_lost_total", &[]), Some(0.0));
    // The same 5-tuple again is a new flow, counted from zero.
    hosts.send_udp_from_port(sender, 46100, 6100, 7, 58);
    let flows = daemon.cli_json(&["flows", "--dport", "6100"]);
    assert_eq!(flows[0]["packets"], 7, "{flows}");
}
