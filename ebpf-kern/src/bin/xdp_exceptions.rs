//! `xdp_exceptions`: counts, per interface, the XDP_ABORTED returns the kernel reports on the
//! tracepoint `xdp/xdp_exception`, whoever's program returned them. The FallbackActor reads
//! the counts to degrade a driver-mode attachment that keeps aborting.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        macros::{map, tracepoint},
        maps::LruPerCpuHashMap,
        programs::TracePointContext,
    };
    use ebpf_shared::xdp_exceptions::*;

    #[map]
    static XDP_ABORTS: LruPerCpuHashMap<u32, u64> =
        LruPerCpuHashMap::with_max_entries(ABORTS_MAX, 0);

    #[tracepoint]
    pub fn xdp_exceptions(ctx: TracePointContext) -> u32 {
        // SAFETY: the offsets are the tracepoint's format; a failed read counts nothing.
        let act: u32 = unsafe { ctx.read_at(OFF_ACT) }.unwrap_or(u32::MAX);
        let ifindex: u32 = unsafe { ctx.read_at(OFF_IFINDEX) }.unwrap_or(0);
        if act == ACT_ABORTED {
            match XDP_ABORTS.get_ptr_mut(&ifindex) {
                // SAFETY: a per-CPU value: only this CPU writes it, now.
                Some(n) => unsafe { *n += 1 },
                None => {
                    let _ = XDP_ABORTS.insert(&ifindex, &1, 0);
                }
            }
        }
        0
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "xdp_exceptions is a kernel program: x0tta6bl4-ebpfd loads it (with enable_dynamic_fallback)"
    );
}
