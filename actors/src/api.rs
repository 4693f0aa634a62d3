//! The wire API between `x0tta6bl4-ebpf` (CLI) and `x0tta6bl4-ebpfd` (daemon).
//!
//! A frame is a 4-byte big-endian length, then a version byte, then a bincode 2 (serde)
//! payload; the length counts the version byte and the payload. One request gets one
//! response. These types also define the CLI's `--json` output, so their field names are a
//! stable contract: add fields, never rename them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Version byte of every frame. Bump it when a change to these types is not compatible.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest frame (version byte + payload) either side accepts.
pub const MAX_FRAME_LEN: usize = 1 << 20;
/// Length prefix + version byte.
pub const FRAME_HEADER_LEN: usize = 5;
/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/x0tta6bl4/ebpf.sock";

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native XDP in the driver.
    Drv,
    /// Generic XDP on the skb path; works on every interface.
    Skb,
    /// Offloaded to the NIC.
    Hw,
}

impl AttachMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachMode::Drv => "drv",
            AttachMode::Skb => "skb",
            AttachMode::Hw => "hw",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drv" | "native" => Ok(AttachMode::Drv),
            "skb" | "generic" => Ok(AttachMode::Skb),
            "hw" | "offload" => Ok(AttachMode::Hw),
            other => Err(format!("unknown attach mode {other:?}: use drv, skb or hw")),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProgramType {
    Xdp,
    Tc,
    CgroupSkb,
    SocketFilter,
    Tracepoint,
    Other,
}

impl ProgramType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProgramType::Xdp => "xdp",
            ProgramType::Tc => "tc",
            ProgramType::CgroupSkb => "cgroup_skb",
            ProgramType::SocketFilter => "socket_filter",
            ProgramType::Tracepoint => "tracepoint",
            ProgramType::Other => "other",
        }
    }
}

impl fmt::Display for ProgramType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    /// Loads a built-in program by name or a `.o` from `programs_dir`; `mode` becomes the
    /// program's default attach mode.
    Load {
        name: String,
        mode: Option<AttachMode>,
    },
    Attach {
        program_id: String,
        interface: String,
        mode: Option<AttachMode>,
    },
    Detach {
        program_id: String,
        interface: String,
    },
    Unload {
        program_id: String,
    },
    Programs,
    Stats,
    Health,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Response {
    Status(Status),
    Loaded(ProgramInfo),
    Attached(Attachment),
    Detached(Attachment),
    Unloaded { program_id: String },
    Programs(Vec<ProgramInfo>),
    Stats(Vec<ProgramStats>),
    Health(Health),
    Error(ApiError),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub program_id: String,
    pub interface: String,
    pub mode: AttachMode,
    pub program_type: ProgramType,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub version: String,
    pub uptime_seconds: u64,
    pub programs_loaded: usize,
    pub attachments: Vec<Attachment>,
    pub processed_packets: u64,
    pub passed_packets: u64,
    pub blocked_packets: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAttachment {
    pub interface: String,
    pub mode: AttachMode,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProgramInfo {
    /// Stable, readable id: `<name>-<n>`.
    pub id: String,
    /// The program's name in its object (the function name).
    pub name: String,
    pub program_type: ProgramType,
    /// The kernel's program id, as `bpftool prog show` lists it.
    pub kernel_id: u32,
    /// RFC 3339, UTC.
    pub loaded_at: String,
    /// Where the program came from: `built-in` or the object file's path.
    pub source: String,
    /// The attach mode used when `attach` is given none.
    pub default_mode: AttachMode,
    pub attachments: Vec<InterfaceAttachment>,
    /// Names of the program's maps.
    pub maps: Vec<String>,
}

/// Counters of one program, summed over CPUs. Programs without the firewall's counter map
/// report `counters: None`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ProgramStats {
    pub program_id: String,
    pub interfaces: Vec<String>,
    pub counters: Option<PacketCounters>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct PacketCounters {
    pub processed_packets: u64,
    pub processed_bytes: u64,
    pub passed_packets: u64,
    pub passed_bytes: u64,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    /// Drop reason (`malformed`, `source_rule`, `port_rule`, `default_policy`) → packets.
    pub dropped_by_reason: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: HealthStatus,
    pub message: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The worst status of any check.
    pub status: HealthStatus,
    pub checks: BTreeMap<String, Check>,
}

impl Health {
    pub fn from_checks(checks: BTreeMap<String, Check>) -> Self {
        let status = checks
            .values()
            .map(|c| c.status)
            .max()
            .unwrap_or(HealthStatus::Healthy);
        Health { status, checks }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The frame could not be read: bad length, version or payload.
    Protocol,
    /// The request is well-formed but asks for something impossible.
    InvalidRequest,
    UnknownProgram,
    UnknownInterface,
    InvalidObject,
    /// The kernel or the device cannot do it (e.g. native XDP on a driver without it).
    Unsupported,
    /// Something else holds the resource.
    Busy,
    PermissionDenied,
    Internal,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

/// Firewall rule as the original design's per-program JSON writes it:
/// `{"action": "drop", "source_ip": "192.168.1.100"}`,
/// `{"action": "allow", "protocol": "tcp", "port": 443}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FirewallRule {
    pub action: RuleAction,
    #[serde(default)]
    pub source_ip: Option<std::net::IpAddr>,
    #[serde(default)]
    pub protocol: Option<Protocol>,
    #[serde(default)]
    pub port: Option<u16>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    #[serde(alias = "pass", alias = "accept")]
    Allow,
    #[serde(alias = "deny", alias = "block")]
    Drop,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Icmp => 1,
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Icmpv6 => 58,
        }
    }
}

impl FirewallRule {
    /// Checks that the rule is one this version of `xdp_firewall` can enforce.
    pub fn validate(&self) -> Result<(), String> {
        match (self.source_ip, self.protocol, self.port) {
            (Some(_), None, None) => Ok(()),
            (None, Some(p), port) => match (p, port) {
                (Protocol::Icmp | Protocol::Icmpv6, Some(_)) => {
                    Err(format!("{p:?} has no ports: remove \"port\" from the rule").to_lowercase())
                }
                (_, Some(0)) => {
                    Err("port 0 is not a port: omit \"port\" to match every port".into())
                }
                _ => Ok(()),
            },
            (None, None, Some(_)) => {
                Err("a rule with \"port\" needs \"protocol\" (tcp or udp)".into())
            }
            (None, None, None) => {
                Err("a rule needs \"source_ip\" or \"protocol\" (with an optional \"port\")".into())
            }
            (Some(_), _, _) => Err(
                "a rule matches either \"source_ip\" or \"protocol\"/\"port\"; combining them is \
                 not supported yet: write two rules"
                    .into(),
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is larger than the {MAX_FRAME_LEN}-byte limit")]
    TooLarge { len: usize },
    #[error("empty frame (no version byte)")]
    Empty,
    #[error(
        "protocol version {got} is not supported (this side speaks {PROTOCOL_VERSION}): use a CLI and daemon of the same release"
    )]
    Version { got: u8 },
    #[error("undecodable payload: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("unencodable payload: {0}")]
    Encode(#[from] bincode::error::EncodeError),
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Encodes `value` as a whole frame: length, version, payload.
pub fn encode_frame<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let mut frame = vec![0u8; FRAME_HEADER_LEN];
    frame[4] = PROTOCOL_VERSION;
    bincode::serde::encode_into_std_write(value, &mut frame, bincode_config())?;
    let len = frame.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// Reads the length prefix; the caller then reads that many bytes and calls [`decode_body`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    Ok(len)
}

/// Decodes the body of a frame (version byte + payload).
pub fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (&version, payload) = body.split_first().ok_or(FrameError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version { got: version });
    }
    let (value, _) = bincode::serde::decode_from_slice(payload, bincode_config())?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + fmt::Debug>(v: T) {
        let frame = encode_frame(&v).unwrap();
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        let back: T = decode_body(&frame[4..]).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn requests_round_trip() {
        round_trip(Request::Status);
        round_trip(Request::Load {
            name: "xdp_firewall".into(),
            mode: Some(AttachMode::Skb),
        });
        round_trip(Request::Attach {
            program_id: "xdp_firewall-1".into(),
            interface: "veth0".into(),
            mode: None,
        });
    }

    #[test]
    fn responses_round_trip() {
        let mut checks = BTreeMap::new();
        checks.insert(
            "programs".to_string(),
            Check {
                status: HealthStatus::Degraded,
                message: "x".into(),
            },
        );
        round_trip(Response::Health(Health::from_checks(checks)));
        round_trip(Response::Error(ApiError::new(
            ErrorKind::UnknownInterface,
            "no",
        )));
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        let prefix = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(matches!(
            frame_len(prefix),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(matches!(frame_len([0; 4]), Err(FrameError::Empty)));
    }

    #[test]
    fn wrong_version_and_garbage_are_errors() {
        let mut frame = encode_frame(&Request::Status).unwrap();
        frame[4] = 99;
        assert!(matches!(
            decode_body::<Request>(&frame[4..]),
            Err(FrameError::Version { got: 99 })
        ));
        assert!(matches!(
            decode_body::<Request>(&[PROTOCOL_VERSION, 0xff, 0xff, 0xff]),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn health_status_is_the_worst_check() {
        let mut checks = BTreeMap::new();
        for (name, status) in [("a", HealthStatus::Healthy), ("b", HealthStatus::Unhealthy)] {
            checks.insert(
                name.to_string(),
                Check {
                    status,
                    message: String::new(),
                },
            );
        }
        assert_eq!(Health::from_checks(checks).status, HealthStatus::Unhealthy);
        assert_eq!(
            Health::from_checks(BTreeMap::new()).status,
            HealthStatus::Healthy
        );
    }

    #[test]
    fn rules_from_the_original_design_parse_and_validate() {
        let rules: Vec<FirewallRule> = serde_json::from_str(
            r#"[{"action": "drop", "source_ip": "192.168.1.100"},
                {"action": "allow", "protocol": "tcp", "port": 443}]"#,
        )
        .unwrap();
        assert!(rules.iter().all(|r| r.validate().is_ok()));
        let combined = FirewallRule {
            action: RuleAction::Drop,
            source_ip: Some("10.0.0.1".parse().unwrap()),
            protocol: Some(Protocol::Tcp),
            port: None,
        };
        assert!(combined.validate().is_err());
        let icmp_port = FirewallRule {
            action: RuleAction::Drop,
            source_ip: None,
            protocol: Some(Protocol::Icmp),
            port: Some(1),
        };
        assert!(
            icmp_port
                .validate()
                .unwrap_err()
                .contains("icmp has no ports")
        );
    }
}
