//! The firewall rule compiler: an ordered rule list → the tables `xdp_firewall` matches
//! packets against, and the same matching done in user space (`rules explain`).
//!
//! Semantics: rules are evaluated in order and the first rule that matches decides; when none
//! matches, the default policy does. A rule matches when every field it constrains matches.
//!
//! How the kernel gets there without walking the list: every field has a table (address
//! tries, a protocol array, port hashes). A table entry says which rules that constrain only
//! this field ("simple" rules) match here, as the earliest one (encoded so that `min` picks
//! the earliest), and which rules that constrain several fields ("complex" rules, at most
//! `MAX_COMPLEX_RULES`) this field allows, as a bit mask. The answer is the minimum of the
//! simple hits and of the lowest complex rule whose bit survives the AND of all fields.
//! A field no rule constrains is not looked up at all.

use std::collections::HashMap;
use std::net::IpAddr;

use ebpf_shared::{
    FieldMatch, MAX_COMPLEX_RULES, MAX_RULES, NO_RULE, PortKey, RULE_WORDS, RuleSetHeader, action,
    encode_rule, field, proto,
};

use crate::api::{Cidr, FirewallRule, PortRange, RuleAction};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("rule #{} ({rule}): {message}", index + 1)]
    Invalid {
        index: usize,
        rule: String,
        message: String,
    },
    #[error(
        "{count} rules combine several fields (source, destination, protocol, ports); at most \
         {MAX_COMPLEX_RULES} can: split some into single-field rules"
    )]
    TooManyComplex { count: usize },
    #[error("{count} rules; at most {MAX_RULES}")]
    TooMany { count: usize },
}

/// What a packet looks like to the firewall: the fields rules can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketSummary {
    pub source: IpAddr,
    pub dest: IpAddr,
    pub protocol: u8,
    /// `None` for protocols without ports and for non-first fragments.
    pub source_port: Option<u16>,
    pub dest_port: Option<u16>,
}

/// The outcome of matching one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The index of the rule that decided, `None` for the default policy.
    pub rule: Option<usize>,
    pub action: RuleAction,
}

/// An address table: (prefix length, network bytes) → entry. Longest prefix wins.
pub type CidrTable<const N: usize> = HashMap<(u8, [u8; N]), FieldMatch>;

/// A rule set compiled into the kernel's tables.
#[derive(Debug, Clone)]
pub struct CompiledRules {
    pub header: RuleSetHeader,
    pub src_v4: CidrTable<4>,
    pub src_v6: CidrTable<16>,
    pub dst_v4: CidrTable<4>,
    pub dst_v6: CidrTable<16>,
    /// Indexed by IP protocol number (256 entries).
    pub proto: Vec<FieldMatch>,
    pub sport: HashMap<PortKey, FieldMatch>,
    pub dport: HashMap<PortKey, FieldMatch>,
    /// Per field: the value when its table has no entry for the packet.
    pub misses: [FieldMatch; field::COUNT as usize],
    /// Complex rule slot → encoded rule.
    pub slots: Vec<u32>,
}

/// Which fields a rule constrains, and the protocols its ports belong to.
struct Shape {
    src: Option<Cidr>,
    dst: Option<Cidr>,
    /// Only when the rule has no ports: ports imply their protocol through the port keys.
    proto: Option<u8>,
    sport: Option<PortRange>,
    dport: Option<PortRange>,
    port_protocols: Vec<u8>,
}

impl Shape {
    fn of(rule: &FirewallRule) -> Shape {
        let dport = rule.dest_ports();
        let sport = rule.source_port;
        let has_ports = dport.is_some() || sport.is_some();
        let port_protocols = match rule.protocol_number() {
            Some(p) => vec![p],
            None => vec![proto::TCP, proto::UDP],
        };
        Shape {
            src: rule.source_ip,
            dst: rule.dest_ip,
            proto: if has_ports {
                None
            } else {
                rule.protocol_number()
            },
            sport,
            dport,
            port_protocols,
        }
    }

    fn fields(&self) -> Vec<u32> {
        let mut f = Vec::new();
        if self.src.is_some() {
            f.push(field::SRC);
        }
        if self.dst.is_some() {
            f.push(field::DST);
        }
        if self.proto.is_some() {
            f.push(field::PROTO);
        }
        if self.sport.is_some() {
            f.push(field::SPORT);
        }
        if self.dport.is_some() {
            f.push(field::DPORT);
        }
        f
    }
}

/// What a rule contributes to the entries of a field it constrains.
#[derive(Clone, Copy)]
enum Contribution {
    Simple(u32),
    Complex(usize),
}

impl Contribution {
    fn apply(self, m: &mut FieldMatch) {
        match self {
            Contribution::Simple(enc) => m.first_simple = m.first_simple.min(enc),
            Contribution::Complex(slot) => m.bits[slot / 64] |= 1u64 << (slot % 64),
        }
    }
}

fn network_bytes<const N: usize>(cidr: &Cidr) -> Option<(u8, [u8; N])> {
    let bytes: Vec<u8> = match cidr.0.network() {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let arr: [u8; N] = bytes.try_into().ok()?;
    Some((cidr.0.prefix_len(), arr))
}

/// `bytes` with every bit past `len` cleared.
fn truncate<const N: usize>(bytes: &[u8; N], len: u8) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in bytes.iter().enumerate() {
        let bit = i * 8;
        if bit + 8 <= len as usize {
            out[i] = *b;
        } else if bit < len as usize {
            out[i] = b & (0xffu8 << (8 - (len as usize - bit)));
        }
    }
    out
}

/// Builds one address table: an entry per distinct network, holding what every rule whose
/// network covers it contributes (so the longest-prefix entry alone answers for a packet).
fn cidr_table<const N: usize>(rules: &[(Cidr, Contribution)], miss: FieldMatch) -> CidrTable<N> {
    let mut own: HashMap<(u8, [u8; N]), Vec<Contribution>> = HashMap::new();
    for (cidr, c) in rules {
        if let Some(key) = network_bytes::<N>(cidr) {
            own.entry(key).or_default().push(*c);
        }
    }
    let mut table = CidrTable::with_capacity(own.len());
    for &(len, net) in own.keys() {
        let mut m = miss;
        for l in 0..=len {
            if let Some(cs) = own.get(&(l, truncate(&net, l))) {
                for c in cs {
                    c.apply(&mut m);
                }
            }
        }
        table.insert((len, net), m);
    }
    table
}

fn lookup_cidr<const N: usize>(table: &CidrTable<N>, bytes: [u8; N]) -> Option<&FieldMatch> {
    (0..=(N * 8) as u8)
        .rev()
        .find_map(|l| table.get(&(l, truncate(&bytes, l))))
}

/// Compiles `rules` (in order) and the default policy.
pub fn compile(
    rules: &[FirewallRule],
    default_policy: RuleAction,
) -> Result<CompiledRules, CompileError> {
    if rules.len() > MAX_RULES {
        return Err(CompileError::TooMany { count: rules.len() });
    }
    let shapes: Vec<Shape> = rules.iter().map(Shape::of).collect();
    for (index, rule) in rules.iter().enumerate() {
        rule.validate().map_err(|message| CompileError::Invalid {
            index,
            rule: rule.to_string(),
            message,
        })?;
    }
    let complex_count = shapes.iter().filter(|s| s.fields().len() > 1).count();
    if complex_count > MAX_COMPLEX_RULES {
        return Err(CompileError::TooManyComplex {
            count: complex_count,
        });
    }

    let mut header = RuleSetHeader {
        default_action: match default_policy {
            RuleAction::Allow => action::ALLOW,
            RuleAction::Drop => action::DROP,
        },
        catch_all: NO_RULE,
        ..Default::default()
    };
    let mut slots = Vec::new();
    let mut contributions: Vec<Option<Contribution>> = Vec::with_capacity(rules.len());
    for (index, (rule, shape)) in rules.iter().zip(&shapes).enumerate() {
        let enc = encode_rule(index as u32, rule.action == RuleAction::Drop);
        let fields = shape.fields();
        for f in &fields {
            header.active_fields |= 1 << f;
        }
        contributions.push(match fields.len() {
            0 => {
                if header.has_catch_all == 0 {
                    header.has_catch_all = 1;
                    header.catch_all = enc;
                }
                None
            }
            1 => Some(Contribution::Simple(enc)),
            _ => {
                slots.push(enc);
                Some(Contribution::Complex(slots.len() - 1))
            }
        });
    }
    header.has_complex = u32::from(!slots.is_empty());

    // Complex rules that do not constrain a field pass it whatever its value.
    let mut misses = [FieldMatch::EMPTY; field::COUNT as usize];
    for (shape, c) in shapes.iter().zip(&contributions) {
        if let Some(Contribution::Complex(slot)) = c {
            let fields = shape.fields();
            for (f, miss) in misses.iter_mut().enumerate() {
                if !fields.contains(&(f as u32)) {
                    Contribution::Complex(*slot).apply(miss);
                }
            }
        }
    }

    let mut src = Vec::new();
    let mut dst = Vec::new();
    let mut proto_table = vec![misses[field::PROTO as usize]; 256];
    let mut sport = HashMap::new();
    let mut dport = HashMap::new();
    for (shape, c) in shapes.iter().zip(&contributions) {
        let Some(c) = *c else { continue };
        if let Some(cidr) = shape.src {
            src.push((cidr, c));
        }
        if let Some(cidr) = shape.dst {
            dst.push((cidr, c));
        }
        if let Some(p) = shape.proto {
            c.apply(&mut proto_table[p as usize]);
        }
        for (range, table, f) in [
            (shape.sport, &mut sport, field::SPORT),
            (shape.dport, &mut dport, field::DPORT),
        ] {
            let Some(range) = range else { continue };
            for &protocol in &shape.port_protocols {
                for port in range.first..=range.last {
                    let key = PortKey {
                        protocol,
                        _pad: 0,
                        port,
                    };
                    c.apply(table.entry(key).or_insert(misses[f as usize]));
                }
            }
        }
    }
    let (v4, v6): (Vec<_>, Vec<_>) = src.into_iter().partition(|(c, _)| c.0.addr().is_ipv4());
    let (dv4, dv6): (Vec<_>, Vec<_>) = dst.into_iter().partition(|(c, _)| c.0.addr().is_ipv4());
    Ok(CompiledRules {
        header,
        src_v4: cidr_table(&v4, misses[field::SRC as usize]),
        src_v6: cidr_table(&v6, misses[field::SRC as usize]),
        dst_v4: cidr_table(&dv4, misses[field::DST as usize]),
        dst_v6: cidr_table(&dv6, misses[field::DST as usize]),
        proto: proto_table,
        sport,
        dport,
        misses,
        slots,
    })
}

impl CompiledRules {
    fn active(&self, f: u32) -> bool {
        self.header.active_fields & (1 << f) != 0
    }

    fn address_match(&self, f: u32, ip: IpAddr) -> FieldMatch {
        let (v4, v6) = if f == field::SRC {
            (&self.src_v4, &self.src_v6)
        } else {
            (&self.dst_v4, &self.dst_v6)
        };
        let found = match ip {
            IpAddr::V4(a) => lookup_cidr(v4, a.octets()),
            IpAddr::V6(a) => lookup_cidr(v6, a.octets()),
        };
        found.copied().unwrap_or(self.misses[f as usize])
    }

    fn port_match(&self, f: u32, protocol: u8, port: Option<u16>) -> FieldMatch {
        let table = if f == field::SPORT {
            &self.sport
        } else {
            &self.dport
        };
        port.and_then(|port| {
            table
                .get(&PortKey {
                    protocol,
                    _pad: 0,
                    port,
                })
                .copied()
        })
        .unwrap_or(self.misses[f as usize])
    }

    /// The verdict for `p`, computed exactly as `xdp_firewall` computes it from these tables.
    pub fn evaluate(&self, p: &PacketSummary) -> Verdict {
        let mut best = if self.header.has_catch_all != 0 {
            self.header.catch_all
        } else {
            NO_RULE
        };
        let mut bits = [u64::MAX; RULE_WORDS];
        let mut fold = |m: FieldMatch| {
            best = best.min(m.first_simple);
            for (b, w) in bits.iter_mut().zip(m.bits) {
                *b &= w;
            }
        };
        if self.active(field::SRC) {
            fold(self.address_match(field::SRC, p.source));
        }
        if self.active(field::DST) {
            fold(self.address_match(field::DST, p.dest));
        }
        if self.active(field::PROTO) {
            fold(self.proto[p.protocol as usize]);
        }
        if self.active(field::SPORT) {
            fold(self.port_match(field::SPORT, p.protocol, p.source_port));
        }
        if self.active(field::DPORT) {
            fold(self.port_match(field::DPORT, p.protocol, p.dest_port));
        }
        if self.header.has_complex != 0
            && let Some((w, word)) = bits.iter().enumerate().find(|(_, w)| **w != 0)
        {
            let slot = w * 64 + word.trailing_zeros() as usize;
            best = best.min(self.slots[slot]);
        }
        if best == NO_RULE {
            let action = if self.header.default_action == action::DROP {
                RuleAction::Drop
            } else {
                RuleAction::Allow
            };
            return Verdict { rule: None, action };
        }
        Verdict {
            rule: Some((best >> 1) as usize),
            action: if best & 1 == 1 {
                RuleAction::Drop
            } else {
                RuleAction::Allow
            },
        }
    }
}

/// Whether `rule` matches `p`, read straight from the rule (the reference semantics the
/// compiled tables must agree with).
pub fn rule_matches(rule: &FirewallRule, p: &PacketSummary) -> bool {
    let shape = Shape::of(rule);
    if let Some(c) = rule.source_ip
        && !c.contains(&p.source)
    {
        return false;
    }
    if let Some(c) = rule.dest_ip
        && !c.contains(&p.dest)
    {
        return false;
    }
    if let Some(n) = rule.protocol_number()
        && n != p.protocol
    {
        return false;
    }
    let ports_ok = |range: Option<PortRange>, port: Option<u16>| match range {
        None => true,
        Some(r) => {
            shape.port_protocols.contains(&p.protocol) && port.is_some_and(|port| r.contains(port))
        }
    };
    ports_ok(shape.sport, p.source_port) && ports_ok(shape.dport, p.dest_port)
}

/// First-match evaluation straight over the list.
pub fn first_match(
    rules: &[FirewallRule],
    default_policy: RuleAction,
    p: &PacketSummary,
) -> Verdict {
    match rules.iter().position(|r| rule_matches(r, p)) {
        Some(i) => Verdict {
            rule: Some(i),
            action: rules[i].action,
        },
        None => Verdict {
            rule: None,
            action: default_policy,
        },
    }
}

/// Random rule sets and packets drawn from small pools so that they overlap: for the property
/// tests (compiled tables vs. first match, kernel vs. `explain`) and the benchmarks.
pub mod sample {
    use std::net::IpAddr;

    use ebpf_shared::proto;

    use super::PacketSummary;
    use crate::api::{Cidr, FirewallRule, PortRange, Protocol, RuleAction};

    /// A small deterministic generator: the tests need variety, not cryptography.
    pub struct Rng(pub u64);
    impl Rng {
        pub fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }
        pub fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// Addresses from a few small pools so that random rules and packets overlap.
    fn address(r: &mut Rng, v6: bool) -> IpAddr {
        if v6 {
            format!("fd00::{:x}:{:x}", r.below(3), r.below(4))
                .parse()
                .unwrap()
        } else {
            format!("10.{}.{}.{}", r.below(2), r.below(3), r.below(4))
                .parse()
                .unwrap()
        }
    }

    pub fn random_rule(r: &mut Rng) -> FirewallRule {
        let v6 = r.chance(30);
        let cidr = |r: &mut Rng| {
            let ip = address(r, v6);
            let len = if v6 {
                [128, 120, 112, 64][r.below(4) as usize]
            } else {
                [32, 30, 24, 16, 8][r.below(5) as usize]
            };
            Cidr(ipnet::IpNet::new(ip, len).unwrap().trunc())
        };
        let protocol = match r.below(6) {
            0 => Some(Protocol::Tcp),
            1 => Some(Protocol::Udp),
            2 => Some(if v6 { Protocol::Icmpv6 } else { Protocol::Icmp }),
            3 => Some(Protocol::Any),
            _ => None,
        };
        let ports_ok = protocol.is_none_or(|p| p.has_ports());
        let range = |r: &mut Rng| {
            let first = 1 + r.below(6) as u16;
            PortRange {
                first,
                last: first + r.below(3) as u16,
            }
        };
        FirewallRule {
            action: if r.chance(50) {
                RuleAction::Drop
            } else {
                RuleAction::Allow
            },
            source_ip: r.chance(50).then(|| cidr(r)),
            dest_ip: r.chance(25).then(|| cidr(r)),
            protocol,
            port: None,
            source_port: (ports_ok && r.chance(20)).then(|| range(r)),
            dest_port: (ports_ok && r.chance(40)).then(|| range(r)),
        }
    }

    pub fn random_packet(r: &mut Rng) -> PacketSummary {
        let v6 = r.chance(30);
        let protocol = match r.below(5) {
            0 | 1 => proto::TCP,
            2 => proto::UDP,
            3 => {
                if v6 {
                    proto::ICMPV6
                } else {
                    proto::ICMP
                }
            }
            _ => 47, // GRE: no ports
        };
        let has_ports = (protocol == proto::TCP || protocol == proto::UDP) && r.chance(90);
        PacketSummary {
            source: address(r, v6),
            dest: address(r, v6),
            protocol,
            source_port: has_ports.then(|| 1 + r.below(9) as u16),
            dest_port: has_ports.then(|| 1 + r.below(9) as u16),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sample::{Rng, random_packet, random_rule};
    use super::*;

    fn rule(json: &str) -> FirewallRule {
        serde_json::from_str(json).unwrap()
    }

    fn v4(s: &str, d: &str, protocol: u8, sport: Option<u16>, dport: Option<u16>) -> PacketSummary {
        PacketSummary {
            source: s.parse().unwrap(),
            dest: d.parse().unwrap(),
            protocol,
            source_port: sport,
            dest_port: dport,
        }
    }

    #[test]
    fn first_match_wins_across_simple_and_complex_rules() {
        let rules = vec![
            rule(r#"{"action":"allow","source_ip":"10.0.0.5","protocol":"tcp","port":22}"#),
            rule(r#"{"action":"drop","protocol":"tcp","port":22}"#),
            rule(r#"{"action":"drop","source_ip":"10.0.0.0/8"}"#),
            rule(r#"{"action":"allow","source_ip":"10.1.0.0/16"}"#),
            rule(r#"{"action":"allow","protocol":"icmp"}"#),
        ];
        let c = compile(&rules, RuleAction::Allow).unwrap();
        let cases = [
            (
                v4("10.0.0.5", "1.1.1.1", 6, Some(999), Some(22)),
                Some(0),
                RuleAction::Allow,
            ),
            (
                v4("10.0.0.6", "1.1.1.1", 6, Some(999), Some(22)),
                Some(1),
                RuleAction::Drop,
            ),
            (
                v4("10.1.2.3", "1.1.1.1", 17, Some(9), Some(53)),
                Some(2),
                RuleAction::Drop,
            ),
            (
                v4("192.168.0.1", "1.1.1.1", 1, None, None),
                Some(4),
                RuleAction::Allow,
            ),
            (
                v4("192.168.0.1", "1.1.1.1", 17, Some(9), Some(53)),
                None,
                RuleAction::Allow,
            ),
        ];
        for (p, rule, action) in cases {
            assert_eq!(c.evaluate(&p), Verdict { rule, action }, "{p:?}");
            assert_eq!(
                first_match(&rules, RuleAction::Allow, &p),
                Verdict { rule, action }
            );
        }
    }

    #[test]
    fn nested_networks_carry_their_parents_rules() {
        let rules = vec![
            rule(r#"{"action":"drop","source_ip":"10.0.0.0/8","protocol":"udp"}"#),
            rule(r#"{"action":"allow","source_ip":"10.2.0.0/16"}"#),
            rule(r#"{"action":"drop","source_ip":"10.0.0.0/8"}"#),
        ];
        let c = compile(&rules, RuleAction::Allow).unwrap();
        // 10.2.x matches the /16 entry, which must still know rule 0 (/8 + udp) comes first.
        assert_eq!(
            c.evaluate(&v4("10.2.0.1", "1.1.1.1", 17, Some(1), Some(2)))
                .rule,
            Some(0)
        );
        assert_eq!(
            c.evaluate(&v4("10.2.0.1", "1.1.1.1", 6, Some(1), Some(2)))
                .rule,
            Some(1)
        );
        assert_eq!(
            c.evaluate(&v4("10.3.0.1", "1.1.1.1", 6, Some(1), Some(2)))
                .rule,
            Some(2)
        );
    }

    #[test]
    fn ports_without_a_protocol_mean_tcp_or_udp_and_fragments_have_none() {
        let rules = vec![rule(r#"{"action":"drop","port":"50-60"}"#)];
        let c = compile(&rules, RuleAction::Allow).unwrap();
        assert_eq!(
            c.evaluate(&v4("1.1.1.1", "2.2.2.2", 6, Some(1), Some(55)))
                .action,
            RuleAction::Drop
        );
        assert_eq!(
            c.evaluate(&v4("1.1.1.1", "2.2.2.2", 17, Some(1), Some(50)))
                .action,
            RuleAction::Drop
        );
        assert_eq!(
            c.evaluate(&v4("1.1.1.1", "2.2.2.2", 17, Some(1), Some(61)))
                .action,
            RuleAction::Allow
        );
        assert_eq!(
            c.evaluate(&v4("1.1.1.1", "2.2.2.2", 132, None, None))
                .action,
            RuleAction::Allow
        );
        assert_eq!(
            c.evaluate(&v4("1.1.1.1", "2.2.2.2", 17, None, None)).action,
            RuleAction::Allow
        );
    }

    #[test]
    fn too_many_complex_rules_is_an_error_that_says_what_to_do() {
        let rules: Vec<FirewallRule> = (0..=MAX_COMPLEX_RULES)
            .map(|i| {
                rule(&format!(
                    r#"{{"action":"drop","protocol":"tcp","port":{}}}"#,
                    i + 1
                ))
            })
            .collect();
        assert!(
            compile(&rules, RuleAction::Allow).is_ok(),
            "protocol+port is one field"
        );
        let rules: Vec<FirewallRule> = (0..=MAX_COMPLEX_RULES)
            .map(|i| {
                rule(&format!(
                    r#"{{"action":"drop","source_ip":"10.0.0.1","port":{}}}"#,
                    i + 1
                ))
            })
            .collect();
        let e = compile(&rules, RuleAction::Allow).unwrap_err().to_string();
        assert!(e.contains("split some"), "{e}");
    }

    #[test]
    fn compiled_tables_agree_with_first_match_on_random_rule_sets() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..400 {
            let rules: Vec<FirewallRule> =
                (0..1 + r.below(12)).map(|_| random_rule(&mut r)).collect();
            let default = if r.chance(50) {
                RuleAction::Drop
            } else {
                RuleAction::Allow
            };
            let c = compile(&rules, default).unwrap();
            for _ in 0..50 {
                let p = random_packet(&mut r);
                assert_eq!(
                    c.evaluate(&p),
                    first_match(&rules, default, &p),
                    "rules {rules:#?}\npacket {p:?}"
                );
            }
        }
    }
}
