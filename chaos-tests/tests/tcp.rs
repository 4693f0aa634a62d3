//! The TCP probe (`tcp_state` on the tracepoint sock/inet_sock_set_state) through the real
//! daemon, with real TCP connections across the veth.

use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use chaos_tests::{Daemon, TwoHosts};

#[test]
fn connects_failures_and_resets_are_counted_per_peer() {
    let hosts = TwoHosts::new();
    let daemon = Daemon::start(
        &hosts.a,
        "auto_load_programs = false\nenable_tcp_probe = true\n",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon
        .cli_json(&["programs"])
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "tcp_state")
    {
        assert!(
            Instant::now() < deadline,
            "the TCP probe was not loaded at start:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (open, closed) = (18080u16, 18081u16);
    let listener: TcpListener = hosts
        .a
        .within(|| TcpListener::bind((hosts.ip_a, open)).unwrap());
    let server = SocketAddrV4::new(hosts.ip_a, open);
    let refused = SocketAddrV4::new(hosts.ip_a, closed);

    // Three plain connects, one refused, one reset by the server.
    let clients: Vec<TcpStream> = hosts.b.within(|| {
        (0..3)
            .map(|_| TcpStream::connect(server).unwrap())
            .collect()
    });
    for _ in 0..3 {
        listener.accept().unwrap();
    }
    let refusal = hosts.b.within(|| TcpStream::connect(refused));
    assert!(refusal.is_err(), "nothing listens on {closed}");
    let victim = hosts.b.within(|| TcpStream::connect(server).unwrap());
    let (accepted, _) = listener.accept().unwrap();
    nix::sys::socket::setsockopt(
        &accepted,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )
    .unwrap();
    drop(accepted); // SO_LINGER 0: the close is a RST

    let peer = |port: u16| -> serde_json::Value {
        daemon
            .cli_json(&["tcp"])
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer"] == hosts.ip_a.to_string() && p["port"] == port)
            .cloned()
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while peer(open)["resets"] != 1 {
        assert!(Instant::now() < deadline, "no reset seen: {}", peer(open));
        std::thread::sleep(Duration::from_millis(50));
    }
    let p = peer(open);
    assert_eq!(p["connects"], 4, "{p}");
    assert_eq!(p["failed"], 0, "{p}");
    assert!(p["connect_avg_us"].as_f64().unwrap() > 0.0, "{p}");
    let r = peer(closed);
    assert_eq!(
        (r["connects"].as_u64(), r["failed"].as_u64()),
        (Some(0), Some(1)),
        "{r}"
    );
    let human = String::from_utf8(daemon.cli(&["tcp"]).stdout).unwrap();
    assert!(human.contains(&format!("{}:{open}", hosts.ip_a)), "{human}");
    drop((clients, victim));
}
