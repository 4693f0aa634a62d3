//! Builds the kernel programs (`ebpf-kern`, one ELF per `[[bin]]`) into OUT_DIR so that the
//! LoaderActor can embed them. Only the `runtime` feature needs them: the CLI skips this.

use anyhow::Context as _;

/// The dated nightly the kernel crate is built with; `cargo xtask setup` installs the same one.
const BPF_TOOLCHAIN: &str = include_str!("../bpf-toolchain");

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=../bpf-toolchain");
    println!("cargo:rerun-if-changed=../ebpf-shared");
    if std::env::var_os("CARGO_FEATURE_RUNTIME").is_none() {
        return Ok(());
    }
    let toolchain = BPF_TOOLCHAIN.trim();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ebpf-kern",
            root_dir: "../ebpf-kern",
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(toolchain),
    )
    .with_context(|| {
        format!(
            "building the kernel programs failed; they need the {toolchain} toolchain with \
             rust-src and bpf-linker 0.10.4: run `cargo xtask setup`"
        )
    })
}
