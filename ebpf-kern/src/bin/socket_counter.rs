//! `socket_counter`: a socket filter for the AF_PACKET socket the daemon opens on an
//! interface (`attach <id> --interface IF`). It counts what the socket sees per interface and
//! IP protocol, and passes one packet in `SF_SAMPLE_EVERY` up to the socket as a sample; the
//! rest never leave the kernel.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        macros::{map, socket_filter},
        maps::{Array, PerCpuHashMap},
        programs::SkBuffContext,
    };
    use ebpf_kern::count_per_cpu;
    use ebpf_shared::socket::SF_MAX;

    #[map]
    static SF_STATS: PerCpuHashMap<[u32; 2], [u64; 2]> = PerCpuHashMap::pinned(SF_MAX, 0);
    #[map]
    static SF_SAMPLE_EVERY: Array<u32> = Array::pinned(1, 0);

    fn protocol(ctx: &SkBuffContext) -> u32 {
        // The socket sees frames from their Ethernet header on.
        let Ok(ethertype) = ctx.load::<u16>(12) else {
            return 0;
        };
        let at = match u16::from_be(ethertype) {
            0x0800 => 14 + 9,
            0x86dd => 14 + 6,
            _ => return 0,
        };
        ctx.load::<u8>(at).map(u32::from).unwrap_or(0)
    }

    #[socket_filter]
    pub fn socket_counter(ctx: SkBuffContext) -> i64 {
        // SAFETY: the context's `__sk_buff` is valid for the whole run of the program.
        let (len, ifindex) = unsafe { ((*ctx.skb.skb).len, (*ctx.skb.skb).ifindex) };
        let key = [ifindex, protocol(&ctx)];
        let seen = count_per_cpu(&SF_STATS, &key, &[1, u64::from(len)]);
        let every = SF_SAMPLE_EVERY.get(0).copied().unwrap_or(0);
        if every != 0 && seen % u64::from(every) == 0 {
            i64::from(len)
        } else {
            0
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
        "socket_counter is a kernel program: `x0tta6bl4-ebpf load socket_counter`, then `attach ID --interface IF`"
    );
}
