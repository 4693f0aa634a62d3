//! `tcp_state`: the TCP connection probe, on the tracepoint `sock/inet_sock_set_state`
//! (kprobes are not available here). For connections this host opens it measures the connect
//! latency (SYN_SENT → ESTABLISHED) and counts failed connects, resets and closes, per peer.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        helpers::bpf_ktime_get_ns,
        macros::{map, tracepoint},
        maps::{LruHashMap, LruPerCpuHashMap, PerCpuArray},
        programs::TracePointContext,
    };
    use ebpf_kern::highest_bit;
    use ebpf_shared::tcp::*;
    use ebpf_shared::{LATENCY_BUCKETS, TcpPeerKey, TcpPeerStats};

    #[map]
    static TCP_CONNECTING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(CONNECTING_MAX, 0);
    #[map]
    static TCP_PEERS: LruPerCpuHashMap<TcpPeerKey, TcpPeerStats> =
        LruPerCpuHashMap::with_max_entries(PEERS_MAX, 0);
    #[map]
    static TCP_CONNECT_LATENCY: PerCpuArray<u64> =
        PerCpuArray::with_max_entries(LATENCY_BUCKETS, 0);

    #[tracepoint]
    pub fn tcp_state(ctx: TracePointContext) -> u32 {
        let _ = observe(&ctx);
        0
    }

    #[inline(always)]
    fn read<T>(ctx: &TracePointContext, offset: usize) -> Option<T> {
        // SAFETY: the offsets are the tracepoint's format; a failed read is None.
        unsafe { ctx.read_at::<T>(offset) }.ok()
    }

    #[inline(always)]
    fn observe(ctx: &TracePointContext) -> Option<()> {
        let protocol: u16 = read(ctx, OFF_PROTOCOL)?;
        if protocol != 6 {
            return Some(());
        }
        let sk: u64 = read(ctx, OFF_SKADDR)?;
        let old: i32 = read(ctx, OFF_OLDSTATE)?;
        let new: i32 = read(ctx, OFF_NEWSTATE)?;
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        if new == TCP_SYN_SENT {
            let _ = TCP_CONNECTING.insert(&sk, &now, 0);
            return Some(());
        }
        if old != TCP_SYN_SENT && new != TCP_CLOSE {
            return Some(());
        }
        let family: u16 = read(ctx, OFF_FAMILY)?;
        let key = if family == AF_INET {
            TcpPeerKey {
                addr: [read(ctx, OFF_DADDR)?, 0, 0, 0],
                port: read(ctx, OFF_DPORT)?,
                family: 4,
            }
        } else {
            TcpPeerKey {
                addr: read(ctx, OFF_DADDR_V6)?,
                port: read(ctx, OFF_DPORT)?,
                family: 6,
            }
        };
        let stats = match TCP_PEERS.get_ptr_mut(&key) {
            Some(s) => s,
            None => {
                let _ = TCP_PEERS.insert(&key, &TcpPeerStats::default(), 0);
                TCP_PEERS.get_ptr_mut(&key)?
            }
        };
        // SAFETY: this CPU's slot of the peer; only this CPU writes it.
        let stats = unsafe { &mut *stats };
        if old == TCP_SYN_SENT {
            // SAFETY: the value is read at once.
            let started = unsafe { TCP_CONNECTING.get(&sk) }.copied();
            let _ = TCP_CONNECTING.remove(&sk);
            if new == TCP_ESTABLISHED {
                let took = now.saturating_sub(started.unwrap_or(now));
                stats.connects += 1;
                stats.connect_ns_sum += took;
                if let Some(b) = TCP_CONNECT_LATENCY.get_ptr_mut(highest_bit(took)) {
                    // SAFETY: a per-CPU slot.
                    unsafe { *b += 1 };
                }
            } else if new == TCP_CLOSE {
                stats.failed += 1;
            }
        }
        if new == TCP_CLOSE {
            stats.closes += 1;
            if old == TCP_ESTABLISHED {
                stats.resets += 1;
            }
        }
        Some(())
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "tcp_state is a kernel program: it is built for bpfel-unknown-none and loaded by x0tta6bl4-ebpfd"
    );
}
