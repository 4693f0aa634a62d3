pub mod api;
#[cfg(feature = "runtime")]
pub mod builtin {
    pub static XDP_FIREWALL: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp_firewall"));
}
