//! `xdp_pass`: passes every packet and does nothing else. The floor that per-packet
//! benchmarks subtract, and a harmless program to try `load`/`attach` with.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

    #[xdp]
    pub fn xdp_pass(_ctx: XdpContext) -> u32 {
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
        "xdp_pass is a kernel program: it is built for bpfel-unknown-none and loaded by x0tta6bl4-ebpfd"
    );
}
