//! Everything the kernel programs and user space must agree on, byte for byte.
//!
//! Map names, key/value layouts and constants live here and nowhere else. Every type is
//! `#[repr(C)]` with explicit padding so that the layout does not depend on the compiler.
#![no_std]

/// Names of the maps of `xdp_firewall`, as they appear in the ELF object.
pub mod maps {
    /// `Array<FirewallConfig>`, one entry.
    pub const FW_CONFIG: &str = "FW_CONFIG";
    /// `LpmTrie<[u8; 4], RuleAction>`: rules on the IPv4 source address.
    pub const FW_SRC_V4: &str = "FW_SRC_V4";
    /// `LpmTrie<[u8; 16], RuleAction>`: rules on the IPv6 source address.
    pub const FW_SRC_V6: &str = "FW_SRC_V6";
    /// `HashMap<PortKey, RuleAction>`: rules on protocol + destination port.
    pub const FW_PORTS: &str = "FW_PORTS";
    /// `PerCpuArray<FirewallStats>`, one entry: counters summed in user space.
    pub const FW_STATS: &str = "FW_STATS";
}

/// Capacity of the source-address tries (per address family).
pub const FW_SRC_MAX_ENTRIES: u32 = 16_384;
/// Capacity of the protocol + port rule table.
pub const FW_PORTS_MAX_ENTRIES: u32 = 4_096;

/// What a rule does with a matching packet. Stored as a `u32` in the rule maps.
pub mod action {
    pub const ALLOW: u32 = 1;
    pub const DROP: u32 = 2;
}

/// IP protocol numbers the firewall understands.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// Global settings of one loaded `xdp_firewall`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirewallConfig {
    /// `action::ALLOW` or `action::DROP`; anything else is treated as ALLOW so that an
    /// unconfigured program (all zeroes) never black-holes an interface.
    pub default_action: u32,
    pub _reserved: u32,
}

/// Key of the protocol + destination-port rule table. `port == 0` means "every port of this
/// protocol" (and is what ICMP and non-first fragments look up).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortKey {
    pub protocol: u8,
    pub _pad: u8,
    /// Host byte order.
    pub port: u16,
}

/// Why a packet was dropped; indexes `FirewallStats::dropped_by_reason`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Too short for a header it claims to have, or a header that contradicts itself.
    Malformed = 0,
    /// A rule on the source address said drop.
    SourceRule = 1,
    /// A protocol + port rule said drop.
    PortRule = 2,
    /// No rule matched and the default policy is drop.
    DefaultPolicy = 3,
}

pub const DROP_REASONS: usize = 4;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS] = [
        DropReason::Malformed,
        DropReason::SourceRule,
        DropReason::PortRule,
        DropReason::DefaultPolicy,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::SourceRule => "source_rule",
            DropReason::PortRule => "port_rule",
            DropReason::DefaultPolicy => "default_policy",
        }
    }
}

/// Per-CPU counters of one loaded `xdp_firewall`. Bytes are frame lengths as XDP sees them
/// (from the Ethernet header on, no FCS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FirewallStats {
    pub processed_packets: u64,
    pub processed_bytes: u64,
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    pub dropped_by_reason: [u64; DROP_REASONS],
}

impl FirewallStats {
    /// Adds another CPU's counters into this one.
    pub fn accumulate(&mut self, other: &FirewallStats) {
        self.processed_packets += other.processed_packets;
        self.processed_bytes += other.processed_bytes;
        self.passed_packets += other.passed_packets;
        self.passed_bytes += other.passed_bytes;
        self.dropped_packets += other.dropped_packets;
        self.dropped_bytes += other.dropped_bytes;
        for (sum, v) in self
            .dropped_by_reason
            .iter_mut()
            .zip(other.dropped_by_reason)
        {
            *sum += v;
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, contain only integers and have no implicit
    // padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::FirewallConfig {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::FirewallStats {}
}
