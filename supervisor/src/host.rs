//! What the daemon needs from the host before it can start: privileges, a bpffs for its pins,
//! its control socket.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::{Context as _, bail};

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

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
