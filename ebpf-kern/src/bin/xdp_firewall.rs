//! `xdp_firewall`: the zero-trust XDP firewall.
//!
//! Decision order, the same one `x0tta6bl4-ebpf` documents:
//! 1. a frame that ends inside a header it announces is dropped (`malformed`);
//! 2. non-IP frames (ARP, LLDP, …) pass: the firewall filters IP traffic;
//! 3. a rule on the exact source address decides;
//! 4. else a rule on protocol + destination port, then on protocol + any port, decides;
//! 5. else the default policy.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
        programs::XdpContext,
    };
    use ebpf_kern::{ETH_P_IP, ETH_P_IPV6, IPV6_HLEN, L4Info, ethernet, load, transport};
    use ebpf_shared::{
        DropReason, FW_PORTS_MAX_ENTRIES, FW_SRC_MAX_ENTRIES, FirewallConfig, FirewallStats,
        PortKey, action,
    };

    #[map]
    static FW_CONFIG: Array<FirewallConfig> = Array::with_max_entries(1, 0);
    #[map]
    static FW_SRC_V4: LpmTrie<[u8; 4], u32> =
        LpmTrie::with_max_entries(FW_SRC_MAX_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);
    #[map]
    static FW_SRC_V6: LpmTrie<[u8; 16], u32> =
        LpmTrie::with_max_entries(FW_SRC_MAX_ENTRIES, aya_ebpf::bindings::BPF_F_NO_PREALLOC);
    #[map]
    static FW_PORTS: HashMap<PortKey, u32> = HashMap::with_max_entries(FW_PORTS_MAX_ENTRIES, 0);
    #[map]
    static FW_STATS: PerCpuArray<FirewallStats> = PerCpuArray::with_max_entries(1, 0);

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
        let Some((ethertype, l3)) = ethernet(start, end) else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let parsed = match ethertype {
            ETH_P_IP => ipv4(start, end, l3),
            ETH_P_IPV6 => ipv6(start, end, l3),
            _ => return Verdict::Pass,
        };
        let Some((source_action, l4)) = parsed else {
            return Verdict::Drop(DropReason::Malformed);
        };
        if let Some(a) = source_action {
            return from_action(a, DropReason::SourceRule);
        }
        if let Some(a) = port_rule(l4) {
            return from_action(a, DropReason::PortRule);
        }
        let default = FW_CONFIG
            .get(0)
            .map(|c| c.default_action)
            .unwrap_or(action::ALLOW);
        from_action(default, DropReason::DefaultPolicy)
    }

    #[inline(always)]
    fn from_action(a: u32, reason: DropReason) -> Verdict {
        if a == action::DROP {
            Verdict::Drop(reason)
        } else {
            Verdict::Pass
        }
    }

    /// The source-rule action (if any) and the transport info, or `None` when malformed.
    #[inline(always)]
    fn ipv4(start: usize, end: usize, l3: usize) -> Option<(Option<u32>, L4Info)> {
        let header = load::<[u8; 20]>(start, end, l3)?;
        if header[0] >> 4 != 4 {
            return None;
        }
        let ihl = ((header[0] & 0x0f) as usize) * 4;
        if ihl < 20 {
            return None;
        }
        let total_len = u16::from_be_bytes([header[2], header[3]]) as usize;
        if total_len < ihl {
            return None;
        }
        let protocol = header[9];
        let source = [header[12], header[13], header[14], header[15]];
        let source_action = FW_SRC_V4.get(&Key::new(32, source)).copied();
        let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
        let l4 = if fragment_offset != 0 {
            // A non-first fragment carries no transport header: it matches protocol rules
            // with "any port" only.
            L4Info {
                protocol,
                dest_port: 0,
            }
        } else {
            // Options are covered by the IHL; make sure they are really in the frame.
            if start + l3 + ihl > end {
                return None;
            }
            transport(start, end, l3 + ihl, protocol)?
        };
        Some((source_action, l4))
    }

    #[inline(always)]
    fn ipv6(start: usize, end: usize, l3: usize) -> Option<(Option<u32>, L4Info)> {
        let header = load::<[u8; IPV6_HLEN]>(start, end, l3)?;
        if header[0] >> 4 != 6 {
            return None;
        }
        let next_header = header[6];
        let mut source = [0u8; 16];
        source.copy_from_slice(&header[8..24]);
        let source_action = FW_SRC_V6.get(&Key::new(128, source)).copied();
        let l4 = transport(start, end, l3 + IPV6_HLEN, next_header)?;
        Some((source_action, l4))
    }

    #[inline(always)]
    fn port_rule(l4: L4Info) -> Option<u32> {
        let exact = PortKey {
            protocol: l4.protocol,
            _pad: 0,
            port: l4.dest_port,
        };
        // SAFETY: the value is a plain u32 copied out at once.
        if let Some(a) = unsafe { FW_PORTS.get(&exact) } {
            return Some(*a);
        }
        if l4.dest_port == 0 {
            return None;
        }
        let any = PortKey { port: 0, ..exact };
        unsafe { FW_PORTS.get(&any) }.copied()
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
