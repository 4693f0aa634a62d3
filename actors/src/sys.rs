//! Small facts about the running system that error messages need.

use std::path::Path;

/// The errno buried in an error chain (aya wraps it in `SyscallError` or a netlink error).
pub fn errno(err: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        if let Some(nl) = e.downcast_ref::<aya::sys::NetlinkError>()
            && let Some(code) = nl.raw_os_error()
        {
            return Some(code);
        }
        cur = e.source();
    }
    None
}

/// The whole chain of an error, `outer: inner: innermost`.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// An internal error: `what` failed, with the whole chain of `err`.
pub fn internal(what: &str, err: &(dyn std::error::Error + 'static)) -> crate::api::ApiError {
    crate::api::ApiError::new(
        crate::api::ErrorKind::Internal,
        format!("{what}: {}", chain(err)),
    )
}

/// Names of the network interfaces of this network namespace, sorted.
pub fn interface_names() -> Vec<String> {
    let mut names: Vec<String> = nix::net::if_::if_nameindex()
        .map(|list| {
            list.iter()
                .map(|i| i.name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The name of interface `ifindex` in this namespace, or `if<N>` when it has none (gone).
pub fn interface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf is IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("if{ifindex}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

pub fn interface_exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok()
}

/// `interface eth9 does not exist (interfaces here: eth0, lo)`.
pub fn unknown_interface_message(name: &str) -> String {
    format!(
        "interface {name} does not exist (interfaces here: {}); check `ip link show`",
        interface_names().join(", ")
    )
}

/// The index of `interface`; an unknown one is an error that lists the interfaces there are.
pub fn interface_index(interface: &str) -> Result<u32, crate::api::ApiError> {
    nix::net::if_::if_nametoindex(interface).map_err(|_| {
        crate::api::ApiError::new(
            crate::api::ErrorKind::UnknownInterface,
            unknown_interface_message(interface),
        )
    })
}

const EM_BPF: u16 = 247;

/// Checks that `bytes` look like a BPF ELF object before aya parses them, so that the user
/// learns *what* the file is rather than a parser error.
pub fn check_bpf_elf(path: &Path, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return Err(format!(
            "{} is not an ELF object (a BPF object is built with `clang -target bpf -c` or \
             for bpfel-unknown-none)",
            path.display()
        ));
    }
    let machine = if bytes[5] == 2 {
        u16::from_be_bytes([bytes[18], bytes[19]])
    } else {
        u16::from_le_bytes([bytes[18], bytes[19]])
    };
    if machine != EM_BPF {
        return Err(format!(
            "{} is an ELF object for machine type {machine}, not BPF ({EM_BPF}): it was \
             compiled for the host, not with `-target bpf`",
            path.display()
        ));
    }
    Ok(())
}

/// Replaces `path` with `bytes` so that a crash leaves the old file or the new one, never a
/// mix: write a temporary file beside it, fsync, rename over, fsync the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Makes sure `pin_root` is a directory on a bpffs. When its parent is the standard
/// `/sys/fs/bpf` and nothing is mounted there (as on minimal hosts), mounts bpffs there, as
/// systemd would have.
pub fn ensure_pin_root(pin_root: &Path) -> Result<(), String> {
    let parent = pin_root.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(parent) {
        if parent == Path::new("/sys/fs/bpf") && parent.is_dir() {
            nix::mount::mount(
                Some("bpf"),
                parent,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .map_err(|e| format!("mounting bpffs on /sys/fs/bpf failed ({e}); mount it with `mount -t bpf bpf /sys/fs/bpf`"))?;
            tracing::info!("mounted bpffs on /sys/fs/bpf");
        } else if !is_bpffs(pin_root) {
            return Err(format!(
                "pin_root {} is not on a bpffs; mount one (`mount -t bpf bpf {}`) or set pin_root \
                 to a directory under /sys/fs/bpf",
                pin_root.display(),
                parent.display()
            ));
        }
    }
    std::fs::create_dir_all(pin_root)
        .map_err(|e| format!("creating pin_root {}: {e}", pin_root.display()))?;
    Ok(())
}

/// Removes `pin_root` when nothing is pinned in it any more.
pub fn remove_pin_root_if_empty(pin_root: &Path) {
    if let Ok(mut entries) = std::fs::read_dir(pin_root)
        && entries.next().is_none()
    {
        let _ = std::fs::remove_dir(pin_root);
    }
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_TYPE_XDP: u32 = 6;
/// Larger than any bpf_attr layout used here; the kernel requires the unused tail to be zero.
const ATTR: usize = 128;

/// One bpf(2) call with `attr` (ATTR bytes, the rest zero); the return value.
fn bpf(cmd: libc::c_long, attr: &mut [u8; ATTR]) -> std::io::Result<i64> {
    // SAFETY: attr is a zero-padded bpf_attr for `cmd`, ATTR bytes that outlive the call;
    // every pointer its caller put in refers to memory alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned_fd(fd: i64) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

/// The interface of the XDP bpf_link behind `fd`: `Some(0)` when it has been detached (`bpftool
/// link detach`, or its interface deleted), `None` when it is no XDP link. aya's `LinkInfo`
/// does not expose this: BPF_OBJ_GET_INFO_BY_FD, whose `xdp.ifindex` sits at offset 16 of
/// `struct bpf_link_info` (after type, id, prog_id and 8-byte alignment).
pub fn xdp_link_ifindex(fd: &std::os::fd::OwnedFd) -> std::io::Result<Option<u32>> {
    use std::os::fd::AsRawFd as _;
    let mut info = [0u8; ATTR];
    let mut attr = [0u8; ATTR];
    attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(ATTR as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let word = |at: usize| u32::from_ne_bytes([info[at], info[at + 1], info[at + 2], info[at + 3]]);
    Ok((word(0) == BPF_LINK_TYPE_XDP).then(|| word(16)))
}

/// Opens the BPF object pinned at `pin` (BPF_OBJ_GET).
pub fn obj_get(pin: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut attr = [0u8; ATTR];
    attr[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET, &mut attr).map(owned_fd)
}

/// The interface an XDP bpf_link pinned at `pin` is attached to; 0 when the link has been
/// detached.
pub fn pinned_xdp_link_ifindex(pin: &Path) -> std::io::Result<u32> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut attr = [0u8; ATTR];
    attr[..8].copy_from_slice(&(path.as_ptr() as u64).to_ne_bytes());
    let fd = owned_fd(bpf(BPF_OBJ_GET, &mut attr)?);
    Ok(xdp_link_ifindex(&fd)?.unwrap_or(0))
}

/// The next bpf_link id after `id` (ENOENT after the last).
pub fn next_link_id(id: u32) -> std::io::Result<u32> {
    let mut attr = [0u8; ATTR];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    bpf(BPF_LINK_GET_NEXT_ID, &mut attr)?;
    Ok(u32::from_ne_bytes([attr[4], attr[5], attr[6], attr[7]]))
}

pub fn link_fd_by_id(id: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    let mut attr = [0u8; ATTR];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    bpf(BPF_LINK_GET_FD_BY_ID, &mut attr).map(owned_fd)
}

/// BPF_LINK_DETACH: the program leaves its hook; the link object lives on, detached.
pub fn link_detach(fd: &std::os::fd::OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut attr = [0u8; ATTR];
    attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

/// Pins `link` at `pin` (its directory made first), so that it outlives its holder; the
/// returned handle holds it too.
pub fn pin_link(
    link: aya::programs::links::FdLink,
    pin: &Path,
) -> Result<aya::programs::links::FdLink, String> {
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let pinned = link
        .pin(pin)
        .map_err(|e| format!("pinning a link at {}: {e}", pin.display()))?;
    Ok(pinned.into())
}

/// BPF_LINK_UPDATE: swaps `program` into the link, atomically (the hook is never empty).
pub fn link_update(
    link: std::os::fd::BorrowedFd<'_>,
    program: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut attr = [0u8; ATTR];
    attr[..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    attr[4..8].copy_from_slice(&(program.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}

/// An address as the kernel programs keep it (network-order words as read from the packet,
/// IPv4 in word 0).
pub fn address_from_words(words: &[u32; 4], v6: bool) -> std::net::IpAddr {
    let mut bytes = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    if v6 {
        std::net::IpAddr::from(bytes)
    } else {
        std::net::IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

/// Mounts tracefs on /sys/kernel/tracing when it is not mounted (it is not by default here);
/// tracepoint programs attach through it.
pub fn ensure_tracefs() -> Result<(), String> {
    let events = Path::new("/sys/kernel/tracing/events");
    if events.is_dir() || Path::new("/sys/kernel/debug/tracing/events").is_dir() {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        "/sys/kernel/tracing",
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mounting tracefs on /sys/kernel/tracing failed ({e}); mount it with `mount -t tracefs tracefs /sys/kernel/tracing`"))?;
    tracing::info!("mounted tracefs on /sys/kernel/tracing");
    Ok(())
}

/// Removes a directory of pins (maps and links) and everything in it. Unlinking a pin drops
/// only the name: what a process still holds stays alive until it lets go.
pub fn remove_pins(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                remove_pins(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// One numeric field of `/proc/self/fdinfo/<fd>`. For a BPF map, `memlock` is the memory the
/// kernel charges for it, the figure `bpftool map show` prints as `memlock`.
pub fn fdinfo_field(fd: std::os::fd::BorrowedFd<'_>, key: &str) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path)?;
    text.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(k, _)| k.trim() == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{path} has no numeric `{key}` field"),
            )
        })
}

/// Calls `changed` whenever the kernel announces a link change in this network namespace
/// (rtnetlink's RTMGRP_LINK: an interface created, deleted, up, down, renamed). The message
/// itself is not parsed: the callers check the interfaces they care about. Runs on a thread
/// of its own for the life of the process.
pub fn watch_links(changed: impl Fn() + Send + 'static) -> std::io::Result<()> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
    };
    use std::os::fd::AsRawFd as _;
    const RTMGRP_LINK: u32 = 1;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, RTMGRP_LINK))?;
    std::thread::Builder::new()
        .name("netlink-links".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                    Ok(_) => changed(),
                    Err(nix::errno::Errno::EINTR) => {}
                    // The kernel dropped messages for us: something changed all the same.
                    Err(nix::errno::Errno::ENOBUFS) => changed(),
                    Err(e) => {
                        tracing::warn!(error = %e, "netlink link events stopped; the periodic check goes on");
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

/// Why an existing interface passes no traffic, if it does not: administratively down, or
/// up without a carrier. `None` when it is up and running (or gone: that is another matter).
pub fn link_down_reason(name: &str) -> Option<String> {
    use nix::net::if_::InterfaceFlags;
    let flags = nix::ifaddrs::getifaddrs()
        .ok()?
        .find(|i| i.interface_name == name)?
        .flags;
    if !flags.contains(InterfaceFlags::IFF_UP) {
        Some(format!(
            "interface {name} is down (administratively): the program stays attached but sees no packets; `ip link set {name} up`"
        ))
    } else if !flags.contains(InterfaceFlags::IFF_RUNNING) {
        Some(format!(
            "interface {name} is up but has no carrier (its link or peer is down): the program stays attached but sees no packets"
        ))
    } else {
        None
    }
}

/// `union bpf_attr` as the BPF_MAP_*_BATCH commands read it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a complete bpf_attr for the batch commands; every pointer in it refers
    // to a buffer its caller sized for `count` elements, alive for the call. The kernel writes
    // back `count` (and `out_batch`), nothing beyond.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads a whole hash map with BPF_MAP_LOOKUP_BATCH, `chunk` elements per system call (aya
/// offers only one lookup per key, two system calls per element). `value_size` is the bytes
/// the kernel copies per element: for a per-CPU map, the value rounded up to 8 bytes, times the
/// possible CPUs. `each` sees every chunk as (keys, values, elements).
pub fn lookup_batch(
    fd: std::os::fd::BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    chunk: u32,
    mut each: impl FnMut(&[u8], &[u8], usize),
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut keys = vec![0u8; key_size * chunk as usize];
    let mut values = vec![0u8; value_size * chunk as usize];
    // The position token: a bucket number (u32) for hash maps, a key for others.
    let mut token = vec![0u8; key_size.max(8)];
    let mut next = vec![0u8; key_size.max(8)];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let at_end = match result {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) => return Err(e),
        };
        let n = (attr.count as usize).min(chunk as usize);
        if n > 0 {
            each(&keys[..n * key_size], &values[..n * value_size], n);
        }
        if at_end {
            return Ok(());
        }
        std::mem::swap(&mut token, &mut next);
        first = false;
    }
}

/// Deletes `keys` (packed, `key_size` bytes each) with BPF_MAP_DELETE_BATCH. A key already
/// gone (an LRU map evicts on its own) is skipped, not an error. Returns how many were deleted.
pub fn delete_batch(
    fd: std::os::fd::BorrowedFd<'_>,
    keys: &[u8],
    key_size: usize,
) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let total = keys.len() / key_size;
    let mut at = 0;
    let mut deleted = 0u64;
    while at < total {
        let mut attr = BatchAttr {
            keys: keys[at * key_size..].as_ptr() as u64,
            count: (total - at) as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf_batch(BPF_MAP_DELETE_BATCH, &mut attr);
        let done = attr.count as usize;
        deleted += done as u64;
        at += done;
        match result {
            Ok(()) => {}
            // The element at `at` was not there: step over it.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => at += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// A reconciliation step, now.
pub fn reconciled(kind: &str, detail: String) -> crate::api::ReconcileStep {
    crate::api::ReconcileStep {
        at: now_rfc3339(),
        kind: kind.to_string(),
        detail,
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_check_names_what_the_file_is() {
        let p = Path::new("x.o");
        assert!(
            check_bpf_elf(p, b"hello world, not an object")
                .unwrap_err()
                .contains("not an ELF")
        );
        let mut host = vec![0u8; 64];
        host[..4].copy_from_slice(b"\x7fELF");
        host[5] = 1;
        host[18] = 62; // EM_X86_64
        assert!(
            check_bpf_elf(p, &host)
                .unwrap_err()
                .contains("machine type 62")
        );
        host[18] = 247;
        assert!(check_bpf_elf(p, &host).is_ok());
    }

    #[test]
    fn atomic_writes_replace_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        write_atomically(&path, b"first version, longer").unwrap();
        write_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn fdinfo_fields_are_read_and_missing_ones_named() {
        use std::os::fd::AsFd as _;
        let file = std::fs::File::open("/proc/self/status").unwrap();
        // Every fdinfo has `flags` (octal digits) and `mnt_id`.
        assert!(fdinfo_field(file.as_fd(), "mnt_id").is_ok());
        let err = fdinfo_field(file.as_fd(), "memlock").unwrap_err();
        assert!(
            err.to_string().contains("no numeric `memlock` field"),
            "{err}"
        );
    }

    #[test]
    fn loopback_is_listed() {
        assert!(interface_names().iter().any(|n| n == "lo"));
        assert!(interface_exists("lo"));
        assert!(unknown_interface_message("nope0").contains("lo"));
    }
}
