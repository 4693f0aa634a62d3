//! Packet parsing shared by the kernel programs.
//!
//! Every read goes through [`load`], which checks the packet bounds the way the verifier
//! wants to see them: `start + offset + size <= end`, with `offset` bounded.
#![cfg_attr(target_arch = "bpf", no_std)]

use core::mem::size_of;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const VLAN_HLEN: usize = 4;
pub const IPV6_HLEN: usize = 40;

/// Reads a `T` at `offset` bytes into the packet `[start, end)`, or `None` when the packet is
/// too short. `T` must be valid for any bit pattern (integers and arrays of them).
#[inline(always)]
pub fn load<T: Copy>(start: usize, end: usize, offset: usize) -> Option<T> {
    if start + offset + size_of::<T>() > end {
        return None;
    }
    // SAFETY: the range was bounds-checked against the packet just above; unaligned read
    // because packet headers carry no alignment guarantee.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

#[inline(always)]
pub fn load_be16(start: usize, end: usize, offset: usize) -> Option<u16> {
    load::<[u8; 2]>(start, end, offset).map(u16::from_be_bytes)
}

/// The L3 protocol and where its header starts, after at most two VLAN tags (802.1ad outer,
/// 802.1Q inner). `None`: the frame ends inside the Ethernet or a VLAN header.
#[inline(always)]
pub fn ethernet(start: usize, end: usize) -> Option<(u16, usize)> {
    let mut ethertype = load_be16(start, end, 12)?;
    let mut offset = ETH_HLEN;
    // Two rounds, unrolled: QinQ is the deepest stacking we meet on real links.
    if ethertype == ETH_P_8021AD || ethertype == ETH_P_8021Q {
        ethertype = load_be16(start, end, offset + 2)?;
        offset += VLAN_HLEN;
    }
    if ethertype == ETH_P_8021AD || ethertype == ETH_P_8021Q {
        ethertype = load_be16(start, end, offset + 2)?;
        offset += VLAN_HLEN;
    }
    Some((ethertype, offset))
}

/// What the firewall needs from the IP and transport headers.
#[derive(Clone, Copy)]
pub struct L4Info {
    pub protocol: u8,
    /// Destination port in host byte order; 0 when the protocol has none or the packet is a
    /// non-first fragment (which carries no transport header).
    pub dest_port: u16,
}

/// Parses the transport header at `offset`. `None`: the header is truncated.
#[inline(always)]
pub fn transport(start: usize, end: usize, offset: usize, protocol: u8) -> Option<L4Info> {
    use ebpf_shared::proto;
    // One read per header into a stack copy: a second read of the same bytes lets the
    // compiler merge the bounds checks and re-derive the pointer, which the verifier rejects
    // ("R2 offset is outside of the packet").
    let dest_port = match protocol {
        // The whole fixed header must be there, not only the ports: a TCP segment cut inside
        // its header is not something a stack would accept either.
        proto::TCP => {
            let h = load::<[u8; 20]>(start, end, offset)?;
            u16::from_be_bytes([h[2], h[3]])
        }
        proto::UDP => {
            let h = load::<[u8; 8]>(start, end, offset)?;
            u16::from_be_bytes([h[2], h[3]])
        }
        proto::ICMP | proto::ICMPV6 => {
            load::<[u8; 4]>(start, end, offset)?;
            0
        }
        _ => 0,
    };
    Some(L4Info {
        protocol,
        dest_port,
    })
}
