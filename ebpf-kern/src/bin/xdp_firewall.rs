//! `xdp_firewall`: the zero-trust XDP firewall.
//!
//! Decision order, the same one `x0tta6bl4-ebpf rules explain` computes:
//! 1. a frame that ends inside a header it announces is dropped (`malformed`), and so is an
//!    IPv6 extension-header chain longer than the parser follows (`too_many_headers`);
//! 2. non-IP frames (ARP, LLDP, …) pass: the firewall filters IP traffic;
//! 3. the first rule, in rule order, that matches decides (see `actors/src/rules.rs` for how
//!    the rule list becomes the tables below);
//! 4. else the default policy.
//!
//! Every rule table exists in two generations; `FW_CONFIG.generation` says which one packets
//! use, so user space can fill the other and switch with one store.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{BPF_F_NO_PREALLOC, xdp_action},
        macros::{map, xdp},
        maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
        programs::XdpContext,
    };
    use ebpf_kern::{Malformed, Packet, lowest_bit, parse};
    use ebpf_shared::{
        DropReason, FW_CIDR_MAX_ENTRIES, FW_PORT_MAX_ENTRIES, FieldMatch, FirewallConfig,
        FirewallStats, MISC_MAX_ENTRIES, MISC_SLOTS, NO_RULE, PortKey, RULE_WORDS, RuleSetHeader,
        action, field,
    };

    #[map]
    static FW_CONFIG: Array<FirewallConfig> = Array::with_max_entries(1, 0);
    #[map]
    static FW_STATS: PerCpuArray<FirewallStats> = PerCpuArray::with_max_entries(1, 0);

    /// The rule tables of one generation and the function that matches a packet against them.
    /// A macro rather than a function over map references: the verifier needs every map a
    /// helper call uses to be a constant at that call site.
    macro_rules! generation {
        ($decide:ident, $src4:ident, $src6:ident, $dst4:ident, $dst6:ident, $proto:ident,
         $sport:ident, $dport:ident, $misc:ident, $header:ident) => {
            #[map]
            static $src4: LpmTrie<[u8; 4], FieldMatch> =
                LpmTrie::with_max_entries(FW_CIDR_MAX_ENTRIES, BPF_F_NO_PREALLOC);
            #[map]
            static $src6: LpmTrie<[u8; 16], FieldMatch> =
                LpmTrie::with_max_entries(FW_CIDR_MAX_ENTRIES, BPF_F_NO_PREALLOC);
            #[map]
            static $dst4: LpmTrie<[u8; 4], FieldMatch> =
                LpmTrie::with_max_entries(FW_CIDR_MAX_ENTRIES, BPF_F_NO_PREALLOC);
            #[map]
            static $dst6: LpmTrie<[u8; 16], FieldMatch> =
                LpmTrie::with_max_entries(FW_CIDR_MAX_ENTRIES, BPF_F_NO_PREALLOC);
            #[map]
            static $proto: Array<FieldMatch> = Array::with_max_entries(256, 0);
            #[map]
            static $sport: HashMap<PortKey, FieldMatch> =
                HashMap::with_max_entries(FW_PORT_MAX_ENTRIES, BPF_F_NO_PREALLOC);
            #[map]
            static $dport: HashMap<PortKey, FieldMatch> =
                HashMap::with_max_entries(FW_PORT_MAX_ENTRIES, BPF_F_NO_PREALLOC);
            #[map]
            static $misc: Array<FieldMatch> = Array::with_max_entries(MISC_MAX_ENTRIES, 0);
            #[map]
            static $header: Array<RuleSetHeader> = Array::with_max_entries(1, 0);

            /// The encoded deciding rule, or `NO_RULE` with the default action.
            #[inline(always)]
            fn $decide(p: &Packet) -> (u32, u32) {
                let Some(h) = $header.get(0) else {
                    return (NO_RULE, action::ALLOW);
                };
                let active = h.active_fields;
                let mut best = if h.has_catch_all != 0 {
                    h.catch_all
                } else {
                    NO_RULE
                };
                let mut bits = [u64::MAX; RULE_WORDS];
                if active & (1 << field::SRC) != 0 {
                    let hit = if p.v6 {
                        $src6.get(&Key::new(128, p.src6))
                    } else {
                        $src4.get(&Key::new(32, p.src4))
                    };
                    fold(&mut best, &mut bits, hit.or_else(|| $misc.get(field::SRC)));
                }
                if active & (1 << field::DST) != 0 {
                    let hit = if p.v6 {
                        $dst6.get(&Key::new(128, p.dst6))
                    } else {
                        $dst4.get(&Key::new(32, p.dst4))
                    };
                    fold(&mut best, &mut bits, hit.or_else(|| $misc.get(field::DST)));
                }
                if active & (1 << field::PROTO) != 0 {
                    fold(&mut best, &mut bits, $proto.get(p.protocol as u32));
                }
                if active & (1 << field::SPORT) != 0 {
                    let hit = if p.has_ports {
                        let key = PortKey {
                            protocol: p.protocol,
                            _pad: 0,
                            port: p.source_port,
                        };
                        // SAFETY: the value is only read, before this program returns.
                        unsafe { $sport.get(&key) }
                    } else {
                        None
                    };
                    fold(
                        &mut best,
                        &mut bits,
                        hit.or_else(|| $misc.get(field::SPORT)),
                    );
                }
                if active & (1 << field::DPORT) != 0 {
                    let hit = if p.has_ports {
                        let key = PortKey {
                            protocol: p.protocol,
                            _pad: 0,
                            port: p.dest_port,
                        };
                        // SAFETY: as above.
                        unsafe { $dport.get(&key) }
                    } else {
                        None
                    };
                    fold(
                        &mut best,
                        &mut bits,
                        hit.or_else(|| $misc.get(field::DPORT)),
                    );
                }
                if h.has_complex != 0 {
                    for (w, word) in bits.iter().enumerate() {
                        if *word != 0 {
                            let slot = MISC_SLOTS + (w as u32) * 64 + lowest_bit(*word);
                            if let Some(s) = $misc.get(slot) {
                                best = min(best, s.first_simple);
                            }
                            break;
                        }
                    }
                }
                (best, h.default_action)
            }
        };
    }

    generation!(
        decide_0,
        FW_SRC_V4_0,
        FW_SRC_V6_0,
        FW_DST_V4_0,
        FW_DST_V6_0,
        FW_PROTO_0,
        FW_SPORT_0,
        FW_DPORT_0,
        FW_MISC_0,
        FW_HEADER_0
    );
    generation!(
        decide_1,
        FW_SRC_V4_1,
        FW_SRC_V6_1,
        FW_DST_V4_1,
        FW_DST_V6_1,
        FW_PROTO_1,
        FW_SPORT_1,
        FW_DPORT_1,
        FW_MISC_1,
        FW_HEADER_1
    );

    #[inline(always)]
    fn min(a: u32, b: u32) -> u32 {
        if b < a { b } else { a }
    }

    /// Folds one field's answer in. A field whose table (and miss entry) is missing matches
    /// no rule, which is what an all-zero entry would say too.
    #[inline(always)]
    fn fold(best: &mut u32, bits: &mut [u64; RULE_WORDS], m: Option<&FieldMatch>) {
        match m {
            Some(m) => {
                *best = min(*best, m.first_simple);
                for w in 0..RULE_WORDS {
                    bits[w] &= m.bits[w];
                }
            }
            None => *bits = [0; RULE_WORDS],
        }
    }

    enum Verdict {
        Pass,
        Drop(DropReason),
    }

    #[xdp]
    pub fn xdp_firewall(ctx: XdpContext) -> u32 {
        let start = ctx.data();
        let end = ctx.data_end();
        let verdict = decide(start, end);
        let len = (end - start) as u64;
        if let Some(stats) = FW_STATS.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
            let stats = unsafe { &mut *stats };
            stats.processed_packets += 1;
            stats.processed_bytes += len;
            match verdict {
                Verdict::Pass => {
                    stats.passed_packets += 1;
                    stats.passed_bytes += len;
                }
                Verdict::Drop(reason) => {
                    stats.dropped_packets += 1;
                    stats.dropped_bytes += len;
                    let i = reason as usize;
                    if i < stats.dropped_by_reason.len() {
                        stats.dropped_by_reason[i] += 1;
                    }
                }
            }
        }
        match verdict {
            Verdict::Pass => xdp_action::XDP_PASS,
            Verdict::Drop(_) => xdp_action::XDP_DROP,
        }
    }

    #[inline(always)]
    fn decide(start: usize, end: usize) -> Verdict {
        let packet = match parse(start, end) {
            Ok(Some(p)) => p,
            Ok(None) => return Verdict::Pass,
            Err(Malformed::Truncated) => return Verdict::Drop(DropReason::Malformed),
            Err(Malformed::TooManyHeaders) => return Verdict::Drop(DropReason::TooManyHeaders),
        };
        let generation = FW_CONFIG.get(0).map(|c| c.generation).unwrap_or(0);
        let (best, default_action) = if generation == 0 {
            decide_0(&packet)
        } else {
            decide_1(&packet)
        };
        if best == NO_RULE {
            return if default_action == action::DROP {
                Verdict::Drop(DropReason::DefaultPolicy)
            } else {
                Verdict::Pass
            };
        }
        if best & 1 == 1 {
            Verdict::Drop(DropReason::Rule)
        } else {
            Verdict::Pass
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "xdp_firewall is a kernel program: it is built for bpfel-unknown-none and loaded by x0tta6bl4-ebpfd"
    );
}
