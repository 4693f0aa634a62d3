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
//!
//! Two ways through: the fast path answers an untagged IPv4 TCP or UDP packet whose verdict
//! this CPU has cached under the current rule set; every other packet, and every miss, takes
//! the full path, which parses from the start and decides from the tables.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{BPF_EXIST, BPF_F_NO_PREALLOC, BPF_NOEXIST, xdp_action},
        helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
        macros::{map, xdp},
        maps::{Array, HashMap, LpmTrie, LruPerCpuHashMap, PerCpuArray, lpm_trie::Key},
        programs::XdpContext,
    };
    use ebpf_kern::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, Malformed, Packet, at, ethernet, highest_bit, ipv4, ipv6,
        lowest_bit,
    };
    use ebpf_shared::{
        Counter, FLOW_CACHE_SLOTS, FLOW_TABLE_DEFAULT_SIZE, FW_CIDR_MAX_ENTRIES,
        FW_EXACT_MAX_ENTRIES, FW_PORT_CLASSES, FastPath, FieldMatch, FirewallConfig,
        FlowCacheEntry, FlowKey, FlowKeyV4, FlowTableStats, FlowValue, LATENCY_BUCKETS,
        LATENCY_SAMPLE_EVERY, MISC_MAX_ENTRIES, MISC_SLOTS, NO_RULE, OUTCOMES, Outcome, PORTS,
        RULE_WORDS, RuleSetHeader, VERDICT_BLOCK_COUNTERS, VERDICT_BLOCK_SLOTS, VERDICT_BLOCKS,
        VERDICT_CACHE_SLOTS, VerdictBlock, VerdictEntryV4, VerdictKeyV4, action, field, proto,
        tables,
    };

    // Every map is pinned by name under the program's pin directory, so that a daemon that
    // restarts (or crashed) loads the program again onto the same maps: counters, flows and
    // rules carry on, and the pinned link keeps the program attached meanwhile.
    #[map]
    static FW_CONFIG: Array<FirewallConfig> = Array::pinned(1, 0);
    #[map]
    static FW_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(OUTCOMES, 0);
    /// Sized at load (`flow_table_size`); per CPU, so updates need no atomics.
    #[map]
    static FW_FLOWS4: LruPerCpuHashMap<FlowKeyV4, FlowValue> =
        LruPerCpuHashMap::pinned(FLOW_TABLE_DEFAULT_SIZE, 0);
    #[map]
    static FW_FLOWS: LruPerCpuHashMap<FlowKey, FlowValue> =
        LruPerCpuHashMap::pinned(FLOW_TABLE_DEFAULT_SIZE, 0);
    /// Each CPU's cache in front of the tables (`FlowCacheEntry`); pinned like the tables, as
    /// it holds the newest share of the flows in it.
    #[map]
    static FW_FLOW_CACHE4: PerCpuArray<FlowCacheEntry<FlowKeyV4>> =
        PerCpuArray::pinned(FLOW_CACHE_SLOTS, 0);
    #[map]
    static FW_FLOW_CACHE: PerCpuArray<FlowCacheEntry<FlowKey>> =
        PerCpuArray::pinned(FLOW_CACHE_SLOTS, 0);
    #[map]
    static FW_FLOW_STATS: PerCpuArray<FlowTableStats> = PerCpuArray::pinned(2, 0);
    #[map]
    static FW_LATENCY: PerCpuArray<u64> = PerCpuArray::pinned(LATENCY_BUCKETS, 0);

    // Each CPU's verdict caches: the outcome of the rules for a packet's matched fields,
    // tagged with the epoch of the rule set that gave it (`FirewallConfig::epoch`), so a
    // verdict counts only under the rule set it was taken with.

    /// IPv4, in blocks that also count the packets the fast path answers from them
    /// (`VerdictBlock`): one lookup finds the verdict and its counter. Pinned, for those
    /// counts.
    #[map]
    static FW_VERDICTS4: PerCpuArray<VerdictBlock> = PerCpuArray::pinned(VERDICT_BLOCKS, 0);
    /// IPv6. Not pinned: a new program starts with an empty one.
    #[map]
    static FW_VERDICTS6: PerCpuArray<VerdictEntry<VerdictKeyV6>> =
        PerCpuArray::with_max_entries(VERDICT_CACHE_SLOTS, 0);

    /// Set at load when flows are on (`enable_flow_observability`); a constant to the
    /// verifier, which drops the flow code when it is 0.
    #[unsafe(no_mangle)]
    static FLOWS_ENABLED: u8 = 0;

    /// Set at load (`enable_verdict_cache`); on unless the daemon says otherwise.
    #[unsafe(no_mangle)]
    static VERDICT_CACHE_ENABLED: u8 = 1;

    /// What the fast path answers for (`FastPath`, the only variable in this program's
    /// `.bss`): user space writes the epoch after it switches `FW_CONFIG`, so a verdict the
    /// fast path gives was taken under that rule set; 0 when it may not answer (flows on,
    /// verdict cache off, nothing installed yet). Not pinned: each program is given it when
    /// its rules are installed at load.
    #[unsafe(no_mangle)]
    static mut FW_FAST_PATH: FastPath = FastPath {
        epoch: 0,
        enabled: 0,
    };

    #[inline(always)]
    fn verdict_cache_enabled() -> bool {
        // SAFETY: as `flows_enabled`.
        unsafe { core::ptr::read_volatile(&VERDICT_CACHE_ENABLED) != 0 }
    }

    #[inline(always)]
    fn flows_enabled() -> bool {
        // SAFETY: a plain read of a constant; volatile so the compiler keeps the read
        // that aya patches at load time instead of folding in the 0 above.
        unsafe { core::ptr::read_volatile(&FLOWS_ENABLED) != 0 }
    }

    /// The rule tables of one generation and the function that matches a packet against them.
    /// A macro rather than a function over map references: the verifier needs every map a
    /// helper call uses to be a constant at that call site.
    macro_rules! generation {
        ($decide:ident, $src4:ident, $src6:ident, $dst4:ident, $dst6:ident, $src4x:ident,
         $src6x:ident, $dst4x:ident, $dst6x:ident, $proto:ident, $sport_tcp:ident,
         $sport_udp:ident, $dport_tcp:ident, $dport_udp:ident, $sport_class:ident,
         $dport_class:ident, $misc:ident, $header:ident) => {
            #[map]
            static $src4: LpmTrie<u32, FieldMatch> =
                LpmTrie::pinned(FW_CIDR_MAX_ENTRIES, BPF_F_NO_PREALLOC);
            #[map]
            static $src6: LpmTrie<[u32; 4], FieldMatch> =
                LpmTrie::pinned(FW_CIDR_MAX_ENTRIES, BPF_F_NO_PREALLOC);
            #[map]
            static $dst4: LpmTrie<u32, FieldMatch> =
                LpmTrie::pinned(FW_CIDR_MAX_ENTRIES, BPF_F_NO_PREALLOC);
            #[map]
            static $dst6: LpmTrie<[u32; 4], FieldMatch> =
                LpmTrie::pinned(FW_CIDR_MAX_ENTRIES, BPF_F_NO_PREALLOC);
            #[map]
            static $src4x: HashMap<u32, FieldMatch> =
                HashMap::pinned(FW_EXACT_MAX_ENTRIES, BPF_F_NO_PREALLOC);
            #[map]
            static $src6x: HashMap<[u32; 4], FieldMatch> =
                HashMap::pinned(FW_EXACT_MAX_ENTRIES, BPF_F_NO_PREALLOC);
            #[map]
            static $dst4x: HashMap<u32, FieldMatch> =
                HashMap::pinned(FW_EXACT_MAX_ENTRIES, BPF_F_NO_PREALLOC);
            #[map]
            static $dst6x: HashMap<[u32; 4], FieldMatch> =
                HashMap::pinned(FW_EXACT_MAX_ENTRIES, BPF_F_NO_PREALLOC);
            #[map]
            static $proto: Array<FieldMatch> = Array::pinned(256, 0);
            #[map]
            static $sport_tcp: Array<u64> = Array::pinned(PORTS, 0);
            #[map]
            static $sport_udp: Array<u64> = Array::pinned(PORTS, 0);
            #[map]
            static $dport_tcp: Array<u64> = Array::pinned(PORTS, 0);
            #[map]
            static $dport_udp: Array<u64> = Array::pinned(PORTS, 0);
            #[map]
            static $sport_class: Array<FieldMatch> = Array::pinned(FW_PORT_CLASSES, 0);
            #[map]
            static $dport_class: Array<FieldMatch> = Array::pinned(FW_PORT_CLASSES, 0);
            #[map]
            static $misc: Array<FieldMatch> = Array::pinned(MISC_MAX_ENTRIES, 0);
            #[map]
            static $header: Array<RuleSetHeader> = Array::pinned(1, 0);

            /// The encoded deciding rule, or `NO_RULE` with the default action.
            #[inline(always)]
            fn $decide(p: &Packet) -> (u32, u32) {
                let Some(h) = $header.get(0) else {
                    return (NO_RULE, action::ALLOW);
                };
                let active = h.active_fields;
                let t = h.address_tables;
                let complex = h.has_complex != 0;
                let mut best = if h.has_catch_all != 0 {
                    h.catch_all
                } else {
                    NO_RULE
                };
                let mut bits = [u64::MAX; RULE_WORDS];
                if active & (1 << field::SRC) != 0 {
                    // A host entry, when there is one, is the longest prefix: it already holds
                    // what every network around it says.
                    let hit = if p.v6 {
                        exact_then_cidr(
                            t & tables::SRC_V6_EXACT != 0,
                            t & tables::SRC_V6_CIDR != 0,
                            || unsafe { $src6x.get(&p.src) },
                            || $src6.get(&Key::new(128, p.src)),
                        )
                    } else {
                        exact_then_cidr(
                            t & tables::SRC_V4_EXACT != 0,
                            t & tables::SRC_V4_CIDR != 0,
                            || unsafe { $src4x.get(&p.src[0]) },
                            || $src4.get(&Key::new(32, p.src[0])),
                        )
                    };
                    fold(
                        complex,
                        &mut best,
                        &mut bits,
                        hit.or_else(|| $misc.get(field::SRC)),
                    );
                }
                if active & (1 << field::DST) != 0 {
                    let hit = if p.v6 {
                        exact_then_cidr(
                            t & tables::DST_V6_EXACT != 0,
                            t & tables::DST_V6_CIDR != 0,
                            || unsafe { $dst6x.get(&p.dst) },
                            || $dst6.get(&Key::new(128, p.dst)),
                        )
                    } else {
                        exact_then_cidr(
                            t & tables::DST_V4_EXACT != 0,
                            t & tables::DST_V4_CIDR != 0,
                            || unsafe { $dst4x.get(&p.dst[0]) },
                            || $dst4.get(&Key::new(32, p.dst[0])),
                        )
                    };
                    fold(
                        complex,
                        &mut best,
                        &mut bits,
                        hit.or_else(|| $misc.get(field::DST)),
                    );
                }
                if active & (1 << field::PROTO) != 0 {
                    fold(complex, &mut best, &mut bits, $proto.get(p.protocol as u32));
                }
                if active & (1 << field::SPORT) != 0 {
                    let entry = if !p.has_ports {
                        None
                    } else if p.protocol == proto::TCP {
                        $sport_tcp.get(p.source_port as u32)
                    } else {
                        $sport_udp.get(p.source_port as u32)
                    };
                    fold(
                        complex,
                        &mut best,
                        &mut bits,
                        $sport_class.get(port_class(entry, h.port_epoch)),
                    );
                }
                if active & (1 << field::DPORT) != 0 {
                    let entry = if !p.has_ports {
                        None
                    } else if p.protocol == proto::TCP {
                        $dport_tcp.get(p.dest_port as u32)
                    } else {
                        $dport_udp.get(p.dest_port as u32)
                    };
                    fold(
                        complex,
                        &mut best,
                        &mut bits,
                        $dport_class.get(port_class(entry, h.port_epoch)),
                    );
                }
                if complex {
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
        FW_SRC_V4_EXACT_0,
        FW_SRC_V6_EXACT_0,
        FW_DST_V4_EXACT_0,
        FW_DST_V6_EXACT_0,
        FW_PROTO_0,
        FW_SPORT_TCP_0,
        FW_SPORT_UDP_0,
        FW_DPORT_TCP_0,
        FW_DPORT_UDP_0,
        FW_SPORT_CLASS_0,
        FW_DPORT_CLASS_0,
        FW_MISC_0,
        FW_HEADER_0
    );
    generation!(
        decide_1,
        FW_SRC_V4_1,
        FW_SRC_V6_1,
        FW_DST_V4_1,
        FW_DST_V6_1,
        FW_SRC_V4_EXACT_1,
        FW_SRC_V6_EXACT_1,
        FW_DST_V4_EXACT_1,
        FW_DST_V6_EXACT_1,
        FW_PROTO_1,
        FW_SPORT_TCP_1,
        FW_SPORT_UDP_1,
        FW_DPORT_TCP_1,
        FW_DPORT_UDP_1,
        FW_SPORT_CLASS_1,
        FW_DPORT_CLASS_1,
        FW_MISC_1,
        FW_HEADER_1
    );

    #[inline(always)]
    fn exact_then_cidr<'a>(
        has_exact: bool,
        has_cidr: bool,
        exact: impl FnOnce() -> Option<&'a FieldMatch>,
        cidr: impl FnOnce() -> Option<&'a FieldMatch>,
    ) -> Option<&'a FieldMatch> {
        if has_exact && let Some(m) = exact() {
            return Some(m);
        }
        if has_cidr { cidr() } else { None }
    }

    /// The class of a port-array entry; 0 (no port rule here) for entries written by another
    /// install, and for packets without ports.
    #[inline(always)]
    fn port_class(entry: Option<&u64>, epoch: u32) -> u32 {
        match entry {
            Some(v) if (*v >> 32) as u32 == epoch => *v as u32,
            _ => 0,
        }
    }

    #[inline(always)]
    fn min(a: u32, b: u32) -> u32 {
        if b < a { b } else { a }
    }

    /// Folds one field's answer in; the complex-rule masks only when there are complex rules.
    /// A field whose table (and miss entry) is missing matches no rule, which is what an
    /// all-zero entry would say too.
    #[inline(always)]
    fn fold(complex: bool, best: &mut u32, bits: &mut [u64; RULE_WORDS], m: Option<&FieldMatch>) {
        match m {
            Some(m) => {
                *best = min(*best, m.first_simple);
                if complex {
                    for w in 0..RULE_WORDS {
                        bits[w] &= m.bits[w];
                    }
                }
            }
            None => *bits = [0; RULE_WORDS],
        }
    }

    #[xdp]
    pub fn xdp_firewall(ctx: XdpContext) -> u32 {
        // The fast path is off (epoch 0) with flows on or the verdict cache off: user space
        // sees to it, which saves every packet two checks here.
        if let Some(action) = fast_path(&ctx) {
            return action;
        }
        full_path(&ctx)
    }

    /// The fast path: an untagged IPv4 TCP or UDP packet, without options and not a later
    /// fragment, whose verdict this CPU has cached under the current rule set, is counted and
    /// answered here. Anything else (`None`) takes the full path.
    ///
    /// Measured, this is where the cost was: the full path carries every field of the packet
    /// for the tables and the flows, more values than BPF has registers to keep across a map
    /// lookup, so they went to the stack and back. This path reads the packet straight into
    /// the two words of the verdict key, keeps four values in all, and finds the verdict and
    /// the counter it adds the packet to with one lookup (`VerdictBlock`).
    #[inline(always)]
    fn fast_path(ctx: &XdpContext) -> Option<u32> {
        // SAFETY: a plain read of a global that user space writes whole.
        let epoch = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(FW_FAST_PATH.epoch)) };
        if epoch == 0 {
            return None;
        }
        let start = ctx.data();
        let end = ctx.data_end();
        let h = start + ETH_HLEN;
        if h + 20 > end || at::<u16>(start + 12) != ETH_P_IP.to_be() {
            return None;
        }
        // Version 4 without options, fragment offset 0 and a total length that covers the
        // header: what the full path parses the same way. The first eight header bytes in one
        // load: version and IHL in byte 0, the total length in bytes 2-3, the fragment offset
        // in the low 13 bits of bytes 6-7 (big-endian).
        let w: u64 = at(h);
        if w & 0xff1f_0000_0000_00ff != 0x45 || u16::from_be((w >> 16) as u16) < 20 {
            return None;
        }
        let t = h + 20;
        // The words `key_v4` makes of the parsed packet. `source_port << 16 | dest_port` is
        // the four port bytes read big-endian.
        let rest = match at::<u8>(h + 9) {
            proto::TCP if t + 20 <= end => {
                u32::from_be(at::<u32>(t)) as u64 | (proto::TCP as u64 | 1 << 8) << 32
            }
            proto::UDP if t + 8 <= end => {
                u32::from_be(at::<u32>(t)) as u64 | (proto::UDP as u64 | 1 << 8) << 32
            }
            _ => return None,
        };
        let addresses: u64 = at(h + 12);
        let key = VerdictKeyV4 { addresses, rest };
        let (block, slot) = block_v4(&key)?;
        let e = block.verdicts.get(slot)?;
        if !e.key.same(&key) || e.epoch != epoch {
            return None;
        }
        let outcome = e.outcome;
        // Counted in the block (user space adds these to `FW_STATS`): no second lookup.
        let c = &mut block.counters[outcome as usize & (VERDICT_BLOCK_COUNTERS - 1)];
        c.packets += 1;
        c.bytes += (ctx.data_end() - ctx.data()) as u64;
        Some(if outcome == Outcome::Passed as u32 {
            xdp_action::XDP_PASS
        } else {
            xdp_action::XDP_DROP
        })
    }

    /// The full path: parse, decide (from this CPU's verdict cache or the tables), count,
    /// time and account the flow.
    #[inline(always)]
    fn full_path(ctx: &XdpContext) -> u32 {
        let start = ctx.data();
        let end = ctx.data_end();
        // With flows on, one packet in LATENCY_SAMPLE_EVERY is timed from here to its verdict.
        let mut started = 0;
        if flows_enabled()
            && let Some(s) = FW_FLOW_STATS.get_ptr_mut(0)
        {
            // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
            let s = unsafe { &mut *s };
            s.packets += 1;
            if s.packets & (LATENCY_SAMPLE_EVERY - 1) == 0 {
                // SAFETY: the clock helpers have no preconditions.
                started = unsafe { bpf_ktime_get_ns() };
            }
        }
        // Each L3 family gets its own inlined copy of the verdict and of `finish`, in which
        // `Packet::v6` is a constant: the IPv4 copy never carries (or zeroes, on every
        // branch) the IPv6 address words.
        let Some((ethertype, l3)) = ethernet(start, end) else {
            return finish(ctx, Outcome::Malformed, None, started);
        };
        match ethertype {
            ETH_P_IP => match ipv4(start + l3, end) {
                Ok(p) => finish(ctx, judge(&p), Some(&p), started),
                Err(m) => finish(ctx, malformed(m), None, started),
            },
            ETH_P_IPV6 => match ipv6(start + l3, end) {
                Ok(p) => finish(ctx, judge(&p), Some(&p), started),
                Err(m) => finish(ctx, malformed(m), None, started),
            },
            // Not IP (ARP, LLDP, …): the firewall filters IP traffic.
            _ => finish(ctx, Outcome::Passed, None, started),
        }
    }

    #[inline(always)]
    fn malformed(m: Malformed) -> Outcome {
        match m {
            Malformed::Truncated => Outcome::Malformed,
            Malformed::TooManyHeaders => Outcome::TooManyHeaders,
        }
    }

    /// Counts the packet and, with flows on, records its processing time when it is timed
    /// (`started` non-zero) and adds it to its flow; then turns the outcome into the action.
    #[inline(always)]
    fn finish(ctx: &XdpContext, outcome: Outcome, packet: Option<&Packet>, started: u64) -> u32 {
        let len = (ctx.data_end() - ctx.data()) as u64;
        if let Some(c) = FW_STATS.get_ptr_mut(outcome as u32) {
            // SAFETY: a per-CPU slot, only this CPU writes it while the program runs.
            let c = unsafe { &mut *c };
            c.packets += 1;
            c.bytes += len;
        }
        if flows_enabled() {
            if started != 0 {
                // SAFETY: the clock helpers have no preconditions.
                let elapsed = unsafe { bpf_ktime_get_ns() }.saturating_sub(started);
                if let Some(b) = FW_LATENCY.get_ptr_mut(highest_bit(elapsed)) {
                    // SAFETY: a per-CPU slot.
                    unsafe { *b += 1 };
                }
            }
            if let Some(p) = packet {
                // SAFETY: as above.
                let now = unsafe { bpf_ktime_get_coarse_ns() };
                account(p, ctx.ingress_ifindex() as u32, len, outcome, now);
            }
        }
        match outcome {
            Outcome::Passed => xdp_action::XDP_PASS,
            _ => xdp_action::XDP_DROP,
        }
    }

    /// Adds the packet to its flow, in the cache and table of its IP family.
    #[inline(always)]
    fn account(p: &Packet, ifindex: u32, len: u64, outcome: Outcome, now: u64) {
        if p.v6 {
            let key = FlowKey {
                src: p.src,
                dst: p.dst,
                source_port: p.source_port,
                dest_port: p.dest_port,
                ifindex,
                protocol: p.protocol,
                family: 6,
                direction: 0,
                _pad: 0,
            };
            account_in(
                &FW_FLOW_CACHE,
                &FW_FLOWS,
                &key,
                p.tcp_flags,
                len,
                outcome,
                now,
            );
        } else {
            let key = FlowKeyV4 {
                src: p.src[0],
                dst: p.dst[0],
                source_port: p.source_port,
                dest_port: p.dest_port,
                ifindex,
                protocol: p.protocol,
                direction: 0,
                _pad: 0,
            };
            account_in(
                &FW_FLOW_CACHE4,
                &FW_FLOWS4,
                &key,
                p.tcp_flags,
                len,
                outcome,
                now,
            );
        }
    }

    /// What the cache needs of a flow key: its slot (`cache_slot`, shared with user space),
    /// and equality without `memcmp` (which BPF does not have).
    trait CacheKey: Copy {
        fn slot(&self) -> u32;
        fn same(&self, other: &Self) -> bool;
    }

    impl CacheKey for FlowKeyV4 {
        #[inline(always)]
        fn slot(&self) -> u32 {
            self.cache_slot()
        }

        #[inline(always)]
        fn same(&self, o: &Self) -> bool {
            self.src == o.src
                && self.dst == o.dst
                && self.source_port == o.source_port
                && self.dest_port == o.dest_port
                && self.ifindex == o.ifindex
                && self.protocol == o.protocol
                && self.direction == o.direction
        }
    }

    impl CacheKey for FlowKey {
        #[inline(always)]
        fn slot(&self) -> u32 {
            self.cache_slot()
        }

        #[inline(always)]
        fn same(&self, o: &Self) -> bool {
            let mut same = self.source_port == o.source_port
                && self.dest_port == o.dest_port
                && self.ifindex == o.ifindex
                && self.protocol == o.protocol
                && self.direction == o.direction;
            for i in 0..4 {
                same &= self.src[i] == o.src[i] && self.dst[i] == o.dst[i];
            }
            same
        }
    }

    /// Counts the packet in this CPU's cache slot of its flow. A flow new to the slot first
    /// writes the slot's previous flow back to the table, then starts from its own share in
    /// the table (looked up, not inserted: it is inserted when it is written back).
    #[inline(always)]
    fn account_in<K: CacheKey>(
        cache: &PerCpuArray<FlowCacheEntry<K>>,
        table: &LruPerCpuHashMap<K, FlowValue>,
        key: &K,
        tcp_flags: u8,
        len: u64,
        outcome: Outcome,
        now: u64,
    ) {
        let Some(e) = cache.get_ptr_mut(key.slot()) else {
            return;
        };
        // SAFETY: this CPU's slot; only this CPU writes it while the program runs.
        let e = unsafe { &mut *e };
        if e.value.packets == 0 || !e.key.same(key) {
            if e.value.packets != 0 {
                write_back(table, e);
            }
            // SAFETY: the share is copied out at once; it is this CPU's.
            match unsafe { table.get(key) } {
                Some(v) => {
                    e.value = *v;
                    e.in_table = 1;
                }
                None => {
                    e.value = FlowValue::default();
                    e.in_table = 0;
                }
            }
            if e.value.packets == 0 {
                e.value.first_seen_ns = now;
            }
            e.key = *key;
        }
        let v = &mut e.value;
        v.packets += 1;
        v.bytes += len;
        v.last_seen_ns = now;
        v.tcp_flags |= tcp_flags as u32;
        v.outcome = outcome as u32;
    }

    /// Writes a cached flow's share back to the table: in place when its entry is there
    /// (BPF_EXIST takes no free node, so it never evicts), else as a new entry.
    #[inline(always)]
    fn write_back<K: CacheKey>(table: &LruPerCpuHashMap<K, FlowValue>, e: &FlowCacheEntry<K>) {
        let key = e.key;
        let value = e.value;
        if e.in_table != 0 && table.insert(&key, &value, BPF_EXIST as u64).is_ok() {
            return;
        }
        let inserted = table.insert(&key, &value, BPF_NOEXIST as u64).is_ok();
        // Not inserted: the LRU had no room, or another CPU made the entry meanwhile.
        if !inserted && table.insert(&key, &value, BPF_EXIST as u64).is_ok() {
            return;
        }
        if let Some(s) = FW_FLOW_STATS.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot.
            let s = unsafe { &mut *s };
            if inserted {
                s.inserts += 1;
            } else {
                s.insert_failures += 1;
            }
        }
    }

    /// Everything of an IPv6 packet the rules can look at: addresses, ports, protocol, and
    /// whether it has ports at all (a non-first fragment has none). IPv4's is `VerdictKeyV4`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct VerdictKeyV6 {
        src: [u32; 4],
        dst: [u32; 4],
        ports: u32,
        protocol_ports: u32,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct VerdictEntry<K> {
        key: K,
        /// The rule set's epoch when the verdict was taken; 0: empty.
        epoch: u32,
        /// `Outcome` as u32.
        outcome: u32,
    }

    trait VerdictKey: Copy {
        fn slot(&self) -> u32;
        fn same(&self, other: &Self) -> bool;
    }

    /// Not a verdict: the cache has none for the packet.
    const MISS: u32 = u32::MAX;

    #[inline(always)]
    fn ports_of(p: &Packet) -> (u32, u32) {
        (
            ((p.source_port as u32) << 16) | p.dest_port as u32,
            p.protocol as u32 | ((p.has_ports as u32) << 8),
        )
    }

    /// Fibonacci hashing of a folded key onto the cache's slots.
    #[inline(always)]
    fn verdict_slot(folded: u32) -> u32 {
        folded.wrapping_mul(0x9E37_79B1) >> (32 - VERDICT_CACHE_SLOTS.trailing_zeros())
    }

    impl VerdictKey for VerdictKeyV4 {
        #[inline(always)]
        fn slot(&self) -> u32 {
            // Fibonacci hashing of the folded words, in 64 bits (one multiply). The top 16
            // bits of `rest` are 0, so the shift loses nothing.
            ((self.addresses ^ self.rest << 16).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                >> (64 - VERDICT_CACHE_SLOTS.trailing_zeros())) as u32
        }

        #[inline(always)]
        fn same(&self, o: &Self) -> bool {
            // One branch for both words.
            (self.addresses ^ o.addresses) | (self.rest ^ o.rest) == 0
        }
    }

    impl VerdictKeyV6 {
        #[inline(always)]
        fn of(p: &Packet) -> Self {
            let (ports, protocol_ports) = ports_of(p);
            VerdictKeyV6 {
                src: p.src,
                dst: p.dst,
                ports,
                protocol_ports,
            }
        }
    }

    impl VerdictKey for VerdictKeyV6 {
        #[inline(always)]
        fn slot(&self) -> u32 {
            let mut folded = self.ports ^ self.protocol_ports.rotate_left(24);
            for i in 0..4 {
                folded ^= self.src[i] ^ self.dst[i].rotate_left(16);
            }
            verdict_slot(folded)
        }

        #[inline(always)]
        fn same(&self, o: &Self) -> bool {
            let mut same = self.ports == o.ports && self.protocol_ports == o.protocol_ports;
            for i in 0..4 {
                same &= self.src[i] == o.src[i] && self.dst[i] == o.dst[i];
            }
            same
        }
    }

    /// This CPU's cached verdict for `key` under the rule set `epoch`, or `MISS`.
    #[inline(always)]
    fn cached<K: VerdictKey>(cache: &PerCpuArray<VerdictEntry<K>>, key: &K, epoch: u32) -> u32 {
        match cache.get(key.slot()) {
            Some(e) if e.epoch == epoch && e.key.same(key) => e.outcome,
            _ => MISS,
        }
    }

    #[inline(always)]
    fn remember<K: VerdictKey>(
        cache: &PerCpuArray<VerdictEntry<K>>,
        key: &K,
        epoch: u32,
        outcome: u32,
    ) {
        if let Some(e) = cache.get_ptr_mut(key.slot()) {
            // SAFETY: this CPU's slot; only this CPU touches it while the program runs.
            unsafe {
                *e = VerdictEntry {
                    key: *key,
                    epoch,
                    outcome,
                }
            };
        }
    }

    // Code layout, measured: the IPv4 lookup is inlined (a BPF-to-BPF call costs a hit
    // about 7 ns here); the stores and the IPv6 cache are functions of their own, since
    // inlined they made the compiler keep the packet in memory along the tables' path too,
    // which cost a packet that misses the cache (or runs with it off) about as much.

    /// This CPU's block of `FW_VERDICTS4` for `key`, and the key's slot in it.
    #[inline(always)]
    fn block_v4(key: &VerdictKeyV4) -> Option<(&'static mut VerdictBlock, usize)> {
        let slot = key.slot();
        let block = FW_VERDICTS4.get_ptr_mut(slot / VERDICT_BLOCK_SLOTS)?;
        // SAFETY: this CPU's block; only this CPU touches it while the program runs.
        Some((
            unsafe { &mut *block },
            (slot % VERDICT_BLOCK_SLOTS) as usize,
        ))
    }

    #[inline(always)]
    fn cached_v4(addresses: u64, rest: u64, epoch: u32) -> u32 {
        let key = VerdictKeyV4 { addresses, rest };
        match block_v4(&key).and_then(|(b, slot)| b.verdicts.get(slot)) {
            Some(e) if e.epoch == epoch && e.key.same(&key) => e.outcome,
            _ => MISS,
        }
    }

    #[inline(never)]
    fn remember_v4(addresses: u64, rest: u64, epoch: u32, outcome: u32) {
        let key = VerdictKeyV4 { addresses, rest };
        if let Some((b, slot)) = block_v4(&key)
            && let Some(e) = b.verdicts.get_mut(slot)
        {
            *e = VerdictEntryV4 {
                key,
                epoch,
                outcome,
            };
        }
    }

    #[inline(never)]
    fn cached_v6(p: &Packet, epoch: u32) -> u32 {
        cached(&FW_VERDICTS6, &VerdictKeyV6::of(p), epoch)
    }

    #[inline(never)]
    fn remember_v6(p: &Packet, epoch: u32, outcome: u32) {
        remember(&FW_VERDICTS6, &VerdictKeyV6::of(p), epoch, outcome)
    }

    /// The rules' outcome for a parsed packet, from the generation packets use now: this
    /// CPU's cached verdict for the same fields under the same rule set when there is one,
    /// else the tables' (then cached).
    #[inline(always)]
    fn judge(packet: &Packet) -> Outcome {
        let (generation, epoch) = FW_CONFIG
            .get(0)
            .map(|c| (c.generation, c.epoch))
            .unwrap_or((0, 0));
        let cache = epoch != 0 && verdict_cache_enabled();
        let (ports, protocol_ports) = ports_of(packet);
        let addresses = packet.src[0] as u64 | (packet.dst[0] as u64) << 32;
        let rest = ports as u64 | (protocol_ports as u64) << 32;
        if cache {
            let hit = if packet.v6 {
                cached_v6(packet, epoch)
            } else {
                cached_v4(addresses, rest, epoch)
            };
            if hit != MISS {
                return outcome_of(hit);
            }
        }
        let outcome = judge_tables(*packet, generation);
        if cache {
            if packet.v6 {
                remember_v6(packet, epoch, outcome as u32);
            } else {
                remember_v4(addresses, rest, epoch, outcome as u32);
            }
        }
        outcome
    }

    #[inline(always)]
    fn outcome_of(o: u32) -> Outcome {
        match o {
            o if o == Outcome::Rule as u32 => Outcome::Rule,
            o if o == Outcome::DefaultPolicy as u32 => Outcome::DefaultPolicy,
            _ => Outcome::Passed,
        }
    }

    /// The rules' outcome from the tables of `generation`. Takes the packet by value: its
    /// copy, whose fields the map lookups take the address of, is then made on this path
    /// only, not on the cached one.
    #[inline(always)]
    fn judge_tables(packet: Packet, generation: u32) -> Outcome {
        let (best, default_action) = if generation == 0 {
            decide_0(&packet)
        } else {
            decide_1(&packet)
        };
        if best == NO_RULE {
            if default_action == action::DROP {
                Outcome::DefaultPolicy
            } else {
                Outcome::Passed
            }
        } else if best & 1 == 1 {
            Outcome::Rule
        } else {
            Outcome::Passed
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
