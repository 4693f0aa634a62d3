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

/// IPv6 extension headers followed before the transport header; a longer chain is dropped
/// (`too_many_headers`) rather than let through unexamined.
pub const MAX_IPV6_EXTENSION_HEADERS: usize = 4;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// What the firewall matches on. IPv4 addresses are in `src4`/`dst4`, IPv6 in `src6`/`dst6`.
#[derive(Clone, Copy)]
pub struct Packet {
    pub v6: bool,
    pub src4: [u8; 4],
    pub dst4: [u8; 4],
    pub src6: [u8; 16],
    pub dst6: [u8; 16],
    pub protocol: u8,
    /// False for protocols without ports and for non-first fragments.
    pub has_ports: bool,
    pub source_port: u16,
    pub dest_port: u16,
}

pub enum Malformed {
    /// A header is cut short or contradicts itself.
    Truncated,
    /// More IPv6 extension headers than `MAX_IPV6_EXTENSION_HEADERS`.
    TooManyHeaders,
}

/// Parses an Ethernet frame. `Ok(None)`: not IP (ARP, LLDP, …).
#[inline(always)]
pub fn parse(start: usize, end: usize) -> Result<Option<Packet>, Malformed> {
    let (ethertype, l3) = ethernet(start, end).ok_or(Malformed::Truncated)?;
    match ethertype {
        ETH_P_IP => ipv4(start, end, l3).map(Some),
        ETH_P_IPV6 => ipv6(start, end, l3).map(Some),
        _ => Ok(None),
    }
}

#[inline(always)]
fn ipv4(start: usize, end: usize, l3: usize) -> Result<Packet, Malformed> {
    let h = load::<[u8; 20]>(start, end, l3).ok_or(Malformed::Truncated)?;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    if h[0] >> 4 != 4 || ihl < 20 || total_len < ihl {
        return Err(Malformed::Truncated);
    }
    let mut p = Packet {
        v6: false,
        src4: [h[12], h[13], h[14], h[15]],
        dst4: [h[16], h[17], h[18], h[19]],
        src6: [0; 16],
        dst6: [0; 16],
        protocol: h[9],
        has_ports: false,
        source_port: 0,
        dest_port: 0,
    };
    // Options are covered by the IHL; make sure they are really in the frame.
    if start + l3 + ihl > end {
        return Err(Malformed::Truncated);
    }
    let fragment_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    if fragment_offset == 0 {
        transport(start, end, l3 + ihl, &mut p)?;
    }
    Ok(p)
}

#[inline(always)]
fn ipv6(start: usize, end: usize, l3: usize) -> Result<Packet, Malformed> {
    let h = load::<[u8; IPV6_HLEN]>(start, end, l3).ok_or(Malformed::Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(Malformed::Truncated);
    }
    let mut p = Packet {
        v6: true,
        src4: [0; 4],
        dst4: [0; 4],
        src6: [0; 16],
        dst6: [0; 16],
        protocol: h[6],
        has_ports: false,
        source_port: 0,
        dest_port: 0,
    };
    p.src6.copy_from_slice(&h[8..24]);
    p.dst6.copy_from_slice(&h[24..40]);
    let mut offset = l3 + IPV6_HLEN;
    let mut first_fragment = true;
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        match p.protocol {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
                let e = load::<[u8; 2]>(start, end, offset).ok_or(Malformed::Truncated)?;
                p.protocol = e[0];
                offset += (e[1] as usize + 1) * 8;
            }
            NEXTHDR_AUTH => {
                let e = load::<[u8; 2]>(start, end, offset).ok_or(Malformed::Truncated)?;
                p.protocol = e[0];
                offset += (e[1] as usize + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                let e = load::<[u8; 8]>(start, end, offset).ok_or(Malformed::Truncated)?;
                p.protocol = e[0];
                if u16::from_be_bytes([e[2], e[3]]) >> 3 != 0 {
                    first_fragment = false;
                }
                offset += 8;
            }
            _ => break,
        }
    }
    if matches!(
        p.protocol,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT
    ) {
        return Err(Malformed::TooManyHeaders);
    }
    if first_fragment {
        transport(start, end, offset, &mut p)?;
    }
    Ok(p)
}

/// Reads the transport header at `offset` into `p`. One read per header into a stack copy: a
/// second read of the same bytes lets the compiler merge the bounds checks and re-derive the
/// pointer, which the verifier rejects ("R2 offset is outside of the packet").
#[inline(always)]
fn transport(start: usize, end: usize, offset: usize, p: &mut Packet) -> Result<(), Malformed> {
    use ebpf_shared::proto;
    match p.protocol {
        // The whole fixed header must be there, not only the ports: a TCP segment cut inside
        // its header is not something a stack would accept either.
        proto::TCP => {
            let h = load::<[u8; 20]>(start, end, offset).ok_or(Malformed::Truncated)?;
            p.source_port = u16::from_be_bytes([h[0], h[1]]);
            p.dest_port = u16::from_be_bytes([h[2], h[3]]);
            p.has_ports = true;
        }
        proto::UDP => {
            let h = load::<[u8; 8]>(start, end, offset).ok_or(Malformed::Truncated)?;
            p.source_port = u16::from_be_bytes([h[0], h[1]]);
            p.dest_port = u16::from_be_bytes([h[2], h[3]]);
            p.has_ports = true;
        }
        proto::ICMP | proto::ICMPV6 => {
            load::<[u8; 4]>(start, end, offset).ok_or(Malformed::Truncated)?;
        }
        _ => {}
    }
    Ok(())
}

/// Index of the lowest set bit of a non-zero word, by halving (BPF has no count-trailing-zeros
/// instruction).
#[inline(always)]
pub fn lowest_bit(mut x: u64) -> u32 {
    let mut n = 0;
    if x & 0xffff_ffff == 0 {
        n += 32;
        x >>= 32;
    }
    if x & 0xffff == 0 {
        n += 16;
        x >>= 16;
    }
    if x & 0xff == 0 {
        n += 8;
        x >>= 8;
    }
    if x & 0xf == 0 {
        n += 4;
        x >>= 4;
    }
    if x & 0x3 == 0 {
        n += 2;
        x >>= 2;
    }
    if x & 0x1 == 0 {
        n += 1;
    }
    n
}
