//! `xdp_count`: an example of a user's own XDP program, the kind `metrics add --from-map`
//! exports. It counts packets and bytes per (ingress interface, IP protocol) in two maps
//! keyed by `[ifindex, protocol]` (protocol 0 for frames that are not IP) and passes
//! everything. It shares nothing with the daemon: no pinned maps, no `ebpf-shared` types.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::xdp_action, macros::map, macros::xdp, maps::LruPerCpuHashMap,
        programs::XdpContext,
    };

    /// `[ifindex, protocol]` → packets.
    #[map]
    static PACKETS: LruPerCpuHashMap<[u32; 2], u64> = LruPerCpuHashMap::with_max_entries(1024, 0);
    /// `[ifindex, protocol]` → bytes.
    #[map]
    static BYTES: LruPerCpuHashMap<[u32; 2], u64> = LruPerCpuHashMap::with_max_entries(1024, 0);

    fn protocol(ctx: &XdpContext) -> u32 {
        let (start, end) = (ctx.data(), ctx.data_end());
        if start + 14 > end {
            return 0;
        }
        // SAFETY: the bounds above cover the Ethernet header.
        let ethertype = u16::from_be(unsafe { *((start + 12) as *const u16) });
        let at = match ethertype {
            0x0800 => start + 14 + 9,
            0x86dd => start + 14 + 6,
            _ => return 0,
        };
        if at + 1 > end {
            return 0;
        }
        // SAFETY: checked against data_end just above.
        u32::from(unsafe { *(at as *const u8) })
    }

    fn add(map: &LruPerCpuHashMap<[u32; 2], u64>, key: &[u32; 2], n: u64) {
        match map.get_ptr_mut(key) {
            // SAFETY: a per-CPU value: only this CPU writes it, now.
            Some(v) => unsafe { *v += n },
            None => {
                let _ = map.insert(key, &n, 0);
            }
        }
    }

    #[xdp]
    pub fn xdp_count(ctx: XdpContext) -> u32 {
        let key = [ctx.ingress_ifindex() as u32, protocol(&ctx)];
        add(&PACKETS, &key, 1);
        add(&BYTES, &key, (ctx.data_end() - ctx.data()) as u64);
        xdp_action::XDP_PASS
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "xdp_count is an example kernel program: copy its object into programs_dir and `x0tta6bl4-ebpf load xdp_count`"
    );
}
