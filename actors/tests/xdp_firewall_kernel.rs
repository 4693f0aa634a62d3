//! Kernel tier: `xdp_firewall` run by the real kernel on crafted packets through
//! BPF_PROG_TEST_RUN. Every verdict, malformed packets cut at every header boundary, and the
//! counters the CLI reports. Needs root; fails (never skips) without it.

use std::net::Ipv6Addr;

use actors::api::{FirewallRule, PacketCounters, PortRange, Protocol, RuleAction};
use actors::builtin::XDP_FIREWALL;
use actors::firewall::{apply_rules, read_counters};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use etherparse::PacketBuilder;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];
const ALLOWED_V4: [u8; 4] = [10, 0, 0, 2];
const DENIED_V4: [u8; 4] = [10, 0, 0, 66];
const DST_V4: [u8; 4] = [10, 0, 0, 1];
const DENIED_V6: &str = "fd00::66";
const ALLOWED_V6: &str = "fd00::2";
const DST_V6: &str = "fd00::1";

fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "kernel tests load BPF programs and need root: run `sudo -E cargo xtask test`; they do not skip"
        );
    }
}

fn rule(
    action: RuleAction,
    source_ip: Option<&str>,
    protocol: Option<Protocol>,
    port: Option<u16>,
) -> FirewallRule {
    FirewallRule {
        action,
        source_ip: source_ip.map(|s| s.parse().unwrap()),
        protocol,
        port: port.map(PortRange::single),
        ..Default::default()
    }
}

/// The rule set most tests use: deny one v4 and one v6 source, deny TCP/22, deny all ICMP,
/// allow TCP/443 even under a default-deny.
fn standard_rules() -> Vec<FirewallRule> {
    vec![
        rule(RuleAction::Drop, Some("10.0.0.66"), None, None),
        rule(RuleAction::Drop, Some(DENIED_V6), None, None),
        rule(RuleAction::Drop, None, Some(Protocol::Tcp), Some(22)),
        rule(RuleAction::Allow, None, Some(Protocol::Tcp), Some(443)),
        rule(RuleAction::Drop, None, Some(Protocol::Icmp), None),
        rule(RuleAction::Drop, None, Some(Protocol::Udp), Some(53)),
    ]
}

/// A loaded `xdp_firewall` whose maps are pinned in a directory of its own (the program pins
/// its maps by name; without a directory aya would use /sys/fs/bpf itself, shared by every
/// test). The pins go when it is dropped.
struct Fw {
    ebpf: Ebpf,
    pins: std::path::PathBuf,
}

impl std::ops::Deref for Fw {
    type Target = Ebpf;
    fn deref(&self) -> &Ebpf {
        &self.ebpf
    }
}

impl std::ops::DerefMut for Fw {
    fn deref_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

impl Drop for Fw {
    fn drop(&mut self) {
        actors::sys::remove_pins(&self.pins);
    }
}

/// Loads (and verifies) `xdp_firewall`, flows on with a table of `flows` entries when given.
fn load_firewall(flows: Option<u32>) -> Fw {
    load_firewall_with(flows, true)
}

/// As `load_firewall`, with the per-CPU verdict cache on or off.
fn load_firewall_with(flows: Option<u32>, verdict_cache: bool) -> Fw {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    require_root();
    let pins = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/x0t-kernel-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    actors::sys::ensure_pin_root(&pins).unwrap();
    let enabled = 1u8;
    let cache = u8::from(verdict_cache);
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&pins);
    loader.override_global(ebpf_shared::globals::VERDICT_CACHE_ENABLED, &cache, true);
    if let Some(size) = flows {
        loader
            .override_global(ebpf_shared::globals::FLOWS_ENABLED, &enabled, true)
            .map_max_entries(ebpf_shared::maps::FW_FLOWS4, size)
            .map_max_entries(ebpf_shared::maps::FW_FLOWS, size);
    }
    let mut ebpf = loader
        .load(XDP_FIREWALL)
        .expect("parse the embedded xdp_firewall");
    let program: &mut Xdp = ebpf
        .program_mut("xdp_firewall")
        .unwrap()
        .try_into()
        .unwrap();
    program.load().expect("the verifier accepts xdp_firewall");
    actors::firewall::enable_fast_path(&mut ebpf, flows.is_none() && verdict_cache).unwrap();
    Fw { ebpf, pins }
}

fn firewall(rules: &[FirewallRule], default_policy: RuleAction) -> Fw {
    let mut ebpf = load_firewall(None);
    apply_rules(&mut ebpf, rules, default_policy).expect("rules apply");
    ebpf
}

fn run(ebpf: &Ebpf, packet: &[u8]) -> Result<u32, aya::programs::ProgramError> {
    let program: &Xdp = ebpf.program("xdp_firewall").unwrap().try_into().unwrap();
    program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            ..Default::default()
        })
        .map(|r| r.return_value)
}

fn verdict(ebpf: &Ebpf, packet: &[u8]) -> u32 {
    run(ebpf, packet).expect("BPF_PROG_TEST_RUN")
}

fn counters(ebpf: &Ebpf) -> PacketCounters {
    read_counters(ebpf)
        .unwrap()
        .expect("xdp_firewall has counters")
}

fn v4_udp(src: [u8; 4], dport: u16, payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(src, DST_V4, 64)
        .udp(40000, dport);
    let mut out = Vec::with_capacity(b.size(payload));
    b.write(&mut out, &vec![0u8; payload]).unwrap();
    out
}

fn v4_tcp(src: [u8; 4], dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(src, DST_V4, 64)
        .tcp(40000, dport, 1, 1024)
        .syn();
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn v4_icmp(src: [u8; 4]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(src, DST_V4, 64)
        .icmpv4_echo_request(1, 1);
    let mut out = Vec::new();
    b.write(&mut out, &[0u8; 8]).unwrap();
    out
}

fn v6(src: &str) -> [u8; 16] {
    src.parse::<Ipv6Addr>().unwrap().octets()
}

fn v6_udp(src: &str, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv6(v6(src), v6(DST_V6), 64)
        .udp(40000, dport);
    let mut out = Vec::new();
    b.write(&mut out, &[1, 2, 3, 4]).unwrap();
    out
}

fn v6_tcp(src: &str, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv6(v6(src), v6(DST_V6), 64)
        .tcp(40000, dport, 1, 1024);
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

fn v6_icmp(src: &str) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv6(v6(src), v6(DST_V6), 64)
        .icmpv6_echo_request(1, 1);
    let mut out = Vec::new();
    b.write(&mut out, &[0u8; 8]).unwrap();
    out
}

fn arp() -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&MAC_B);
    frame.extend_from_slice(&0x0806u16.to_be_bytes());
    frame.extend_from_slice(&[0u8; 28]);
    frame
}

#[test]
fn ipv4_verdicts() {
    let fw = firewall(&standard_rules(), RuleAction::Allow);
    assert_eq!(
        verdict(&fw, &v4_udp(ALLOWED_V4, 9000, 16)),
        XDP_PASS,
        "allowed source, no port rule"
    );
    assert_eq!(
        verdict(&fw, &v4_udp(DENIED_V4, 9000, 16)),
        XDP_DROP,
        "denied source"
    );
    assert_eq!(
        verdict(&fw, &v4_udp(ALLOWED_V4, 53, 16)),
        XDP_DROP,
        "UDP/53 denied"
    );
    assert_eq!(
        verdict(&fw, &v4_tcp(ALLOWED_V4, 22)),
        XDP_DROP,
        "TCP/22 denied"
    );
    assert_eq!(
        verdict(&fw, &v4_tcp(ALLOWED_V4, 80)),
        XDP_PASS,
        "TCP/80 by default policy"
    );
    assert_eq!(
        verdict(&fw, &v4_tcp(ALLOWED_V4, 443)),
        XDP_PASS,
        "TCP/443 allowed"
    );
    assert_eq!(
        verdict(&fw, &v4_icmp(ALLOWED_V4)),
        XDP_DROP,
        "all ICMP denied"
    );
    // The source rule decides before the port rule.
    assert_eq!(
        verdict(&fw, &v4_tcp(DENIED_V4, 443)),
        XDP_DROP,
        "denied source beats allowed port"
    );
    assert_eq!(verdict(&fw, &arp()), XDP_PASS, "non-IP passes");

    let c = counters(&fw);
    assert_eq!(c.processed_packets, 9);
    assert_eq!(c.passed_packets, 4);
    assert_eq!(c.dropped_packets, 5);
    assert_eq!(c.dropped_by_reason["rule"], 5);
    assert_eq!(c.dropped_by_reason["malformed"], 0);
    let udp_len = v4_udp(DENIED_V4, 9000, 16).len() as u64;
    assert!(
        c.dropped_bytes >= udp_len,
        "dropped bytes are frame lengths"
    );
}

#[test]
fn ipv6_verdicts() {
    let fw = firewall(&standard_rules(), RuleAction::Allow);
    assert_eq!(verdict(&fw, &v6_udp(ALLOWED_V6, 9000)), XDP_PASS);
    assert_eq!(
        verdict(&fw, &v6_udp(DENIED_V6, 9000)),
        XDP_DROP,
        "denied v6 source"
    );
    assert_eq!(
        verdict(&fw, &v6_udp(ALLOWED_V6, 53)),
        XDP_DROP,
        "UDP/53 over v6"
    );
    assert_eq!(
        verdict(&fw, &v6_tcp(ALLOWED_V6, 22)),
        XDP_DROP,
        "TCP/22 over v6"
    );
    assert_eq!(verdict(&fw, &v6_tcp(ALLOWED_V6, 443)), XDP_PASS);
    // The ICMP rule is for ICMPv4; ICMPv6 (neighbour discovery!) is a different protocol.
    assert_eq!(
        verdict(&fw, &v6_icmp(ALLOWED_V6)),
        XDP_PASS,
        "ICMPv6 is not ICMP"
    );
    let c = counters(&fw);
    assert_eq!(
        (c.processed_packets, c.passed_packets, c.dropped_packets),
        (6, 3, 3)
    );
}

#[test]
fn icmpv6_rule_and_default_deny() {
    let rules = vec![
        rule(RuleAction::Drop, None, Some(Protocol::Icmpv6), None),
        rule(RuleAction::Allow, None, Some(Protocol::Udp), Some(9000)),
        rule(RuleAction::Allow, Some("10.0.0.2"), None, None),
    ];
    let fw = firewall(&rules, RuleAction::Drop);
    assert_eq!(verdict(&fw, &v6_icmp(ALLOWED_V6)), XDP_DROP);
    assert_eq!(
        verdict(&fw, &v6_udp(ALLOWED_V6, 9000)),
        XDP_PASS,
        "allowed port under default deny"
    );
    assert_eq!(
        verdict(&fw, &v6_udp(ALLOWED_V6, 9001)),
        XDP_DROP,
        "default deny"
    );
    assert_eq!(
        verdict(&fw, &v4_tcp(ALLOWED_V4, 1)),
        XDP_PASS,
        "allowed source under default deny"
    );
    assert_eq!(
        verdict(&fw, &v4_tcp(DENIED_V4, 1)),
        XDP_DROP,
        "default deny"
    );
    assert_eq!(
        verdict(&fw, &arp()),
        XDP_PASS,
        "non-IP passes even under default deny"
    );
    let c = counters(&fw);
    assert_eq!(c.dropped_by_reason["default_policy"], 2);
    assert_eq!(c.dropped_by_reason["rule"], 1);
}

#[test]
fn an_unconfigured_firewall_passes_everything() {
    let ebpf = load_firewall(None);
    assert_eq!(verdict(&ebpf, &v4_udp(DENIED_V4, 53, 4)), XDP_PASS);
    assert_eq!(verdict(&ebpf, &v6_tcp(DENIED_V6, 22)), XDP_PASS);
}

/// Cuts each packet at every length shorter than its headers: every one is dropped as
/// malformed. Frames shorter than an Ethernet header never reach XDP (the kernel refuses them
/// with EINVAL even in BPF_PROG_TEST_RUN).
#[test]
fn truncated_packets_are_dropped_as_malformed() {
    // No rules: whatever is dropped here is dropped for being malformed.
    let fw = firewall(&[], RuleAction::Allow);
    let cases: [(&str, Vec<u8>, usize); 6] = [
        ("ipv4/udp", v4_udp(ALLOWED_V4, 9000, 0), 14 + 20 + 8),
        ("ipv4/tcp", v4_tcp(ALLOWED_V4, 80), 14 + 20 + 20),
        ("ipv4/icmp", v4_icmp([10, 0, 0, 9]), 14 + 20 + 4),
        ("ipv6/udp", v6_udp(ALLOWED_V6, 9000), 14 + 40 + 8),
        ("ipv6/tcp", v6_tcp(ALLOWED_V6, 80), 14 + 40 + 20),
        ("ipv6/icmpv6", v6_icmp(ALLOWED_V6), 14 + 40 + 4),
    ];
    let mut expected_malformed = 0;
    for (name, packet, headers) in &cases {
        for cut in 0..*headers {
            match run(&fw, &packet[..cut]) {
                Ok(v) => {
                    assert!(
                        cut >= 14,
                        "{name} cut at {cut}: the kernel ran a frame shorter than Ethernet"
                    );
                    assert_eq!(v, XDP_DROP, "{name} cut at {cut} bytes must be dropped");
                    expected_malformed += 1;
                }
                Err(e) => assert!(cut < 14, "{name} cut at {cut}: test run failed: {e}"),
            }
        }
        // With every header present (payload may be cut) the rules decide again.
        assert_eq!(
            verdict(&fw, &packet[..*headers]),
            XDP_PASS,
            "{name} with complete headers"
        );
    }
    let c = counters(&fw);
    assert_eq!(c.dropped_by_reason["malformed"], expected_malformed);
}

#[test]
fn malformed_ip_headers_are_dropped() {
    let fw = firewall(&standard_rules(), RuleAction::Allow);
    let good = v4_udp(ALLOWED_V4, 9000, 16);
    assert_eq!(verdict(&fw, &good), XDP_PASS);

    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44; // IHL 4 (16 bytes): shorter than the fixed header
    assert_eq!(verdict(&fw, &bad_ihl), XDP_DROP, "IHL < 5");

    let mut long_ihl = good.clone();
    long_ihl.truncate(14 + 20 + 8);
    long_ihl[14] = 0x4f; // IHL 15 (60 bytes of options) in a 28-byte IP packet
    assert_eq!(
        verdict(&fw, &long_ihl),
        XDP_DROP,
        "options beyond the frame"
    );

    let mut wrong_version = good.clone();
    wrong_version[14] = 0x65; // an IPv4 ethertype carrying version 6
    assert_eq!(
        verdict(&fw, &wrong_version),
        XDP_DROP,
        "version does not match the ethertype"
    );

    let mut short_total = good.clone();
    short_total[16..18].copy_from_slice(&10u16.to_be_bytes()); // total length < IHL
    assert_eq!(
        verdict(&fw, &short_total),
        XDP_DROP,
        "total length shorter than the header"
    );

    let mut v6_wrong_version = v6_udp(ALLOWED_V6, 9000);
    v6_wrong_version[14] = 0x45;
    assert_eq!(
        verdict(&fw, &v6_wrong_version),
        XDP_DROP,
        "IPv6 ethertype with version 4"
    );

    assert_eq!(counters(&fw).dropped_by_reason["malformed"], 5);
}

#[test]
fn ipv4_options_are_skipped_to_find_the_ports() {
    let fw = firewall(&standard_rules(), RuleAction::Allow);
    // Rebuild a TCP/22 packet with 4 bytes of IP options (IHL 6): the port must still be found.
    let plain = v4_tcp(ALLOWED_V4, 22);
    let mut with_options = plain[..14].to_vec();
    let mut ip = plain[14..34].to_vec();
    ip[0] = 0x46;
    let total = u16::from_be_bytes([ip[2], ip[3]]) + 4;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    with_options.extend_from_slice(&ip);
    with_options.extend_from_slice(&[1, 1, 1, 0]); // NOP NOP NOP EOL
    with_options.extend_from_slice(&plain[34..]);
    assert_eq!(
        verdict(&fw, &with_options),
        XDP_DROP,
        "TCP/22 behind IP options"
    );
    assert_eq!(counters(&fw).dropped_by_reason["rule"], 1);
}

/// The fast path (a cached verdict for an untagged IPv4 TCP or UDP packet) answers only a
/// packet the full path would parse to the same fields, and counts what it answers.
#[test]
fn the_fast_path_answers_only_packets_with_the_cached_fields() {
    let fw = firewall(
        &[rule(RuleAction::Drop, None, Some(Protocol::Udp), Some(9))],
        RuleAction::Allow,
    );
    let tcp = v4_tcp(ALLOWED_V4, 9);
    assert_eq!(verdict(&fw, &tcp), XDP_PASS, "decided from the tables");
    assert_eq!(verdict(&fw, &tcp), XDP_PASS, "answered from the cache");
    // The same addresses and ports over UDP: another protocol, another verdict.
    assert_eq!(verdict(&fw, &v4_udp(ALLOWED_V4, 9, 4)), XDP_DROP);
    // The cached TCP packet, made malformed: a total length shorter than its header, or a TCP
    // header cut short. Neither may be answered with the verdict of the intact one.
    let mut short_total = tcp.clone();
    short_total[16..18].copy_from_slice(&19u16.to_be_bytes());
    assert_eq!(verdict(&fw, &short_total), XDP_DROP, "total length 19");
    assert_eq!(
        verdict(&fw, &tcp[..14 + 20 + 19]),
        XDP_DROP,
        "TCP header cut"
    );
    let c = counters(&fw);
    assert_eq!(c.passed_packets, 2);
    assert_eq!(c.passed_bytes, 2 * tcp.len() as u64);
    assert_eq!(c.dropped_by_reason["rule"], 1);
    assert_eq!(c.dropped_by_reason["malformed"], 2);
}

#[test]
fn non_first_fragments_match_protocol_rules_without_ports() {
    let rules = vec![
        rule(RuleAction::Drop, None, Some(Protocol::Udp), Some(53)),
        rule(RuleAction::Drop, None, Some(Protocol::Tcp), None),
    ];
    let fw = firewall(&rules, RuleAction::Allow);
    let mut udp53 = v4_udp(ALLOWED_V4, 53, 16);
    assert_eq!(
        verdict(&fw, &udp53),
        XDP_DROP,
        "first fragment (offset 0) has ports"
    );
    udp53[20..22].copy_from_slice(&0x0010u16.to_be_bytes()); // fragment offset 16 * 8 bytes
    // Its bytes after the IP header are payload, not a UDP header: no port rule applies.
    assert_eq!(
        verdict(&fw, &udp53),
        XDP_PASS,
        "non-first UDP fragment: port rules cannot match"
    );
    let mut tcp = v4_tcp(ALLOWED_V4, 80);
    tcp[20..22].copy_from_slice(&0x0010u16.to_be_bytes());
    assert_eq!(
        verdict(&fw, &tcp),
        XDP_DROP,
        "protocol-wide rule matches a non-first fragment"
    );
}

#[test]
fn vlan_tagged_traffic_is_filtered_too() {
    let fw = firewall(&standard_rules(), RuleAction::Allow);
    for tpid in [0x8100u16, 0x88a8] {
        let plain = v4_udp(DENIED_V4, 9000, 16);
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&tpid.to_be_bytes());
        tagged.extend_from_slice(&[0x00, 0x0a]); // VLAN 10
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(
            verdict(&fw, &tagged),
            XDP_DROP,
            "denied source behind tag {tpid:#x}"
        );
        // QinQ: an 802.1ad tag, then an 802.1Q tag.
        let mut qinq = plain[..12].to_vec();
        qinq.extend_from_slice(&0x88a8u16.to_be_bytes());
        qinq.extend_from_slice(&[0x00, 0x0a]);
        qinq.extend_from_slice(&0x8100u16.to_be_bytes());
        qinq.extend_from_slice(&[0x00, 0x14]);
        qinq.extend_from_slice(&plain[12..]);
        assert_eq!(verdict(&fw, &qinq), XDP_DROP, "denied source behind QinQ");
        // A tag with nothing after it is malformed.
        assert_eq!(verdict(&fw, &tagged[..16]), XDP_DROP, "truncated VLAN tag");
    }
    let allowed = v4_udp(ALLOWED_V4, 9000, 16);
    let mut tagged = allowed[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
    tagged.extend_from_slice(&allowed[12..]);
    assert_eq!(verdict(&fw, &tagged), XDP_PASS);
}

#[test]
fn invalid_rules_are_refused_before_anything_is_written() {
    let mut ebpf = load_firewall(None);
    let rules = vec![
        rule(RuleAction::Drop, Some("10.0.0.66"), None, None),
        rule(RuleAction::Drop, None, Some(Protocol::Icmp), Some(22)),
    ];
    let err = apply_rules(&mut ebpf, &rules, RuleAction::Allow)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rule #2") && err.contains("icmp has no ports"),
        "{err}"
    );
    // Nothing was written: the first, valid rule is not in force either.
    assert_eq!(verdict(&ebpf, &v4_udp(DENIED_V4, 9000, 4)), XDP_PASS);
}

fn raw_rule(json: &str) -> FirewallRule {
    serde_json::from_str(json).unwrap()
}

fn v4_udp_between(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_B, MAC_A)
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut out = Vec::new();
    b.write(&mut out, &[0u8; 8]).unwrap();
    out
}

#[test]
fn cidrs_destinations_source_ports_ranges_and_combined_rules() {
    let rules: Vec<FirewallRule> = [
        r#"{"action":"allow","source_ip":"10.9.9.9","dest_ip":"10.0.1.0/24","protocol":"udp","dest_port":"5000-5010"}"#,
        r#"{"action":"drop","source_ip":"10.9.0.0/16"}"#,
        r#"{"action":"drop","dest_ip":"10.0.2.0/24"}"#,
        r#"{"action":"drop","protocol":"udp","source_port":"1-1023"}"#,
        r#"{"action":"drop","source_ip":"fd00:bad::/32"}"#,
    ]
    .iter()
    .map(|j| raw_rule(j))
    .collect();
    let fw = firewall(&rules, RuleAction::Allow);
    let from_9_9_9_9 = |dst, dport| v4_udp_between([10, 9, 9, 9], dst, 40000, dport);
    assert_eq!(
        verdict(&fw, &from_9_9_9_9([10, 0, 1, 7], 5005)),
        XDP_PASS,
        "combined allow rule first"
    );
    assert_eq!(
        verdict(&fw, &from_9_9_9_9([10, 0, 1, 7], 5011)),
        XDP_DROP,
        "outside the range: the /16 drop"
    );
    assert_eq!(
        verdict(&fw, &from_9_9_9_9([10, 0, 3, 7], 5005)),
        XDP_DROP,
        "other destination: the /16 drop"
    );
    assert_eq!(
        verdict(
            &fw,
            &v4_udp_between([10, 8, 0, 1], [10, 0, 2, 200], 40000, 1)
        ),
        XDP_DROP,
        "destination /24"
    );
    assert_eq!(
        verdict(
            &fw,
            &v4_udp_between([10, 8, 0, 1], [10, 0, 3, 1], 53, 40000)
        ),
        XDP_DROP,
        "privileged source port"
    );
    assert_eq!(
        verdict(
            &fw,
            &v4_udp_between([10, 8, 0, 1], [10, 0, 3, 1], 5353, 40000)
        ),
        XDP_PASS
    );
    assert_eq!(
        verdict(&fw, &v6_udp("fd00:bad:1::1", 9)),
        XDP_DROP,
        "v6 CIDR"
    );
    assert_eq!(verdict(&fw, &v6_udp("fd00:600d::1", 9)), XDP_PASS);
}

/// An IPv6 UDP packet behind the given extension headers, each `(next-header type, bytes)`.
fn v6_with_extensions(extensions: &[(u8, Vec<u8>)], dport: u16) -> Vec<u8> {
    let mut body = Vec::new();
    let types: Vec<u8> = extensions.iter().map(|(t, _)| *t).chain([17]).collect();
    for (i, (_, bytes)) in extensions.iter().enumerate() {
        let mut h = bytes.clone();
        h[0] = types[i + 1];
        body.extend_from_slice(&h);
    }
    body.extend_from_slice(&40000u16.to_be_bytes());
    body.extend_from_slice(&dport.to_be_bytes());
    body.extend_from_slice(&12u16.to_be_bytes());
    body.extend_from_slice(&[0, 0, 1, 2, 3, 4]);
    let mut frame = Vec::new();
    frame.extend_from_slice(&MAC_A);
    frame.extend_from_slice(&MAC_B);
    frame.extend_from_slice(&0x86ddu16.to_be_bytes());
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
    frame.push(types[0]);
    frame.push(64);
    frame.extend_from_slice(&v6(ALLOWED_V6));
    frame.extend_from_slice(&v6(DST_V6));
    frame.extend_from_slice(&body);
    frame
}

#[test]
fn ipv6_extension_headers_are_walked_to_the_transport_header() {
    let rules = vec![rule(RuleAction::Drop, None, Some(Protocol::Udp), Some(53))];
    let fw = firewall(&rules, RuleAction::Allow);
    let options = |len_units: u8| {
        let mut h = vec![0u8; (len_units as usize + 1) * 8];
        h[1] = len_units;
        h
    };
    let hop = (0u8, options(0));
    let routing = (43u8, options(1));
    let dest = (60u8, options(0));
    let mut auth = vec![0u8; 16];
    auth[1] = 2; // (2 + 2) * 4 = 16 bytes
    let auth = (51u8, auth);
    let first_fragment = (44u8, vec![0u8; 8]);
    assert_eq!(
        verdict(&fw, &v6_with_extensions(&[], 53)),
        XDP_DROP,
        "no extension headers"
    );
    assert_eq!(
        verdict(&fw, &v6_with_extensions(std::slice::from_ref(&hop), 53)),
        XDP_DROP,
        "hop-by-hop"
    );
    assert_eq!(
        verdict(
            &fw,
            &v6_with_extensions(
                &[hop.clone(), routing.clone(), dest.clone(), auth.clone()],
                53
            )
        ),
        XDP_DROP,
        "four headers: the bound"
    );
    assert_eq!(
        verdict(
            &fw,
            &v6_with_extensions(&[hop.clone(), first_fragment.clone()], 53)
        ),
        XDP_DROP,
        "first fragment has ports"
    );
    assert_eq!(
        verdict(&fw, &v6_with_extensions(std::slice::from_ref(&dest), 54)),
        XDP_PASS,
        "other port passes"
    );
    let mut later_fragment = vec![0u8; 8];
    later_fragment[3] = 0x08; // offset 1 (8 bytes)
    assert_eq!(
        verdict(&fw, &v6_with_extensions(&[(44, later_fragment)], 53)),
        XDP_PASS,
        "a non-first fragment has no ports for port rules to match"
    );
    let five = [
        hop.clone(),
        routing.clone(),
        dest.clone(),
        auth.clone(),
        dest.clone(),
    ];
    assert_eq!(
        verdict(&fw, &v6_with_extensions(&five, 9)),
        XDP_DROP,
        "one header past the bound"
    );
    assert_eq!(counters(&fw).dropped_by_reason["too_many_headers"], 1);
    // An extension header cut short.
    let full = v6_with_extensions(&[routing], 9);
    assert_eq!(verdict(&fw, &full[..14 + 40 + 10]), XDP_DROP);
    assert_eq!(counters(&fw).dropped_by_reason["malformed"], 1);
}

#[test]
fn a_new_rule_set_replaces_the_old_one_in_one_switch() {
    let fw_rules_a = vec![rule(RuleAction::Drop, Some("10.0.0.66"), None, None)];
    let mut fw = firewall(&fw_rules_a, RuleAction::Allow);
    assert_eq!(verdict(&fw, &v4_udp(DENIED_V4, 9, 4)), XDP_DROP);
    assert_eq!(verdict(&fw, &v4_udp(ALLOWED_V4, 9, 4)), XDP_PASS);
    let rules_b = vec![rule(RuleAction::Drop, Some("10.0.0.2"), None, None)];
    let generation = apply_rules(&mut fw, &rules_b, RuleAction::Allow).unwrap();
    assert_eq!(
        verdict(&fw, &v4_udp(DENIED_V4, 9, 4)),
        XDP_PASS,
        "the old rule is gone"
    );
    assert_eq!(
        verdict(&fw, &v4_udp(ALLOWED_V4, 9, 4)),
        XDP_DROP,
        "the new rule is in force"
    );
    // And back: the generation that was idle is cleared and reused.
    let back = apply_rules(&mut fw, &[], RuleAction::Drop).unwrap();
    assert_ne!(back, generation);
    assert_eq!(
        verdict(&fw, &v4_udp(ALLOWED_V4, 9, 4)),
        XDP_DROP,
        "default deny now"
    );
    assert_eq!(verdict(&fw, &v4_udp(DENIED_V4, 9, 4)), XDP_DROP);
    assert_eq!(counters(&fw).dropped_by_reason["default_policy"], 2);
}

/// Crafts a frame with exactly the fields of `p` (ports only where `p` has them).
fn craft(p: &actors::rules::PacketSummary) -> Vec<u8> {
    use std::net::IpAddr;
    let mut out = Vec::new();
    let payload = [0u8; 8];
    match (p.source, p.dest) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let ip = PacketBuilder::ethernet2(MAC_B, MAC_A).ipv4(s.octets(), d.octets(), 64);
            match (p.protocol, p.source_port, p.dest_port) {
                (6, Some(sp), Some(dp)) => {
                    ip.tcp(sp, dp, 1, 1024).write(&mut out, &payload).unwrap()
                }
                (17, Some(sp), Some(dp)) => ip.udp(sp, dp).write(&mut out, &payload).unwrap(),
                (1, _, _) => ip
                    .icmpv4_echo_request(1, 1)
                    .write(&mut out, &payload)
                    .unwrap(),
                (proto_number, None, None) if proto_number == 6 || proto_number == 17 => {
                    // A non-first fragment: its bytes after the IP header are payload.
                    ip.udp(1, 1).write(&mut out, &payload).unwrap();
                    out[14 + 9] = proto_number;
                    out[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes());
                }
                (other, _, _) => ip
                    .write(&mut out, etherparse::IpNumber(other), &payload)
                    .unwrap(),
            }
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let ip = PacketBuilder::ethernet2(MAC_B, MAC_A).ipv6(s.octets(), d.octets(), 64);
            match (p.protocol, p.source_port, p.dest_port) {
                (6, Some(sp), Some(dp)) => {
                    ip.tcp(sp, dp, 1, 1024).write(&mut out, &payload).unwrap()
                }
                (17, Some(sp), Some(dp)) => ip.udp(sp, dp).write(&mut out, &payload).unwrap(),
                (58, _, _) => ip
                    .icmpv6_echo_request(1, 1)
                    .write(&mut out, &payload)
                    .unwrap(),
                (other, None, None) if other != 6 && other != 17 => ip
                    .write(&mut out, etherparse::IpNumber(other), &payload)
                    .unwrap(),
                _ => return Vec::new(),
            }
        }
        _ => unreachable!("sample packets keep one family"),
    }
    out
}

#[test]
fn the_kernel_agrees_with_explain_on_random_rule_sets_and_packets() {
    require_root();
    for verdict_cache in [true, false] {
        agrees_with_explain(verdict_cache);
    }
}

/// Each packet is judged twice (with the cache on, the second is answered from it), and the
/// packets of the rule set before are judged again under the new one: a verdict cached under
/// an older rule set must not answer.
fn agrees_with_explain(verdict_cache: bool) {
    use actors::rules::{compile, sample};
    let mut r = sample::Rng(0x2545_f491_4f6c_dd1d);
    let mut ebpf = load_firewall_with(None, verdict_cache);
    let mut checked = 0;
    let mut recent: Vec<(_, Vec<u8>)> = Vec::new();
    for _ in 0..60 {
        let rules: Vec<FirewallRule> = (0..1 + r.below(12))
            .map(|_| sample::random_rule(&mut r))
            .collect();
        let default = if r.chance(50) {
            RuleAction::Drop
        } else {
            RuleAction::Allow
        };
        let compiled = compile(&rules, default).unwrap();
        actors::firewall::install(&mut ebpf, &compiled).unwrap();
        let before = std::mem::take(&mut recent);
        for _ in 0..40 {
            let p = sample::random_packet(&mut r);
            let frame = craft(&p);
            if frame.is_empty() {
                continue; // v6 fragments are crafted in the extension-header test
            }
            recent.push((p, frame));
        }
        for (p, frame) in before.iter().chain(&recent) {
            let expected = match compiled.evaluate(p).action {
                RuleAction::Allow => XDP_PASS,
                RuleAction::Drop => XDP_DROP,
            };
            for _ in 0..2 {
                assert_eq!(
                    verdict(&ebpf, frame),
                    expected,
                    "verdict cache {verdict_cache}: rules {rules:#?}\npacket {p:?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 4000, "only {checked} packets checked");
}

fn firewall_with_flows(rules: &[FirewallRule], table_size: u32) -> Fw {
    let mut ebpf = load_firewall(Some(table_size));
    apply_rules(&mut ebpf, rules, RuleAction::Allow).unwrap();
    ebpf
}

#[test]
fn flows_are_counted_exactly_per_five_tuple() {
    let fw = firewall_with_flows(
        &[rule(RuleAction::Drop, Some("10.0.0.66"), None, None)],
        1024,
    );
    let a = v4_udp(ALLOWED_V4, 5000, 100);
    let b = v4_udp(ALLOWED_V4, 5001, 10);
    let d = v4_udp(DENIED_V4, 5000, 10);
    let syn = v4_tcp(ALLOWED_V4, 443);
    for _ in 0..7 {
        verdict(&fw, &a);
    }
    for _ in 0..3 {
        verdict(&fw, &b);
    }
    for _ in 0..5 {
        verdict(&fw, &d);
    }
    verdict(&fw, &syn);
    verdict(&fw, &arp()); // not IP: no flow
    let (flows, table) = actors::flowtable::read_flows(&fw, "fw-1").unwrap();
    let find = |src: &str, dport: u16| {
        flows
            .iter()
            .find(|f| f.source.to_string() == src && f.destination_port == dport)
            .unwrap_or_else(|| panic!("no flow {src} -> {dport} in {flows:#?}"))
    };
    let fa = find("10.0.0.2", 5000);
    assert_eq!((fa.packets, fa.bytes), (7, 7 * a.len() as u64));
    assert_eq!(fa.protocol, "udp");
    assert_eq!(fa.source_port, 40000);
    assert_eq!(fa.verdict, actors::api::FlowVerdict::Forwarded);
    assert!(fa.first_seen <= fa.last_seen, "{fa:?}");
    assert_eq!(find("10.0.0.2", 5001).packets, 3);
    let fd = find("10.0.0.66", 5000);
    assert_eq!(
        (fd.packets, fd.verdict),
        (5, actors::api::FlowVerdict::Dropped)
    );
    let ft = find("10.0.0.2", 443);
    assert_eq!(
        (ft.protocol.as_str(), ft.tcp_flags.as_str()),
        ("tcp", "SYN")
    );
    assert_eq!(flows.len(), 4);
    // The flows sit in the CPUs' caches; those that shared a slot were written back.
    assert_eq!((table.entries, table.evicted, table.capacity), (4, 0, 1024));
    assert_eq!(table.inserts, table.table_entries);

    // One packet in LATENCY_SAMPLE_EVERY is timed, IP or not.
    for _ in 0..(2 * ebpf_shared::LATENCY_SAMPLE_EVERY - 17) {
        verdict(&fw, &arp());
    }
    let latency: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(fw.map(ebpf_shared::maps::FW_LATENCY).unwrap()).unwrap();
    let timed: u64 = (0..ebpf_shared::LATENCY_BUCKETS)
        .map(|b| latency.get(&b, 0).unwrap().iter().sum::<u64>())
        .sum();
    assert_eq!(timed, 2, "128 packets, one in 64 timed");
}

#[test]
fn flows_lost_to_table_pressure_are_counted() {
    // More flows than the caches (FLOW_CACHE_SLOTS per CPU) and the table (64) hold: the
    // ones pushed out of a cache go to the table, which evicts.
    const FLOWS: u16 = 3000;
    let fw = firewall_with_flows(&[], 64);
    for port in 1..=FLOWS {
        verdict(&fw, &v4_udp(ALLOWED_V4, port, 4));
    }
    let (flows, table) = actors::flowtable::read_flows(&fw, "fw-1").unwrap();
    let cpus = aya::util::nr_cpus().unwrap() as u64;
    let cached = u64::from(ebpf_shared::FLOW_CACHE_SLOTS) * cpus;
    assert!(
        table.inserts >= u64::from(FLOWS) - cached,
        "flows pushed out of the caches go into the table: {table:?}"
    );
    assert!(
        table.table_entries <= 64 + 16,
        "the LRU keeps about its capacity: {table:?}"
    );
    assert_eq!(table.evicted, table.inserts - table.table_entries);
    // Every flow had one packet: it is tracked, or it was evicted (once).
    assert_eq!(
        flows.len() as u64 + table.evicted + table.insert_failures,
        u64::from(FLOWS),
        "{table:?}"
    );
    assert!(flows.iter().all(|f| f.packets == 1));
}

/// Ports whose flows (from `ALLOWED_V4`, UDP) share a CPU cache slot.
fn ports_sharing_a_slot(n: usize) -> Vec<u16> {
    let key = |port: u16| ebpf_shared::FlowKeyV4 {
        src: u32::from_ne_bytes(ALLOWED_V4),
        dst: u32::from_ne_bytes(DST_V4),
        source_port: 40000,
        dest_port: port,
        ifindex: 1,
        protocol: ebpf_shared::proto::UDP,
        direction: 0,
        _pad: 0,
    };
    let slot = key(1000).cache_slot();
    let ports: Vec<u16> = (1000..u16::MAX)
        .filter(|p| key(*p).cache_slot() == slot)
        .take(n)
        .collect();
    assert_eq!(ports.len(), n);
    ports
}

#[test]
fn flows_that_share_a_cache_slot_are_written_back_and_counted_exactly() {
    let fw = firewall_with_flows(&[], 1024);
    // PROG_TEST_RUN gives the program ifindex 1 (lo).
    let ports = ports_sharing_a_slot(3);
    for round in 0..10usize {
        for (i, port) in ports.iter().enumerate() {
            // Each takes the slot from the one before: a write-back and a table lookup.
            if round < 10 - i * 3 {
                verdict(&fw, &v4_udp(ALLOWED_V4, *port, 10 + i));
            }
        }
    }
    let (flows, table) = actors::flowtable::read_flows(&fw, "fw-1").unwrap();
    assert_eq!(flows.len(), 3, "{flows:#?}");
    for (i, port) in ports.iter().enumerate() {
        let f = flows
            .iter()
            .find(|f| f.destination_port == *port)
            .unwrap_or_else(|| panic!("no flow to {port}: {flows:#?}"));
        let expected = 10 - i as u64 * 3;
        let len = v4_udp(ALLOWED_V4, *port, 10 + i).len() as u64;
        assert_eq!((f.packets, f.bytes), (expected, expected * len), "{f:?}");
        assert!(f.first_seen <= f.last_seen);
    }
    // Each was inserted into the table once, at its first write-back, and updated in place
    // after that.
    assert_eq!(
        (table.inserts, table.evicted, table.insert_failures),
        (table.table_entries, 0, 0),
        "{table:?}"
    );
    assert!(table.table_entries >= 2, "{table:?}");
}

#[test]
fn removing_flows_clears_them_from_the_caches_and_the_table() {
    let fw = firewall_with_flows(&[], 1024);
    let ports = ports_sharing_a_slot(2);
    // The first flow is written back (in the table only), the second stays in the cache, a
    // third elsewhere stays too.
    verdict(&fw, &v4_udp(ALLOWED_V4, ports[0], 4));
    verdict(&fw, &v4_udp(ALLOWED_V4, ports[1], 4));
    verdict(&fw, &v4_udp(ALLOWED_V4, 7, 4));
    let mut maps = actors::flowtable::FlowMaps::open(&fw.pins).unwrap();
    let scan = maps.scan().unwrap();
    assert_eq!(scan.flows.len(), 3);
    let keys: Vec<ebpf_shared::FlowKey> = scan
        .flows
        .iter()
        .filter(|(k, _)| k.dest_port != 7)
        .map(|(k, _)| *k)
        .collect();
    let removed = maps.remove(&keys).unwrap();
    assert_eq!(removed.flows, 2, "{removed:?}");
    let scan = maps.scan().unwrap();
    assert_eq!(
        scan.flows
            .iter()
            .map(|(k, _)| k.dest_port)
            .collect::<Vec<_>>(),
        vec![7]
    );
    assert_eq!((scan.aged_out, scan.evicted()), (2, 0), "{scan:?}");
    // A removed flow that comes back starts again from nothing.
    verdict(&fw, &v4_udp(ALLOWED_V4, ports[1], 4));
    let (flows, _) = actors::flowtable::read_flows(&fw, "fw-1").unwrap();
    let back = flows
        .iter()
        .find(|f| f.destination_port == ports[1])
        .unwrap();
    assert_eq!(back.packets, 1);
}
