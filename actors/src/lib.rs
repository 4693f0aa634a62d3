//! The actors of `x0tta6bl4-ebpfd` and the wire API its CLI shares.
//!
//! `api` compiles without the runtime so that the CLI stays small; everything else needs the
//! `runtime` feature (aya, ractor, and the kernel programs built by `build.rs`).

pub mod api;

#[cfg(feature = "runtime")]
pub mod attach;
#[cfg(feature = "runtime")]
pub mod fallback;
#[cfg(feature = "runtime")]
pub mod firewall;
#[cfg(feature = "runtime")]
pub mod flows;
#[cfg(feature = "runtime")]
pub mod flowtable;
#[cfg(feature = "runtime")]
pub mod hooks;
#[cfg(feature = "runtime")]
pub mod interfaces;
#[cfg(feature = "runtime")]
pub mod loader;
#[cfg(feature = "runtime")]
pub mod mapread;
#[cfg(feature = "runtime")]
pub mod restart;
#[cfg(feature = "runtime")]
pub mod routes;
#[cfg(feature = "runtime")]
pub mod rpc;
#[cfg(feature = "runtime")]
pub mod rules;
#[cfg(feature = "runtime")]
pub mod shaper;
#[cfg(feature = "runtime")]
pub mod sys;
#[cfg(feature = "runtime")]
pub mod tcp;
#[cfg(feature = "runtime")]
pub mod xdpnl;

/// The kernel programs, embedded in the daemon.
#[cfg(feature = "runtime")]
pub mod builtin {
    /// ELF object of `xdp_firewall` (ebpf-kern/src/bin/xdp_firewall.rs).
    pub static XDP_FIREWALL: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_firewall"));
    /// ELF object of `tcp_state` (ebpf-kern/src/bin/tcp_state.rs).
    pub static TCP_STATE: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcp_state"));
    /// ELF object of `xdp_pass` (ebpf-kern/src/bin/xdp_pass.rs).
    pub static XDP_PASS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_pass"));
    /// ELF object of `xdp_count` (ebpf-kern/src/bin/xdp_count.rs): not a built-in but an
    /// example of a user's own program, for `programs_dir` (the tests and the demo copy it
    /// there).
    pub static XDP_COUNT: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_count"));
    /// ELF object of `xdp_exceptions` (ebpf-kern/src/bin/xdp_exceptions.rs).
    pub static XDP_EXCEPTIONS: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_exceptions"));
    /// ELF object of `xdp_router` (ebpf-kern/src/bin/xdp_router.rs).
    pub static XDP_ROUTER: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_router"));
    /// ELF object of `tc_shaper` (ebpf-kern/src/bin/tc_shaper.rs).
    pub static TC_SHAPER: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_shaper"));
    /// ELF object of `cgroup_counter` (ebpf-kern/src/bin/cgroup_counter.rs).
    pub static CGROUP_COUNTER: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cgroup_counter"));
    /// ELF object of `socket_counter` (ebpf-kern/src/bin/socket_counter.rs).
    pub static SOCKET_COUNTER: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/socket_counter"));
    /// ELF object of `xdp_abort_udp9` (ebpf-kern/src/bin/xdp_abort_udp9.rs): an example of a
    /// faulty user program (it aborts UDP to port 9), for the fallback tests.
    pub static XDP_ABORT_UDP9: &[u8] =
        aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_abort_udp9"));
}
