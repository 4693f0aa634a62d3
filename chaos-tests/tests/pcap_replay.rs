//! Flow accuracy against a recording: a pcap of known packets (IPv4 UDP, TCP with changing
//! flags, ICMP, IPv6 UDP; some from a denied range) replayed with tcpreplay across the veth.
//! Every flow `flows` shows has exactly the packets, bytes, flags and verdict of the pcap.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chaos_tests::{Daemon, TwoHosts};
use etherparse::PacketBuilder;
use serde_json::Value;

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Not the receiving interface's address: its stack ignores these frames (no replies to
/// pollute the truth), while XDP sees every one.
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

/// A flow as the pcap defines it: (source, destination, source port, destination port,
/// protocol) → (packets, bytes, TCP flags seen).
type Truth = BTreeMap<(IpAddr, IpAddr, u16, u16, String), (u64, u64, String)>;

/// The pcap file format (libpcap, microsecond timestamps, Ethernet): a 24-byte header, then
/// a 16-byte header before each frame. Written by hand: the format is these two headers, and
/// the crates for it (pcap-file 2) bring syn 1 and a second thiserror to the build.
fn write_pcap(path: &std::path::Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65_535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (i, f) in frames.iter().enumerate() {
        let usec = i as u32 * 500;
        for v in [
            1_700_000_000 + usec / 1_000_000,
            usec % 1_000_000,
            f.len() as u32,
            f.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(f);
    }
    std::fs::write(path, out).expect("write pcap");
}

fn tcp_flag_names(flags: u8) -> String {
    [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, n)| *n)
    .collect::<Vec<_>>()
    .join("|")
}

/// The recording: 24 flows of 1 to 23 packets of varying sizes, interleaved.
fn recording() -> (Vec<Vec<u8>>, Truth) {
    let mut per_flow: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut truth = Truth::new();
    for i in 0..24u16 {
        let packets = 1 + (i * 7 % 23);
        let sport = 20_000 + i;
        let dport = 5_000 + i % 4;
        let mut frames = Vec::new();
        let mut flags_seen = 0u8;
        let (src, dst): (IpAddr, IpAddr) = if i % 4 == 3 {
            (
                format!("fd99::{}", i + 1).parse().unwrap(),
                "fd98::1".parse().unwrap(),
            )
        } else {
            (
                format!("10.99.{}.{}", i % 3, 10 + i).parse().unwrap(),
                "10.98.0.1".parse().unwrap(),
            )
        };
        for j in 0..packets {
            let payload = vec![0xab; 10 + usize::from((i * 37 + j * 11) % 900)];
            let eth = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
            let mut frame = Vec::new();
            match (src, dst, i % 4) {
                (IpAddr::V4(s), IpAddr::V4(d), 0) => eth
                    .ipv4(s.octets(), d.octets(), 64)
                    .udp(sport, dport)
                    .write(&mut frame, &payload)
                    .unwrap(),
                (IpAddr::V4(s), IpAddr::V4(d), 1) => {
                    let b = eth.ipv4(s.octets(), d.octets(), 64).tcp(
                        sport,
                        dport,
                        1000 + u32::from(j),
                        64_000,
                    );
                    let (b, f) = match j {
                        0 => (b.syn(), 0x02),
                        _ if j + 1 == packets => (b.fin().ack(1), 0x11),
                        _ => (b.psh().ack(1), 0x18),
                    };
                    flags_seen |= f;
                    b.write(&mut frame, &payload).unwrap()
                }
                (IpAddr::V4(s), IpAddr::V4(d), _) => eth
                    .ipv4(s.octets(), d.octets(), 64)
                    .icmpv4_echo_request(sport, j)
                    .write(&mut frame, &payload)
                    .unwrap(),
                (IpAddr::V6(s), IpAddr::V6(d), _) => eth
                    .ipv6(s.octets(), d.octets(), 64)
                    .udp(sport, dport)
                    .write(&mut frame, &payload)
                    .unwrap(),
                _ => unreachable!(),
            }
            frames.push(frame);
        }
        let (protocol, ports) = match i % 4 {
            0 | 3 => ("udp", (sport, dport)),
            1 => ("tcp", (sport, dport)),
            _ => ("icmp", (0, 0)),
        };
        let bytes = frames.iter().map(|f| f.len() as u64).sum();
        truth.insert(
            (src, dst, ports.0, ports.1, protocol.to_string()),
            (u64::from(packets), bytes, tcp_flag_names(flags_seen)),
        );
        per_flow.push(frames);
    }
    // Interleave the flows, as a capture of concurrent traffic would.
    let mut frames = Vec::new();
    let longest = per_flow.iter().map(Vec::len).max().unwrap_or(0);
    for j in 0..longest {
        for f in &per_flow {
            if let Some(frame) = f.get(j) {
                frames.push(frame.clone());
            }
        }
    }
    (frames, truth)
}

#[test]
fn a_pcap_replayed_with_tcpreplay_is_counted_exactly() {
    let hosts = TwoHosts::new();
    let config = format!(
        "interface = \"{}\"\n[programs.xdp_firewall]\nattach_mode = \"skb\"\nrules = [{{ action = \"drop\", source_ip = \"10.99.2.0/24\" }}]\n",
        hosts.if_a
    );
    let daemon = Daemon::start(&hosts.a, &config);
    daemon.wait_attached();

    let (frames, truth) = recording();
    let dir = tempfile::tempdir().unwrap();
    let pcap = dir.path().join("flows.pcap");
    write_pcap(&pcap, &frames);
    // A steady rate: a burst faster than the receiving CPU's backlog would be dropped before
    // XDP (generic XDP runs after the backlog), which no flow table could count.
    let out = chaos_tests::run(hosts.b.command("tcpreplay").args([
        "--intf1",
        &hosts.if_b,
        "--pps",
        "4000",
        pcap.to_str().unwrap(),
    ]));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!("Successful packets:        {}", frames.len())),
        "tcpreplay sent every frame:\n{report}"
    );

    let mut seen: Vec<Value> = Vec::new();
    for range in ["10.99.0.0/16", "fd99::/16"] {
        let flows = daemon.cli_json(&["flows", "--source", range]);
        seen.extend(flows.as_array().unwrap().iter().cloned());
    }
    let mut shown = Truth::new();
    for f in &seen {
        let key = (
            f["source"].as_str().unwrap().parse().unwrap(),
            f["destination"].as_str().unwrap().parse().unwrap(),
            f["source_port"].as_u64().unwrap() as u16,
            f["destination_port"].as_u64().unwrap() as u16,
            f["protocol"].as_str().unwrap().to_string(),
        );
        let denied = matches!(key.0, IpAddr::V4(a) if a.octets()[2] == 2);
        assert_eq!(
            f["verdict"],
            if denied { "dropped" } else { "forwarded" },
            "{f}"
        );
        assert_eq!(f["interface"], hosts.if_a.as_str(), "{f}");
        let previous = shown.insert(
            key,
            (
                f["packets"].as_u64().unwrap(),
                f["bytes"].as_u64().unwrap(),
                f["tcp_flags"].as_str().unwrap().to_string(),
            ),
        );
        assert!(previous.is_none(), "one entry per flow: {f}");
    }
    assert_eq!(shown.len(), truth.len(), "as many flows as the pcap has");
    for (key, want) in &truth {
        assert_eq!(shown.get(key), Some(want), "flow {key:?}");
    }
}
