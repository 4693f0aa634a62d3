//! Packet parsing shared by the kernel programs.
//!
//! Each header is bounds-checked once (`header + len <= end`, the shape the verifier
//! follows), then its fields are read at constant offsets from the same pointer.
#![cfg_attr(target_arch = "bpf", no_std)]

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const VLAN_HLEN: usize = 4;
pub const IPV6_HLEN: usize = 40;

/// The L3 protocol and where its header starts (offset from the frame start), after at most
/// two VLAN tags (802.1ad outer, 802.1Q inner). `None`: the frame ends inside the Ethernet
/// or a VLAN header.
#[inline(always)]
pub fn ethernet(start: usize, end: usize) -> Option<(u16, usize)> {
    if start + ETH_HLEN > end {
        return None;
    }
    let mut ethertype = u16::from_be(at(start + 12));
    let mut offset = ETH_HLEN;
    // Two rounds, unrolled: QinQ is the deepest stacking we meet on real links.
    if ethertype == ETH_P_8021AD || ethertype == ETH_P_8021Q {
        if start + offset + VLAN_HLEN > end {
            return None;
        }
        ethertype = u16::from_be(at(start + offset + 2));
        offset += VLAN_HLEN;
    }
    if ethertype == ETH_P_8021AD || ethertype == ETH_P_8021Q {
        if start + offset + VLAN_HLEN > end {
            return None;
        }
        ethertype = u16::from_be(at(start + offset + 2));
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

/// What the firewall matches on. Addresses are raw network-order words as they sit in the
/// packet (IPv4 in `src[0]`/`dst[0]`); the address tables use the same layout as keys.
#[derive(Clone, Copy)]
pub struct Packet {
    pub v6: bool,
    pub protocol: u8,
    /// False for protocols without ports and for non-first fragments.
    pub has_ports: bool,
    pub source_port: u16,
    pub dest_port: u16,
    /// The TCP flag byte; 0 for other protocols.
    pub tcp_flags: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

pub enum Malformed {
    /// A header is cut short or contradicts itself.
    Truncated,
    /// More IPv6 extension headers than `MAX_IPV6_EXTENSION_HEADERS`.
    TooManyHeaders,
}

/// Reads a `T` at `at` in the packet. The caller has checked that the header holding it is
/// inside the packet. Fields are read with their natural width: packet data is at least
/// 2-byte aligned and the verifier accepts unaligned packet loads on the architectures we
/// run on, while byte-wise reads (what `read_unaligned` becomes) cost several times more.
#[inline(always)]
pub fn at<T: Copy>(at: usize) -> T {
    // SAFETY: see above; every caller checked `at + size_of::<T>() <= end`.
    unsafe { *(at as *const T) }
}

/// Parses an IPv4 header at `h` (where `ethernet` says L3 starts) and the transport header
/// after it. Callers take the families apart (`ethernet`, then this or `ipv6`) so that each
/// gets code of its own, in which `Packet::v6` is a constant.
#[inline(always)]
pub fn ipv4(h: usize, end: usize) -> Result<Packet, Malformed> {
    if h + 20 > end {
        return Err(Malformed::Truncated);
    }
    let version_ihl: u8 = at(h);
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    let total_len = u16::from_be(at(h + 2)) as usize;
    if version_ihl >> 4 != 4 || ihl < 20 || total_len < ihl {
        return Err(Malformed::Truncated);
    }
    let mut p = Packet {
        v6: false,
        protocol: at(h + 9),
        has_ports: false,
        source_port: 0,
        dest_port: 0,
        tcp_flags: 0,
        src: [at(h + 12), 0, 0, 0],
        dst: [at(h + 16), 0, 0, 0],
    };
    // Options are covered by the IHL; make sure they are really in the frame.
    if h + ihl > end {
        return Err(Malformed::Truncated);
    }
    let fragment_offset = u16::from_be(at(h + 6)) & 0x1fff;
    if fragment_offset == 0 {
        transport(h + ihl, end, &mut p)?;
    }
    Ok(p)
}

/// Parses an IPv6 header at `h`, its extension headers (up to
/// `MAX_IPV6_EXTENSION_HEADERS`) and the transport header.
#[inline(always)]
pub fn ipv6(h: usize, end: usize) -> Result<Packet, Malformed> {
    if h + IPV6_HLEN > end {
        return Err(Malformed::Truncated);
    }
    let version: u8 = at(h);
    if version >> 4 != 6 {
        return Err(Malformed::Truncated);
    }
    let mut p = Packet {
        v6: true,
        protocol: at(h + 6),
        has_ports: false,
        source_port: 0,
        dest_port: 0,
        tcp_flags: 0,
        src: [at(h + 8), at(h + 12), at(h + 16), at(h + 20)],
        dst: [at(h + 24), at(h + 28), at(h + 32), at(h + 36)],
    };
    let mut offset = h + IPV6_HLEN;
    let mut first_fragment = true;
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        match p.protocol {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH => {
                if offset + 2 > end {
                    return Err(Malformed::Truncated);
                }
                let len: u8 = at(offset + 1);
                let bytes = if p.protocol == NEXTHDR_AUTH {
                    (len as usize + 2) * 4
                } else {
                    (len as usize + 1) * 8
                };
                p.protocol = at(offset);
                offset += bytes;
            }
            NEXTHDR_FRAGMENT => {
                if offset + 8 > end {
                    return Err(Malformed::Truncated);
                }
                if u16::from_be(at(offset + 2)) >> 3 != 0 {
                    first_fragment = false;
                }
                p.protocol = at(offset);
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
        transport(offset, end, &mut p)?;
    }
    Ok(p)
}

/// Reads the transport header at `t` into `p`.
#[inline(always)]
fn transport(t: usize, end: usize, p: &mut Packet) -> Result<(), Malformed> {
    use ebpf_shared::proto;
    // The whole fixed header must be there, not only the ports: a TCP segment cut inside its
    // header is not something a stack would accept either.
    let header = match p.protocol {
        proto::TCP => 20,
        proto::UDP => 8,
        proto::ICMP | proto::ICMPV6 => 4,
        _ => return Ok(()),
    };
    if t + header > end {
        return Err(Malformed::Truncated);
    }
    if header >= 8 {
        p.source_port = u16::from_be(at(t));
        p.dest_port = u16::from_be(at(t + 2));
        p.has_ports = true;
    }
    if header == 20 {
        p.tcp_flags = at(t + 13);
    }
    Ok(())
}

/// Index of the highest set bit (floor of log2); 0 for 0.
#[inline(always)]
pub fn highest_bit(mut x: u64) -> u32 {
    let mut n = 0;
    if x >> 32 != 0 {
        n += 32;
        x >>= 32;
    }
    if x >> 16 != 0 {
        n += 16;
        x >>= 16;
    }
    if x >> 8 != 0 {
        n += 8;
        x >>= 8;
    }
    if x >> 4 != 0 {
        n += 4;
        x >>= 4;
    }
    if x >> 2 != 0 {
        n += 2;
        x >>= 2;
    }
    if x >> 1 != 0 {
        n += 1;
    }
    n
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

/// Adds `add` to this CPU's counters for `key` in a per-CPU hash of counter arrays, making
/// the entry when there is none; returns this CPU's first counter afterwards.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn count_per_cpu<K, const N: usize>(
    map: &aya_ebpf::maps::PerCpuHashMap<K, [u64; N]>,
    key: &K,
    add: &[u64; N],
) -> u64 {
    match map.get_ptr_mut(key) {
        // SAFETY: this CPU's value: only this CPU writes it while the program runs.
        Some(v) => unsafe {
            for (c, a) in (*v).iter_mut().zip(add) {
                *c += *a;
            }
            (*v)[0]
        },
        None => {
            let _ = map.insert(key, add, 0);
            add[0]
        }
    }
}
