//! `cgroup_counter`: a cgroup_skb program for `attach <id> --cgroup PATH`. Attached to a
//! cgroup's ingress and egress hooks, it counts the packets and bytes of each cgroup below
//! it (by the cgroup of the packet's socket) and direction, and drops the packets of a
//! cgroup that is denied, or that has a denied ancestor (counted as denied).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        helpers::generated::{bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id},
        macros::{cgroup_skb, map},
        maps::{Array, HashMap, PerCpuHashMap},
        programs::SkBuffContext,
    };
    use ebpf_kern::count_per_cpu;
    use ebpf_shared::cgroup::*;

    #[map]
    static CG_STATS: PerCpuHashMap<CgroupKey, [u64; 3]> = PerCpuHashMap::pinned(CG_MAX, 0);
    #[map]
    static CG_DENY: HashMap<u64, u8> = HashMap::pinned(CG_MAX, 0);
    #[map]
    static CG_DENY_ANY: Array<u32> = Array::pinned(1, 0);

    const PASS: i32 = 1;
    const DROP: i32 = 0;

    fn denied(skb: *mut aya_ebpf::bindings::__sk_buff) -> bool {
        let mut level = 0;
        while level < DENY_DEPTH {
            // SAFETY: a helper call on the program's own context.
            let id = unsafe { bpf_skb_ancestor_cgroup_id(skb, level) };
            if id == 0 {
                return false;
            }
            // SAFETY: a plain byte; only its presence matters.
            if unsafe { CG_DENY.get(&id) }.is_some() {
                return true;
            }
            level += 1;
        }
        false
    }

    #[cgroup_skb]
    pub fn cgroup_counter(ctx: SkBuffContext) -> i32 {
        let skb = ctx.skb.skb;
        // SAFETY: the context's `__sk_buff` is valid for the whole run of the program.
        let (len, ingress_ifindex) = unsafe { ((*skb).len, (*skb).ingress_ifindex) };
        // A packet that came in through an interface is on its way in; one that a local
        // socket made has no ingress interface.
        let direction = if ingress_ifindex != 0 {
            INGRESS
        } else {
            EGRESS
        };
        let key = CgroupKey {
            // SAFETY: a helper call on the program's own context.
            cgroup_id: unsafe { bpf_skb_cgroup_id(skb) },
            direction,
            _pad: 0,
        };
        let deny = CG_DENY_ANY.get(0).is_some_and(|n| *n != 0) && denied(skb);
        count_per_cpu(&CG_STATS, &key, &[1, u64::from(len), u64::from(deny)]);
        if deny { DROP } else { PASS }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "cgroup_counter is a kernel program: `x0tta6bl4-ebpf load cgroup_counter`, then `attach ID --cgroup PATH`"
    );
}
