//! `xdp_router`: the mesh fast path (`routes update FILE`). An IPv4 packet whose destination
//! matches a route is forwarded here: TTL decremented (checksum updated as the kernel's
//! `ip_decrease_ttl` does), Ethernet addresses rewritten to the next hop's, and redirected to
//! the route's interface. Packets to this node's own addresses, packets with a TTL of 1 or
//! less (the stack answers them with ICMP time exceeded), IPv4 with options, and everything
//! without a route go to the kernel stack.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::xdp_action,
        helpers::generated::bpf_redirect,
        macros::{map, xdp},
        maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
        programs::XdpContext,
    };
    use ebpf_shared::routes::*;

    #[map]
    static ROUTES: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(ROUTES_MAX, 1);
    #[map]
    static ROUTE_NEXT: Array<NextHop> = Array::pinned(ROUTES_MAX, 0);
    #[map]
    static ROUTE_STATS: PerCpuArray<[u64; 2]> = PerCpuArray::pinned(ROUTES_MAX, 0);

    const ETH_LEN: usize = 14;

    #[xdp]
    pub fn xdp_router(ctx: XdpContext) -> u32 {
        let (start, end) = (ctx.data(), ctx.data_end());
        if start + ETH_LEN + 20 > end {
            return xdp_action::XDP_PASS;
        }
        // SAFETY: the bounds above cover the Ethernet header and a 20-byte IPv4 header.
        unsafe {
            if *((start + 12) as *const u16) != 0x0800u16.to_be() {
                return xdp_action::XDP_PASS;
            }
            let ip = start + ETH_LEN;
            // Version 4 with no options only.
            if *(ip as *const u8) != 0x45 {
                return xdp_action::XDP_PASS;
            }
            let ttl = *((ip + 8) as *const u8);
            if ttl <= 1 {
                return xdp_action::XDP_PASS;
            }
            let daddr = *((ip + 16) as *const [u8; 4]);
            let Some(&slot) = ROUTES.get(&Key::new(32, daddr)) else {
                return xdp_action::XDP_PASS;
            };
            if slot == LOCAL {
                return xdp_action::XDP_PASS;
            }
            let Some(next) = ROUTE_NEXT.get(slot) else {
                return xdp_action::XDP_PASS;
            };
            if next.ifindex == 0 {
                return xdp_action::XDP_PASS;
            }
            // TTL − 1, and the checksum with it (RFC 1141, as ip_decrease_ttl).
            *((ip + 8) as *mut u8) = ttl - 1;
            let check = (ip + 10) as *mut u16;
            let mut sum = u32::from(*check) + u32::from(0x0100u16.to_be());
            sum += u32::from(sum >= 0xFFFF);
            *check = sum as u16;
            *(start as *mut [u8; 6]) = next.dst_mac;
            *((start + 6) as *mut [u8; 6]) = next.src_mac;
            if let Some(stats) = ROUTE_STATS.get_ptr_mut(slot) {
                (*stats)[0] += 1;
                (*stats)[1] += (end - start) as u64;
            }
            bpf_redirect(next.ifindex, 0) as u32
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
        "xdp_router is a kernel program: `x0tta6bl4-ebpf load xdp_router`, attach it to the mesh interfaces, then `routes update FILE`"
    );
}
