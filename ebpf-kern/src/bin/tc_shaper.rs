//! `tc_shaper`: the classifier half of the TC shaper. Attached at an interface's TCX egress
//! hook (which runs before the root qdisc), it puts the interface's packets into the HTB class
//! the daemon made for that interface by setting `skb->priority` to the class id: HTB takes
//! a priority that names one of its leaf classes as the packet's class. The TBF under the
//! class keeps the rate; its queue, sized to rate × latency target, bounds the queueing
//! delay. Interfaces without an entry are left alone. The program always hands the packet
//! on (TCX_NEXT), so other TC programs on the hook still run.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        macros::{classifier, map},
        maps::{HashMap, PerCpuHashMap},
        programs::TcContext,
    };
    use ebpf_kern::count_per_cpu;
    use ebpf_shared::shaper::SHAPER_MAX;

    #[map]
    static SHAPER_CLASS: HashMap<u32, u32> = HashMap::pinned(SHAPER_MAX, 0);
    #[map]
    static SHAPER_STATS: PerCpuHashMap<u32, [u64; 2]> = PerCpuHashMap::pinned(SHAPER_MAX, 0);

    /// TC_ACT_UNSPEC, which TCX reads as "next program".
    const TCX_NEXT: i32 = -1;

    #[classifier]
    pub fn tc_shaper(ctx: TcContext) -> i32 {
        // SAFETY: the context's `__sk_buff` is valid for the whole run of the program.
        let skb = unsafe { &mut *ctx.skb.skb };
        let ifindex = skb.ifindex;
        // SAFETY: a plain u32 value; the map is not changed under it in a way that matters.
        let Some(classid) = (unsafe { SHAPER_CLASS.get(&ifindex) }).copied() else {
            return TCX_NEXT;
        };
        skb.priority = classid;
        count_per_cpu(&SHAPER_STATS, &ifindex, &[1, u64::from(skb.len)]);
        TCX_NEXT
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "tc_shaper is a kernel program: x0tta6bl4-ebpfd loads it for `x0tta6bl4-ebpf shaper set`"
    );
}
