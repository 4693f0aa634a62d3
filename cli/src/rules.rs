//! `x0tta6bl4-ebpf rules …`: the firewall rule set.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use actors::api::{
    Cidr, Explanation, FirewallRule, PacketQuery, PortRange, Protocol, RuleAction, RuleSet,
    RulesRequest,
};
use clap::{Subcommand, ValueEnum};
use comfy_table::{Table, presets::NOTHING};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ActionArg {
    Allow,
    Drop,
}

impl From<ActionArg> for RuleAction {
    fn from(a: ActionArg) -> RuleAction {
        match a {
            ActionArg::Allow => RuleAction::Allow,
            ActionArg::Drop => RuleAction::Drop,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum RulesCommand {
    /// List the rules in the order they are evaluated, and the default policy.
    List,
    /// Add a rule: appended, or inserted before rule N with --position N.
    Add {
        #[arg(long, value_enum)]
        action: ActionArg,
        /// Source address or CIDR (IPv4 or IPv6).
        #[arg(long = "src", visible_alias = "source")]
        source: Option<Cidr>,
        /// Destination address or CIDR.
        #[arg(long = "dst", visible_alias = "dest")]
        dest: Option<Cidr>,
        /// tcp, udp, icmp, icmpv6 or any.
        #[arg(long)]
        protocol: Option<Protocol>,
        /// Source port or range (e.g. 1000-2000).
        #[arg(long)]
        sport: Option<PortRange>,
        /// Destination port or range.
        #[arg(long, visible_alias = "port")]
        dport: Option<PortRange>,
        /// Insert before this rule (1 = first).
        #[arg(long)]
        position: Option<usize>,
    },
    /// Delete rule N, as `rules list` numbers it.
    Del { number: usize },
    /// Replace every rule with those in FILE: the original per-program JSON
    /// ({"xdp_firewall": {"rules": [...]}}) or a JSON list of rules.
    Apply {
        file: PathBuf,
        /// Also set the default policy (otherwise the file's, or the current one).
        #[arg(long, value_enum)]
        default_policy: Option<ActionArg>,
    },
    /// Which rule decides a packet like this and why: a dry run over the rules in force.
    Explain {
        #[arg(long = "src")]
        source: IpAddr,
        #[arg(long = "dst")]
        dest: IpAddr,
        #[arg(long)]
        protocol: Protocol,
        #[arg(long)]
        sport: Option<u16>,
        #[arg(long)]
        dport: Option<u16>,
    },
}

/// Splits an `Apply` too large for one frame into `Stage` chunks and a final `Apply` that
/// swaps the whole set in at once. Other requests pass through.
pub fn in_frames(request: RulesRequest) -> Vec<RulesRequest> {
    let RulesRequest::Apply {
        rules,
        default_policy,
        staged: None,
    } = request
    else {
        return vec![request];
    };
    if rules.len() <= actors::api::RULES_PER_FRAME {
        return vec![RulesRequest::Apply {
            rules,
            default_policy,
            staged: None,
        }];
    }
    let token = u64::from(std::process::id()) << 32
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let mut frames: Vec<RulesRequest> = rules
        .chunks(actors::api::RULES_PER_FRAME)
        .map(|chunk| RulesRequest::Stage {
            token,
            rules: chunk.to_vec(),
        })
        .collect();
    frames.push(RulesRequest::Apply {
        rules: Vec::new(),
        default_policy,
        staged: Some(token),
    });
    frames
}

/// The request for `command`; `Err` is a problem with the user's input (exit code 2).
pub fn request(command: &RulesCommand) -> Result<RulesRequest, String> {
    Ok(match command {
        RulesCommand::List => RulesRequest::List,
        RulesCommand::Add {
            action,
            source,
            dest,
            protocol,
            sport,
            dport,
            position,
        } => {
            let rule = FirewallRule {
                action: (*action).into(),
                source_ip: *source,
                dest_ip: *dest,
                protocol: *protocol,
                source_port: *sport,
                dest_port: *dport,
                ..Default::default()
            };
            rule.validate()?;
            RulesRequest::Add {
                rule,
                position: *position,
            }
        }
        RulesCommand::Del { number } => RulesRequest::Delete { number: *number },
        RulesCommand::Apply {
            file,
            default_policy,
        } => {
            let (rules, from_file) = read_rules_file(file)?;
            RulesRequest::Apply {
                rules,
                default_policy: default_policy.map(Into::into).or(from_file),
                staged: None,
            }
        }
        RulesCommand::Explain {
            source,
            dest,
            protocol,
            sport,
            dport,
        } => RulesRequest::Explain(PacketQuery {
            source: *source,
            dest: *dest,
            protocol: *protocol,
            source_port: *sport,
            dest_port: *dport,
        }),
    })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgramSection {
    #[serde(rename = "type")]
    _program_type: Option<String>,
    #[serde(rename = "attach_mode")]
    _attach_mode: Option<String>,
    #[serde(default)]
    rules: Vec<FirewallRule>,
    default_policy: Option<RuleAction>,
}

/// Rules (and a default policy, if the file gives one) from a JSON file.
pub fn read_rules_file(path: &Path) -> Result<(Vec<FirewallRule>, Option<RuleAction>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let (rules, policy) = if value.is_array() {
        let rules: Vec<FirewallRule> =
            serde_json::from_value(value).map_err(|e| format!("{}: {e}", path.display()))?;
        (rules, None)
    } else if let Some(section) = value.get("xdp_firewall") {
        let s: ProgramSection = serde_json::from_value(section.clone())
            .map_err(|e| format!("{}: xdp_firewall: {e}", path.display()))?;
        (s.rules, s.default_policy)
    } else {
        return Err(format!(
            "{}: expected a JSON list of rules or {{\"xdp_firewall\": {{\"rules\": [...]}}}}",
            path.display()
        ));
    };
    for (i, rule) in rules.iter().enumerate() {
        rule.validate()
            .map_err(|m| format!("{}: rule #{} ({rule}): {m}", path.display(), i + 1))?;
    }
    Ok((rules, policy))
}

fn cell<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map(ToString::to_string)
        .unwrap_or_else(|| "*".into())
}

pub fn render_rule_set(set: &RuleSet) -> String {
    let mut out = format!("default policy: {}\n", set.default_policy);
    if set.rules.is_empty() {
        out.push_str("no rules: every IP packet gets the default policy\n");
        return out;
    }
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header([
        "#",
        "ACTION",
        "PROTOCOL",
        "SOURCE",
        "SPORT",
        "DESTINATION",
        "DPORT",
    ]);
    for (i, r) in set.rules.iter().enumerate() {
        t.add_row(vec![
            (i + 1).to_string(),
            r.action.to_string(),
            cell(&r.protocol),
            cell(&r.source_ip),
            cell(&r.source_port),
            cell(&r.dest_ip),
            cell(&r.dest_ports()),
        ]);
    }
    out.push('\n');
    out.push_str(&format!("{t}\n"));
    out
}

pub fn render_explanation(e: &Explanation) -> String {
    format!("{}: {}\n", e.action, e.reason)
}
