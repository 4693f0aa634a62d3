//! What the daemon needs from the host before it can start: privileges, a bpffs for its pins,
//! its control socket.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::{Context as _, bail};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Fails with what to do when the process cannot load and attach BPF programs.
pub fn check_privileges() -> anyhow::Result<()> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    let bpf = has(CAP_BPF) || has(CAP_SYS_ADMIN);
    if !bpf || !has(CAP_NET_ADMIN) {
        bail!(
            "x0tta6bl4-ebpfd needs root, or CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN, to load and \
             attach eBPF programs; this process has CAP_BPF={} CAP_NET_ADMIN={}. Run it with sudo.",
            bpf,
            has(CAP_NET_ADMIN)
        );
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Makes sure `pin_root` is a directory on a bpffs. When its parent is the standard
/// `/sys/fs/bpf` and nothing is mounted there (as on minimal hosts), mounts bpffs there, as
/// systemd would have.
pub fn ensure_pin_root(pin_root: &Path) -> anyhow::Result<()> {
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
            .context("mounting bpffs on /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)")?;
            tracing::info!("mounted bpffs on /sys/fs/bpf");
        } else if !is_bpffs(pin_root) {
            bail!(
                "pin_root {} is not on a bpffs; mount one (`mount -t bpf bpf {}`) or set pin_root \
                 to a directory under /sys/fs/bpf",
                pin_root.display(),
                parent.display()
            );
        }
    }
    std::fs::create_dir_all(pin_root)
        .with_context(|| format!("creating pin_root {}", pin_root.display()))?;
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

/// Binds the control socket: creates its directory, replaces a stale socket left by a killed
/// daemon, and refuses to steal the socket of a live one.
pub fn bind_control_socket(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the socket directory {}", dir.display()))?;
    }
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => bail!(
                "another x0tta6bl4-ebpfd is already serving {}; stop it first, or give this one \
                 its own socket_path (--socket)",
                path.display()
            ),
            Err(_) => {
                tracing::warn!(socket = %path.display(), "removing the stale socket of a daemon that is gone");
                std::fs::remove_file(path)
                    .with_context(|| format!("removing stale socket {}", path.display()))?;
            }
        }
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("setting mode 0660 on {}", path.display()))?;
    Ok(listener)
}
