//! `xdp_abort_udp9`: an example of a faulty user program. It returns XDP_ABORTED for IPv4 UDP
//! to port 9 (discard) and passes everything else: what the FallbackActor watches for.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

    #[xdp]
    pub fn xdp_abort_udp9(ctx: XdpContext) -> u32 {
        let (start, end) = (ctx.data(), ctx.data_end());
        // Ethernet (14) + IPv4 without options (20) + the UDP ports (4).
        if start + 38 > end {
            return xdp_action::XDP_PASS;
        }
        // SAFETY: the bounds above cover every byte read.
        let (ethertype, ihl_version, protocol, dport) = unsafe {
            (
                u16::from_be(*((start + 12) as *const u16)),
                *((start + 14) as *const u8),
                *((start + 23) as *const u8),
                u16::from_be(*((start + 36) as *const u16)),
            )
        };
        if ethertype == 0x0800 && ihl_version == 0x45 && protocol == 17 && dport == 9 {
            xdp_action::XDP_ABORTED
        } else {
            xdp_action::XDP_PASS
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
        "xdp_abort_udp9 is an example kernel program: copy its object into programs_dir and `x0tta6bl4-ebpf load xdp_abort_udp9`"
    );
}
