//! The daemon's config: a TOML file whose keys are the original design's `OrchestratorConfig`
//! fields plus paths, and the per-program config of the original design (as TOML tables under
//! `[programs.NAME]`, or as the original JSON file named by `programs_config`).
//! Defaults live here and nowhere else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use actors::api::{AttachMode, FirewallRule, RuleAction};
use actors::loader::FirewallSettings;
use serde::Deserialize;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/x0tta6bl4/ebpf.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Interface the built-in firewall is attached to at start (with `auto_load_programs`).
    /// An empty string means none.
    pub interface: String,
    /// Where user-supplied `.o` objects are looked up.
    pub programs_dir: PathBuf,
    pub enable_flow_observability: bool,
    /// Flows the kernel table holds before the least recently seen are pushed out.
    pub flow_table_size: u32,
    /// The firewall keeps each CPU's recent verdicts (per packet fields and rule set) and
    /// answers a packet like one it has just seen without its tables.
    pub enable_verdict_cache: bool,
    /// How often the FlowActor reads the flow tables (for rates and ageing; a `flows` query
    /// reads them at once).
    pub flow_poll_interval_seconds: f64,
    /// A flow without a packet for this long is removed from the kernel table.
    pub flow_idle_timeout_seconds: f64,
    /// Load the TCP probe (`tcp_state`) at start, with `enable_flow_observability`.
    pub enable_tcp_probe: bool,
    pub enable_metrics_export: bool,
    pub enable_dynamic_fallback: bool,
    /// How often a degraded (drv→skb) attachment is probed for driver mode again, at the
    /// least; refused probes double the wait (up to 32×).
    pub fallback_probe_interval_seconds: f64,
    /// A driver-mode attachment whose interface sees more XDP_ABORTED returns a second than
    /// this (tracepoint `xdp/xdp_exception`) is degraded to skb mode; 0 turns the watch off.
    pub fallback_abort_rate: f64,
    pub enable_mapek_integration: bool,
    pub prometheus_port: u16,
    /// Address the metrics endpoint listens on (with `prometheus_port`).
    pub metrics_bind_address: std::net::IpAddr,
    pub latency_threshold_ms: f64,
    pub monitoring_interval_seconds: f64,
    pub auto_load_programs: bool,
    /// At SIGTERM, leave the programs attached (on their pinned links) for the next start
    /// to adopt, instead of detaching everything.
    pub keep_attached_on_shutdown: bool,
    pub socket_path: PathBuf,
    pub pin_root: PathBuf,
    pub state_dir: PathBuf,
    pub log_file: PathBuf,
    /// `log_file` is rotated once it grows past this many bytes (to `ebpf.log.1`, …).
    pub log_max_bytes: u64,
    /// Rotated log files kept besides `log_file`; older ones are deleted.
    pub log_max_files: u32,
    /// The original design's per-program JSON file.
    pub programs_config: Option<PathBuf>,
    /// The same per-program config, inline.
    pub programs: BTreeMap<String, ProgramConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interface: "eth0".into(),
            programs_dir: "/opt/x0tta6bl4/ebpf".into(),
            enable_flow_observability: true,
            flow_table_size: ebpf_shared_flow_table_default(),
            enable_verdict_cache: true,
            flow_poll_interval_seconds: 2.0,
            flow_idle_timeout_seconds: 120.0,
            enable_tcp_probe: true,
            enable_metrics_export: true,
            enable_dynamic_fallback: true,
            fallback_probe_interval_seconds: 60.0,
            fallback_abort_rate: 100.0,
            enable_mapek_integration: true,
            prometheus_port: 9090,
            metrics_bind_address: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            latency_threshold_ms: 100.0,
            monitoring_interval_seconds: 10.0,
            auto_load_programs: true,
            keep_attached_on_shutdown: false,
            socket_path: actors::api::DEFAULT_SOCKET_PATH.into(),
            pin_root: "/sys/fs/bpf/x0tta6bl4".into(),
            state_dir: "/var/lib/x0tta6bl4/ebpf".into(),
            log_file: "/var/log/x0tta6bl4/ebpf.log".into(),
            log_max_bytes: 10 * 1024 * 1024,
            log_max_files: 5,
            programs_config: None,
            programs: BTreeMap::new(),
        }
    }
}

/// One entry of the per-program config, e.g. `"xdp_firewall": {"type": "xdp", ...}`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ProgramConfig {
    #[serde(rename = "type")]
    pub program_type: Option<String>,
    pub attach_mode: Option<AttachMode>,
    #[serde(default)]
    pub rules: Vec<FirewallRule>,
    pub default_policy: Option<RuleAction>,
    pub bandwidth_limit: Option<String>,
    pub latency_target: Option<String>,
}

/// Programs the per-program config may name, with the `type` each must have.
const KNOWN_PROGRAMS: [(&str, &str); 2] = [("xdp_firewall", "xdp"), ("tc_shaper", "tc")];

impl Config {
    /// Reads and validates `path`; every error names the file and, where there is one, the key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        if let Some(json_path) = config.programs_config.clone() {
            let json_path = if json_path.is_relative() {
                path.parent().unwrap_or(Path::new(".")).join(json_path)
            } else {
                json_path
            };
            let text = std::fs::read_to_string(&json_path).map_err(|source| ConfigError::Read {
                path: json_path.clone(),
                source,
            })?;
            let from_json: BTreeMap<String, ProgramConfig> =
                serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: json_path.clone(),
                    message: e.to_string(),
                })?;
            for (name, program) in from_json {
                if config.programs.contains_key(&name) {
                    return Err(invalid(
                        path,
                        format!("programs.{name}"),
                        format!(
                            "{name} is configured both here and in {}: keep one",
                            json_path.display()
                        ),
                    ));
                }
                config.programs.insert(name, program);
            }
        }
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if !(1_024..=16_777_216).contains(&self.flow_table_size) {
            return Err(invalid(
                path,
                "flow_table_size",
                format!("{} is outside 1024..=16777216 flows", self.flow_table_size),
            ));
        }
        if self.log_max_bytes < 4096 {
            return Err(invalid(
                path,
                "log_max_bytes",
                format!(
                    "{} bytes is too small: use at least 4096",
                    self.log_max_bytes
                ),
            ));
        }
        if !(self.fallback_abort_rate.is_finite() && self.fallback_abort_rate >= 0.0) {
            return Err(invalid(
                path,
                "fallback_abort_rate",
                format!(
                    "must be 0 (off) or a positive number of aborts a second, not {}",
                    self.fallback_abort_rate
                ),
            ));
        }
        if self.log_max_files == 0 {
            return Err(invalid(
                path,
                "log_max_files",
                "must keep at least 1 rotated file",
            ));
        }
        if self.prometheus_port == 0 {
            return Err(invalid(
                path,
                "prometheus_port",
                "must be a port between 1 and 65535",
            ));
        }
        for (key, value) in [
            ("latency_threshold_ms", self.latency_threshold_ms),
            (
                "monitoring_interval_seconds",
                self.monitoring_interval_seconds,
            ),
            (
                "flow_poll_interval_seconds",
                self.flow_poll_interval_seconds,
            ),
            (
                "fallback_probe_interval_seconds",
                self.fallback_probe_interval_seconds,
            ),
            ("flow_idle_timeout_seconds", self.flow_idle_timeout_seconds),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(invalid(
                    path,
                    key,
                    format!("must be a positive number, not {value}"),
                ));
            }
        }
        if !self.interface.is_empty() {
            check_interface_name(&self.interface).map_err(|m| invalid(path, "interface", m))?;
        }
        for (key, p) in [
            ("socket_path", &self.socket_path),
            ("pin_root", &self.pin_root),
            ("state_dir", &self.state_dir),
            ("log_file", &self.log_file),
        ] {
            if !p.is_absolute() {
                return Err(invalid(
                    path,
                    key,
                    format!("must be an absolute path, not {}", p.display()),
                ));
            }
        }
        for (name, program) in &self.programs {
            let Some((_, expected_type)) = KNOWN_PROGRAMS.iter().find(|(n, _)| n == name) else {
                let known: Vec<&str> = KNOWN_PROGRAMS.iter().map(|(n, _)| *n).collect();
                return Err(invalid(
                    path,
                    format!("programs.{name}"),
                    format!(
                        "no built-in program is called {name} (known: {})",
                        known.join(", ")
                    ),
                ));
            };
            if let Some(t) = &program.program_type
                && t != expected_type
            {
                return Err(invalid(
                    path,
                    format!("programs.{name}.type"),
                    format!("{name} is a {expected_type} program, not {t}"),
                ));
            }
            let default_policy = program.default_policy.unwrap_or(RuleAction::Allow);
            if let Err(e) = actors::rules::compile(&program.rules, default_policy) {
                let key = match &e {
                    actors::rules::CompileError::Invalid { index, .. } => {
                        format!("programs.{name}.rules[{index}]")
                    }
                    _ => format!("programs.{name}.rules"),
                };
                return Err(invalid(path, key, e.to_string()));
            }
            if let Some(rate) = &program.bandwidth_limit {
                parse_rate(rate)
                    .map_err(|m| invalid(path, format!("programs.{name}.bandwidth_limit"), m))?;
                if self.interface.is_empty() {
                    return Err(invalid(
                        path,
                        format!("programs.{name}.bandwidth_limit"),
                        "shapes the daemon's `interface`, which is not set: set `interface`, or leave this out and use `x0tta6bl4-ebpf shaper set IFACE --rate R`",
                    ));
                }
            }
            if let Some(latency) = &program.latency_target {
                parse_latency(latency)
                    .map_err(|m| invalid(path, format!("programs.{name}.latency_target"), m))?;
            }
        }
        Ok(())
    }

    /// The built-in firewall's settings.
    pub fn firewall(&self) -> FirewallSettings {
        let defaults = FirewallSettings {
            flows: self.enable_flow_observability,
            flow_table_size: self.flow_table_size,
            verdict_cache: self.enable_verdict_cache,
            ..FirewallSettings::default()
        };
        match self.programs.get("xdp_firewall") {
            Some(p) => FirewallSettings {
                rules: p.rules.clone(),
                default_policy: p.default_policy.unwrap_or(defaults.default_policy),
                attach_mode: p.attach_mode.unwrap_or(defaults.attach_mode),
                ..defaults
            },
            None => defaults,
        }
    }
}

impl Config {
    /// The shaper setting of `programs.tc_shaper`: its `bandwidth_limit` (and
    /// `latency_target`, default 50ms) on the daemon's `interface`.
    pub fn shaper(&self) -> Vec<actors::shaper::ShaperSetting> {
        let Some(p) = self.programs.get("tc_shaper") else {
            return Vec::new();
        };
        let (Some(rate), false) = (&p.bandwidth_limit, self.interface.is_empty()) else {
            return Vec::new();
        };
        let latency = p
            .latency_target
            .as_deref()
            .unwrap_or(DEFAULT_LATENCY_TARGET);
        match (parse_rate(rate), parse_latency(latency)) {
            (Ok(rate), Ok(latency)) => vec![actors::shaper::ShaperSetting {
                interface: self.interface.clone(),
                rate_bits_per_second: rate,
                latency_target_us: latency,
            }],
            _ => Vec::new(),
        }
    }
}

/// `latency_target` when `programs.tc_shaper` gives none.
pub const DEFAULT_LATENCY_TARGET: &str = "50ms";

fn ebpf_shared_flow_table_default() -> u32 {
    actors::loader::FirewallSettings::default().flow_table_size
}

fn invalid(path: &Path, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.into(),
        message: message.into(),
    }
}

/// Linux interface names: 1..=15 bytes, no `/`, no whitespace, not `.` or `..`.
pub fn check_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "{name:?} is not an interface name (1 to 15 characters)"
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!(
            "{name:?} is not an interface name (no '/', ':' or spaces)"
        ));
    }
    Ok(())
}

pub use actors::shaper::{parse_latency, parse_rate};

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/test.toml"), text)
    }

    #[test]
    fn empty_file_gives_the_original_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.interface, "eth0");
        assert_eq!(c.prometheus_port, 9090);
        assert!(c.auto_load_programs);
        assert_eq!(c.latency_threshold_ms, 100.0);
        assert_eq!(c.monitoring_interval_seconds, 10.0);
    }

    #[test]
    fn unknown_key_names_the_key_and_the_file() {
        let e = parse("interfcae = \"eth1\"\n").unwrap_err().to_string();
        assert!(e.contains("/etc/test.toml"), "{e}");
        assert!(e.contains("interfcae"), "{e}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let e = parse("prometheus_port = \"ninety\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("prometheus_port"), "{e}");
        let e = parse("prometheus_port = 0\n").unwrap_err().to_string();
        assert!(e.contains("`prometheus_port`"), "{e}");
        let e = parse("latency_threshold_ms = -1.0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("latency_threshold_ms"), "{e}");
        let e = parse("interface = \"a/b\"\n").unwrap_err().to_string();
        assert!(e.contains("`interface`"), "{e}");
        let e = parse("socket_path = \"relative.sock\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("socket_path"), "{e}");
    }

    #[test]
    fn per_program_config_of_the_original_design_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("programs.json");
        std::fs::write(
            &json,
            r#"{
  "xdp_firewall": {
    "type": "xdp",
    "attach_mode": "drv",
    "rules": [
      {"action": "drop", "source_ip": "192.168.1.100"},
      {"action": "allow", "protocol": "tcp", "port": 443}
    ]
  },
  "tc_shaper": {
    "type": "tc",
    "bandwidth_limit": "100mbit",
    "latency_target": "50ms"
  }
}"#,
        )
        .unwrap();
        let toml_path = dir.path().join("ebpf.toml");
        let c = Config::parse(&toml_path, "programs_config = \"programs.json\"\n").unwrap();
        let fw = c.firewall();
        assert_eq!(fw.rules.len(), 2);
        assert_eq!(fw.attach_mode, AttachMode::Drv);
        assert_eq!(fw.default_policy, RuleAction::Allow);
    }

    #[test]
    fn inline_program_tables_are_validated() {
        let ok = parse(
            r#"
[programs.xdp_firewall]
attach_mode = "skb"
default_policy = "drop"
rules = [{ action = "allow", protocol = "icmp" }]
"#,
        )
        .unwrap();
        assert_eq!(ok.firewall().attach_mode, AttachMode::Skb);
        assert_eq!(ok.firewall().default_policy, RuleAction::Drop);
        let e = parse("[programs.xdp_firewall]\nrules = [{ action = \"drop\", protocol = \"icmp\", port = 22 }]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("programs.xdp_firewall.rules[0]"), "{e}");
        let e = parse("[programs.tc_shaper]\nbandwidth_limit = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("programs.tc_shaper.bandwidth_limit"), "{e}");
        let e = parse("[programs.xdp_firwall]\n").unwrap_err().to_string();
        assert!(e.contains("xdp_firwall") && e.contains("known"), "{e}");
        let e = parse("[programs.xdp_firewall]\ntype = \"tc\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("programs.xdp_firewall.type"), "{e}");
    }

    #[test]
    fn rates_and_latencies() {
        assert_eq!(parse_rate("100mbit").unwrap(), 100_000_000);
        assert_eq!(parse_rate("1gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate("500kbit").unwrap(), 500_000);
        assert!(parse_rate("100").is_err());
        assert!(parse_rate("0mbit").is_err());
        assert_eq!(parse_latency("50ms").unwrap(), 50_000);
        assert!(parse_latency("fast").is_err());
    }
}
