//! `cargo xtask`: everything that is not a plain `cargo build`.
//!
//! - `setup`: installs what is missing (the dated nightly with rust-src, bpf-linker, Debian
//!   packages); a no-op when everything is there.
//! - `build`: setup, then every binary.
//! - `run`: the demo: two namespaces joined by a veth pair, the daemon with the firewall on one
//!   end, allowed and denied traffic from the other, the CLI's view every few seconds.
//! - `bench`: per-packet cost side by side with xdp-filter, written to BENCHMARKS.md.
//! - `test`: setup, build, then every test tier.

mod bench;
mod demo;
mod flowbench;
mod meshbench;
mod setup;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Args {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent).
    Setup,
    /// Setup, then build every binary.
    Build,
    /// Run the demo until Ctrl-C (or --duration).
    Run {
        /// Stop by itself after this many seconds.
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Per-packet cost side by side with xdp-filter, reading a million flows, the shaper's
    /// accuracy and the routes fast path against kernel forwarding; writes BENCHMARKS.md.
    Bench {
        /// Run only the flow-read part and print it (BENCHMARKS.md is left alone).
        #[arg(long)]
        flows_only: bool,
        /// Run only the shaper and routes part and print it (BENCHMARKS.md is left alone).
        #[arg(long)]
        mesh_only: bool,
        /// Run only the per-packet BPF_PROG_TEST_RUN rows against xdp-filter and print them
        /// (BENCHMARKS.md is left alone).
        #[arg(long)]
        firewall_only: bool,
        /// Set by the bench itself when it runs again from the release build.
        #[arg(long, hide = true)]
        release_built: bool,
    },
    /// Setup, build, then run every test tier (unit, kernel, integration).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        cargo_args: Vec<String>,
    },
}

fn main() {
    let result = match Args::parse().command {
        Task::Setup => setup::run(),
        Task::Build => setup::run().and_then(|_| build()),
        Task::Run { duration } => setup::run()
            .and_then(|_| build())
            .and_then(|_| demo::run(duration)),
        Task::Bench {
            flows_only,
            mesh_only,
            firewall_only,
            release_built: true,
        } => bench::run(flows_only, mesh_only, firewall_only),
        // The daemon and CLI are measured as shipped: the release build, which the bench
        // then runs from (the testbed starts the binaries beside the running executable).
        Task::Bench {
            flows_only,
            mesh_only,
            firewall_only,
            ..
        } => setup::run().and_then(|_| {
            status(cargo().args(["build", "--release", "--bins"]))
                .context("building the release binaries")?;
            // This is target/debug/xtask; its release twin is target/release/xtask.
            let exe = std::env::current_exe().context("finding xtask's own path")?;
            let target = exe
                .parent()
                .and_then(|d| d.parent())
                .context("xtask runs from target/<profile>/")?;
            let mut again = Command::new(target.join("release/xtask"));
            again.args(["bench", "--release-built"]);
            if flows_only {
                again.arg("--flows-only");
            }
            if mesh_only {
                again.arg("--mesh-only");
            }
            if firewall_only {
                again.arg("--firewall-only");
            }
            status(&mut again).context("the benchmark (release build)")
        }),
        Task::Test { cargo_args } => setup::run()
            .and_then(|_| build())
            .and_then(|_| test(&cargo_args)),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn build() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    status(cargo().args(["build", "--bins", "--tests"]))
        .context("building the workspace (a kernel-program build error points at ebpf-kern)")?;
    println!("xtask: built in {:.0?}", started.elapsed());
    Ok(())
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the kernel and integration tests load BPF programs and create network namespaces: \
             run `sudo -E cargo xtask test` (they fail rather than skip without root)"
        );
    }
    let started = std::time::Instant::now();
    let mut child = cargo()
        .arg("test")
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Pass the output through and add up every test binary's result line, so the run ends
    // with one total rather than the last (often empty) doc-test binary's count.
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().expect("piped stdout");
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    let result = child.wait().context("waiting for cargo test")?;
    println!("xtask: tests ran in {:.0?}", started.elapsed());
    println!("tests: {passed} passed, {failed} failed");
    if !result.success() {
        bail!("cargo test failed ({result})");
    }
    Ok(())
}

/// `count_before("ok. 10 passed; 0 failed", " passed")` is 10.
fn count_before(text: &str, label: &str) -> u64 {
    text.find(label)
        .and_then(|end| text[..end].rsplit([' ', '.']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
