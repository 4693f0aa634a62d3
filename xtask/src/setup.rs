//! `cargo xtask setup`: makes a fresh machine of this kind able to build and test the project.
//! Each step checks first and does nothing when its piece is there.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};

use crate::status;

/// The nightly the kernel programs are built with (also read by actors/build.rs).
const BPF_TOOLCHAIN: &str = include_str!("../../bpf-toolchain");
const BPF_LINKER_VERSION: &str = "0.10.4";
/// What the tests and the demo use: bpftool (assert kernel state), iproute2 (netns, veth),
/// iputils-ping (traffic), util-linux (nsenter), procps (sysctl), xdp-tools (the peer),
/// prometheus (promtool checks /metrics), tmux (drives `top` in a real terminal), tcpreplay
/// (replays a pcap across the veth for the flow-accuracy test), iperf3 (the shaper's
/// accuracy test and bench).
const DEBIAN_PACKAGES: [&str; 10] = [
    "iperf3",
    "tcpreplay",
    "prometheus",
    "tmux",
    "bpftool",
    "iproute2",
    "iputils-ping",
    "util-linux",
    "procps",
    "xdp-tools",
];

pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    nightly().context("installing the nightly toolchain for the kernel programs")?;
    bpf_linker().context("installing bpf-linker")?;
    debian_packages().context("installing Debian packages")?;
    println!("xtask: setup done in {:.1?}", started.elapsed());
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly() -> anyhow::Result<()> {
    let toolchain = BPF_TOOLCHAIN.trim();
    // Never let rustup replace itself as a side effect of installing a toolchain.
    status(
        Command::new("rustup")
            .args(["set", "auto-self-update", "disable"])
            .stdout(std::process::Stdio::null()),
    )
    .context("rustup is needed (https://rustup.rs); this project builds with it")?;
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    println!("xtask: installing {toolchain} with rust-src (for the kernel programs)");
    status(Command::new("rustup").args([
        "toolchain",
        "install",
        toolchain,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
    .with_context(|| {
        format!(
            "fix: `rustup toolchain install {toolchain} --profile minimal --component rust-src`"
        )
    })
}

fn bpf_linker() -> anyhow::Result<()> {
    let list = output(crate::cargo().args(["install", "--list"]))?;
    if list
        .lines()
        .any(|l| l.starts_with(&format!("bpf-linker v{BPF_LINKER_VERSION}")))
    {
        return Ok(());
    }
    println!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (about a minute)");
    status(crate::cargo().args([
        "install",
        "--locked",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
    ]))
    .with_context(|| format!("fix: `cargo install --locked bpf-linker@{BPF_LINKER_VERSION}`"))
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let status = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .unwrap_or_default();
            !status.contains("install ok installed")
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "missing Debian packages: {}; install them with `sudo apt-get install {}` or run as root",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("xtask: installing Debian packages: {}", missing.join(" "));
    status(Command::new("apt-get").args(["update", "-q"]))
        .context("fix: check that the Debian mirror is reachable (`apt-get update`)")?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("fix: `apt-get install {}`", missing.join(" ")))
}
