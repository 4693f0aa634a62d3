//! What XDP program an interface runs, and removing one this daemon does not own: rtnetlink
//! for programs attached the old way (`ip link set … xdp`, libxdp), bpf_link ids for those
//! attached through a link (another manager's). Used by `attach --force` and to name the
//! program in a conflict.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::api::AttachMode;

/// The XDP program an interface runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpOnLink {
    pub prog_id: u32,
    pub mode: AttachMode,
}

const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_FLAGS_HW_MODE: u32 = 1 << 3;

/// One request, and the messages that answer it (up to the ACK or the one reply).
pub(crate) fn exchange(
    message: RouteNetlinkMessage,
    flags: u16,
) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    // The kernel answers at once; a request it answers with nothing must not hang the caller.
    let timeout = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: a valid socket and a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut packet = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(message));
    packet.header.flags = flags;
    packet.header.sequence_number = 1;
    packet.finalize();
    let mut buf = vec![0; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let (bytes, _) = socket.recv_from_full()?;
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let m: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(&bytes[at..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let len = m.header.length as usize;
        if let NetlinkPayload::Error(e) = &m.payload
            && let Some(code) = e.code
        {
            return Err(io::Error::from_raw_os_error(-code.get()));
        }
        out.push(m);
        if len == 0 {
            break;
        }
        at += len;
    }
    Ok(out)
}

/// The XDP program on interface `ifindex`, if any.
pub fn xdp_of(ifindex: u32) -> io::Result<Option<XdpOnLink>> {
    let mut get = LinkMessage::default();
    get.header.index = ifindex;
    for m in exchange(RouteNetlinkMessage::GetLink(get), NLM_F_REQUEST)? {
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) = m.payload else {
            continue;
        };
        for attribute in link.attributes {
            let LinkAttribute::Xdp(xdp) = attribute else {
                continue;
            };
            let mut mode = None;
            let mut prog_id = 0;
            for a in xdp {
                match a {
                    LinkXdp::Attached(XdpAttached::Driver) => mode = Some(AttachMode::Drv),
                    LinkXdp::Attached(XdpAttached::SocketBuffer) => mode = Some(AttachMode::Skb),
                    LinkXdp::Attached(XdpAttached::Hardware) => mode = Some(AttachMode::Hw),
                    LinkXdp::ProgId(id) => prog_id = id,
                    _ => {}
                }
            }
            return Ok(mode.map(|mode| XdpOnLink { prog_id, mode }));
        }
    }
    Ok(None)
}

/// Removes the XDP program attached the old way (netlink) in `mode` from `ifindex`. A program
/// attached through a bpf_link refuses this (EBUSY): see `detach_links`.
pub fn detach_netlink(ifindex: u32, mode: AttachMode) -> io::Result<()> {
    let flags = match mode {
        AttachMode::Skb => XDP_FLAGS_SKB_MODE,
        AttachMode::Drv => XDP_FLAGS_DRV_MODE,
        AttachMode::Hw => XDP_FLAGS_HW_MODE,
    };
    let mut set = LinkMessage::default();
    set.header.index = ifindex;
    set.attributes.push(LinkAttribute::Xdp(vec![
        LinkXdp::Fd(-1),
        LinkXdp::Flags(flags),
    ]));
    exchange(RouteNetlinkMessage::SetLink(set), NLM_F_REQUEST | NLM_F_ACK).map(|_| ())
}

/// Detaches every XDP bpf_link on `ifindex` (BPF_LINK_DETACH: the link stays, its program is
/// off the interface). Returns how many.
pub fn detach_links(ifindex: u32) -> io::Result<usize> {
    let mut detached = 0;
    let mut id = 0u32;
    loop {
        match crate::sys::next_link_id(id) {
            Ok(next) => id = next,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(detached),
            Err(e) => return Err(e),
        }
        // A link torn down between listing and opening is simply gone.
        let Ok(fd) = crate::sys::link_fd_by_id(id) else {
            continue;
        };
        if crate::sys::xdp_link_ifindex(&fd)? == Some(ifindex) {
            crate::sys::link_detach(&fd)?;
            detached += 1;
        }
    }
}

/// The name the kernel gives program `id` (truncated to 15 bytes by the kernel).
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(String::from))
}
