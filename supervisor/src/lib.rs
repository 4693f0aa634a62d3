//! The daemon `x0tta6bl4-ebpfd` as a library: config, the root of the supervision tree, the
//! control socket. `main.rs` only wires them together.

pub mod alerts;
pub mod config;
pub mod control;
pub mod custom_metrics;
pub mod host;
pub mod mapek;
pub mod metrics;
pub mod root;
pub mod strategy;
