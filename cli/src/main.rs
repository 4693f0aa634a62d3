//! `x0tta6bl4-ebpf`: the operator CLI. Every verb is one request/response over the daemon's
//! Unix socket (except `completions`, which needs no daemon).
//!
//! Exit codes: 0 success, 1 the daemon refused or failed the request (or could not be
//! reached), 2 usage error.

mod client;
mod flows;
mod render;
mod rules;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use actors::api::{
    AttachMode, CustomMetric, CustomMetricsRequest, DebugRequest, Direction, MetricKind, Request,
    Response, Route, ShaperRequest,
};
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "x0tta6bl4-ebpf",
    version,
    about = "Operate the x0tta6bl4 eBPF node daemon"
)]
pub struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "X0TTA6BL4_SOCKET", default_value = actors::api::DEFAULT_SOCKET_PATH)]
    socket: PathBuf,
    /// Print JSON instead of tables (stable field names).
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the daemon's answer.
    #[arg(long, global = true, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LoadMode {
    Drv,
    Skb,
    Hw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum MetricsFormat {
    Json,
    Prometheus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AttachModeArg {
    Drv,
    Skb,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Daemon version, uptime, programs, attachments and packet totals.
    Status,
    /// Load a built-in program (xdp_firewall) or a .o file from programs_dir.
    Load {
        /// `xdp_firewall`, `xdp_firewall.o`, or an object file name inside programs_dir.
        name: String,
        /// Default attach mode for this program.
        #[arg(long, value_enum)]
        mode: Option<LoadMode>,
    },
    /// Attach a loaded program: XDP and TC programs to an interface's hook, a socket filter to
    /// an AF_PACKET socket on an interface, a cgroup_skb program to a cgroup (--cgroup).
    Attach {
        program_id: String,
        #[arg(
            required_unless_present_any = ["cgroup", "tracepoint"],
            conflicts_with_all = ["cgroup", "tracepoint"]
        )]
        interface: Option<String>,
        /// XDP: overrides the program's default attach mode.
        #[arg(long, value_enum)]
        mode: Option<AttachModeArg>,
        /// XDP: replace an XDP program on the interface that this daemon does not manage
        /// (another tool's); without it, such a program is reported as a conflict and left
        /// alone.
        #[arg(long)]
        force: bool,
        /// cgroup_skb: a cgroup v2 directory (e.g. /sys/fs/cgroup/unified/app).
        #[arg(long)]
        cgroup: Option<String>,
        /// A tracepoint program: its tracepoint, CATEGORY/NAME (e.g. sock/inet_sock_set_state).
        #[arg(long, conflicts_with = "cgroup")]
        tracepoint: Option<String>,
        /// cgroup_counter: drop the packets of the cgroup's sockets (and of the cgroups below
        /// it), counted as denied.
        #[arg(long, requires = "cgroup")]
        deny: bool,
        /// TC: the TCX hook, ingress (default) or egress.
        #[arg(long, value_enum)]
        direction: Option<DirectionArg>,
        /// socket_counter: pass one packet in N up to the daemon as a sample.
        #[arg(long)]
        sample: Option<u32>,
    },
    /// Detach a program from an interface (or a cgroup, or a TCX direction).
    Detach {
        program_id: String,
        #[arg(
            required_unless_present_any = ["cgroup", "tracepoint"],
            conflicts_with_all = ["cgroup", "tracepoint"]
        )]
        interface: Option<String>,
        #[arg(long)]
        cgroup: Option<String>,
        #[arg(long, conflicts_with = "cgroup")]
        tracepoint: Option<String>,
        #[arg(long, value_enum)]
        direction: Option<DirectionArg>,
    },
    /// Attachments other than XDP (cgroups, TCX hooks, sockets) and what they counted.
    Hooks,
    /// Mesh routes of the XDP fast path (`xdp_router`): update FILE, list.
    Routes {
        #[command(subcommand)]
        command: RoutesCommand,
    },
    /// Detach a program everywhere and unload it from the kernel.
    Unload { program_id: String },
    /// List loaded programs.
    Programs {
        /// Also show default mode, source and maps.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Packet and byte counters per program and interface.
    Stats,
    /// Health of programs, attachments and the supervision tree.
    Health,
    /// Active alerts: high latency, load or attach failure, map memory, drop rate.
    Alerts,
    /// A live view: throughput, drop rate, attachments, alerts, top flows; q quits.
    Top,
    /// TCP connections this host opened, per peer: connect latency, failures, resets.
    Tcp,
    /// The values /metrics serves; --export writes them to a file. `metrics add|list|remove`
    /// manage custom metrics read from the maps of loaded programs.
    #[command(args_conflicts_with_subcommands = true)]
    Metrics {
        /// Write a snapshot to FILE instead of printing.
        #[arg(long)]
        export: Option<PathBuf>,
        /// json (a list of samples) or prometheus (the text format).
        #[arg(long, value_enum, default_value = "json")]
        format: MetricsFormat,
        #[command(subcommand)]
        action: Option<MetricsAction>,
    },
    /// The supervision tree: each actor, its state, restarts and latest failure.
    Supervisor,
    /// The MAPE-K loop: `status` (symptoms now, recent actions) or `history` (the knowledge).
    Mapek {
        #[command(subcommand)]
        view: MapekView,
    },
    /// Flows seen by the firewall, with filters (like `hubble observe`).
    Flows(flows::FlowArgs),
    /// The TC shaper: limit an interface's egress rate with a bounded queueing delay.
    Shaper {
        #[command(subcommand)]
        command: ShaperCommand,
    },
    /// The firewall rules: list, add, del, apply FILE, explain.
    Rules {
        #[command(subcommand)]
        command: rules::RulesCommand,
    },
    /// Change the daemon's logging at run time, or inject a fault (`debug crash ACTOR`).
    Debug(DebugArgs),
    /// Print a shell completion script.
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
enum MetricsAction {
    /// Export a map of a loaded program as a metric: each key gives the label values, each
    /// value (CPUs summed) the sample, read at every scrape.
    Add {
        /// Metric name, e.g. ebpf_custom_packets.
        #[arg(long)]
        name: String,
        #[arg(long = "type", value_enum)]
        kind: MetricKindArg,
        #[arg(long, default_value = "")]
        description: String,
        /// Label names in key order, each `name` or `name:type` (u8, u16, u32, u64, be16,
        /// be32, ipv4, ipv6, ifindex, hex); untyped labels share the key's bytes evenly.
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// PROGRAM_ID:MAP, e.g. xdp_count-1:PACKETS.
        #[arg(long)]
        from_map: String,
    },
    /// The custom metrics, their sources and how many series each exports now.
    List,
    /// Stop exporting a custom metric.
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
enum RoutesCommand {
    /// Replace every route with those of FILE (JSON): a list of {"prefix", "interface",
    /// "next_hop_mac"}, or an object of prefix → {"interface", "next_hop_mac"}.
    Update { file: PathBuf },
    /// The routes and what the fast path forwarded by each since the last update.
    List,
}

/// Reads a routes file in either of its two shapes.
fn read_routes(file: &std::path::Path) -> Result<Vec<Route>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Via {
        interface: String,
        next_hop_mac: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Shape {
        List(Vec<Route>),
        Wrapped { routes: Vec<Route> },
        Map(std::collections::BTreeMap<String, Via>),
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let shape: Shape = serde_json::from_str(&text).map_err(|e| {
        format!(
            "{} is not a routes file ({e}): write a JSON list of {{\"prefix\": \"10.3.0.0/24\", \"interface\": \"eth1\", \"next_hop_mac\": \"aa:bb:cc:dd:ee:ff\"}}",
            file.display()
        )
    })?;
    Ok(match shape {
        Shape::List(r) | Shape::Wrapped { routes: r } => r,
        Shape::Map(m) => m
            .into_iter()
            .map(|(prefix, v)| Route {
                prefix,
                interface: v.interface,
                next_hop_mac: v.next_hop_mac,
            })
            .collect(),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DirectionArg {
    Ingress,
    Egress,
}

impl From<DirectionArg> for Direction {
    fn from(d: DirectionArg) -> Direction {
        match d {
            DirectionArg::Ingress => Direction::Ingress,
            DirectionArg::Egress => Direction::Egress,
        }
    }
}

#[derive(Subcommand, Debug)]
enum ShaperCommand {
    /// Shape IFACE's egress: at most --rate, and no packet queued longer than --latency (a
    /// full queue drops instead). Replaces IFACE's earlier setting.
    Set {
        interface: String,
        /// bit, kbit, mbit or gbit: 500kbit, 20mbit, 1gbit.
        #[arg(long)]
        rate: String,
        /// us, ms or s.
        #[arg(long, default_value = "50ms")]
        latency: String,
    },
    /// Every shaped interface: setting, packets classified, sent, dropped and queued.
    Show,
    /// Stop shaping IFACE (its HTB qdisc and classifier are removed).
    Clear { interface: String },
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
enum MapekView {
    /// Whether it runs, its cycles, the symptoms it sees now and its latest actions.
    Status,
    /// Every remembered symptom → action → outcome, oldest first.
    History,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum MetricKindArg {
    Counter,
    Gauge,
}

#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct DebugArgs {
    /// Turn debug logging on (or the level --log-level gives).
    #[arg(long, conflicts_with = "disable")]
    enable: bool,
    /// Back to the log level the daemon started with.
    #[arg(long)]
    disable: bool,
    /// trace, debug, info, warn, error, or a tracing filter (`actors=trace`).
    #[arg(long, requires = "enable")]
    log_level: Option<String>,
    #[command(subcommand)]
    action: Option<DebugAction>,
}

#[derive(Subcommand, Debug)]
enum DebugAction {
    /// Make an actor panic, to watch its supervisor repair it (the daemon must run with
    /// --enable-fault-injection): loader, interfaces, attach:IFACE.
    Crash { actor: String },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let request = match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "x0tta6bl4-ebpf",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Top => {
            return match top::run(&cli.socket, Duration::from_secs(cli.timeout)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(m) => {
                    eprintln!("x0tta6bl4-ebpf: {m}");
                    ExitCode::from(1)
                }
            };
        }
        Command::Status => Request::Status,
        Command::Load { ref name, mode } => Request::Load {
            name: name.clone(),
            mode: mode.map(|m| match m {
                LoadMode::Drv => AttachMode::Drv,
                LoadMode::Skb => AttachMode::Skb,
                LoadMode::Hw => AttachMode::Hw,
            }),
        },
        Command::Attach {
            ref program_id,
            ref interface,
            mode,
            force,
            ref cgroup,
            ref tracepoint,
            deny,
            direction,
            sample,
        } => Request::Attach {
            force,
            program_id: program_id.clone(),
            interface: interface.clone().unwrap_or_default(),
            mode: mode.map(|m| match m {
                AttachModeArg::Drv => AttachMode::Drv,
                AttachModeArg::Skb => AttachMode::Skb,
            }),
            cgroup: cgroup.clone(),
            tracepoint: tracepoint.clone(),
            deny,
            direction: direction.map(Direction::from),
            sample_every: sample,
        },
        Command::Detach {
            ref program_id,
            ref interface,
            ref cgroup,
            ref tracepoint,
            direction,
        } => Request::Detach {
            program_id: program_id.clone(),
            interface: interface.clone().unwrap_or_default(),
            cgroup: cgroup.clone(),
            tracepoint: tracepoint.clone(),
            direction: direction.map(Direction::from),
        },
        Command::Hooks => Request::Hooks,
        Command::Routes {
            command: RoutesCommand::List,
        } => Request::Routes(None),
        Command::Routes {
            command: RoutesCommand::Update { ref file },
        } => match read_routes(file) {
            Ok(r) => Request::Routes(Some(r)),
            Err(message) => {
                eprintln!("x0tta6bl4-ebpf: {message}");
                return ExitCode::from(2);
            }
        },
        Command::Unload { ref program_id } => Request::Unload {
            program_id: program_id.clone(),
        },
        Command::Programs { .. } => Request::Programs,
        Command::Stats => Request::Stats,
        Command::Health => Request::Health,
        Command::Flows(ref args) => Request::Flows(args.query()),
        Command::Alerts => Request::Alerts,
        Command::Mapek { .. } => Request::Mapek,
        Command::Supervisor => Request::Supervisor,
        Command::Shaper { ref command } => Request::Shaper(match command {
            ShaperCommand::Set {
                interface,
                rate,
                latency,
            } => ShaperRequest::Set {
                interface: interface.clone(),
                rate: rate.clone(),
                latency: latency.clone(),
            },
            ShaperCommand::Show => ShaperRequest::Show,
            ShaperCommand::Clear { interface } => ShaperRequest::Clear {
                interface: interface.clone(),
            },
        }),
        Command::Tcp => Request::Tcp,
        Command::Metrics {
            action: Some(ref action),
            ..
        } => match custom_metrics_request(action) {
            Ok(r) => Request::CustomMetrics(r),
            Err(message) => {
                eprintln!("x0tta6bl4-ebpf: {message}");
                return ExitCode::from(2);
            }
        },
        Command::Metrics { .. } => Request::Metrics,
        Command::Debug(ref d) => match (&d.action, d.enable, d.disable) {
            (Some(DebugAction::Crash { actor }), _, _) => {
                Request::Debug(DebugRequest::Crash(actor.clone()))
            }
            (None, true, _) => Request::Debug(DebugRequest::LogLevel(Some(
                d.log_level.clone().unwrap_or_else(|| "debug".into()),
            ))),
            (None, false, true) => Request::Debug(DebugRequest::LogLevel(None)),
            (None, false, false) => {
                eprintln!("x0tta6bl4-ebpf: debug needs --enable, --disable or `crash ACTOR`");
                return ExitCode::from(2);
            }
        },
        Command::Rules { ref command } => match rules::request(command) {
            Ok(r) => Request::Rules(r),
            Err(message) => {
                eprintln!("x0tta6bl4-ebpf: {message}");
                return ExitCode::from(2);
            }
        },
    };
    if let Command::Flows(args) = &cli.command
        && args.follow
    {
        return match flows::follow(
            &cli.socket,
            Duration::from_secs(cli.timeout),
            args.query(),
            cli.json,
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(m) => {
                eprintln!("x0tta6bl4-ebpf: {m}");
                ExitCode::from(1)
            }
        };
    }
    // A rule set too large for one frame goes in chunks; the last answer is the one to show.
    let frames = match request {
        Request::Rules(r) => rules::in_frames(r)
            .into_iter()
            .map(Request::Rules)
            .collect(),
        other => vec![other],
    };
    let mut response = None;
    for frame in &frames {
        match client::call(&cli.socket, Duration::from_secs(cli.timeout), frame) {
            Ok(Response::Error(e)) => {
                response = Some(Response::Error(e));
                break;
            }
            Ok(r) => response = Some(r),
            Err(client::ClientError::Unreachable(m) | client::ClientError::Exchange(m)) => {
                eprintln!("x0tta6bl4-ebpf: {m}");
                return ExitCode::from(1);
            }
        }
    }
    let response = response.expect("at least one frame is sent");
    if let (
        Command::Metrics {
            export: Some(path),
            format,
            ..
        },
        Response::Metrics(m),
    ) = (&cli.command, &response)
    {
        let contents = match format {
            MetricsFormat::Json => json(m),
            MetricsFormat::Prometheus => m.prometheus_text.clone(),
        };
        return match std::fs::write(path, contents) {
            Ok(()) => {
                println!("wrote {} samples to {}", m.samples.len(), path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("x0tta6bl4-ebpf: cannot write {}: {e}", path.display());
                ExitCode::from(1)
            }
        };
    }
    let prometheus = matches!(
        cli.command,
        Command::Metrics {
            format: MetricsFormat::Prometheus,
            ..
        }
    );
    let verbose = matches!(
        cli.command,
        Command::Programs { verbose: true }
            | Command::Mapek {
                view: MapekView::History
            }
    );
    match print(&response, cli.json, verbose, prometheus) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("x0tta6bl4-ebpf: {message}");
            ExitCode::from(1)
        }
    }
}

fn custom_metrics_request(action: &MetricsAction) -> Result<CustomMetricsRequest, String> {
    Ok(match action {
        MetricsAction::List => CustomMetricsRequest::List,
        MetricsAction::Remove { name } => CustomMetricsRequest::Remove { name: name.clone() },
        MetricsAction::Add {
            name,
            kind,
            description,
            labels,
            from_map,
        } => {
            let (program_id, map) = from_map
                .rsplit_once(':')
                .filter(|(p, m)| !p.is_empty() && !m.is_empty())
                .ok_or_else(|| {
                    format!(
                        "--from-map {from_map:?}: give PROGRAM_ID:MAP, e.g. xdp_count-1:PACKETS"
                    )
                })?;
            CustomMetricsRequest::Add(CustomMetric {
                name: name.clone(),
                kind: match kind {
                    MetricKindArg::Counter => MetricKind::Counter,
                    MetricKindArg::Gauge => MetricKind::Gauge,
                },
                description: if description.is_empty() {
                    format!("{map} of {program_id}")
                } else {
                    description.clone()
                },
                labels: labels.iter().filter(|l| !l.is_empty()).cloned().collect(),
                program_id: program_id.to_string(),
                map: map.to_string(),
            })
        }
    })
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("API types always serialize") + "\n"
}

/// Prints a response; `Err` carries the daemon's refusal.
fn print(
    response: &Response,
    as_json: bool,
    verbose: bool,
    prometheus: bool,
) -> Result<(), String> {
    let out = match response {
        Response::Error(e) => {
            if as_json {
                eprint!("{}", json(e));
            }
            return Err(e.message.clone());
        }
        Response::Status(s) if as_json => json(s),
        Response::Status(s) => render::status(s),
        Response::Loaded(p) if as_json => json(p),
        Response::Loaded(p) => format!(
            "loaded {} ({} program {}, kernel id {}, default mode {})\n",
            p.id, p.program_type, p.name, p.kernel_id, p.default_mode
        ),
        Response::Attached(a) if as_json => json(a),
        Response::Attached(a) if a.mode != a.requested_mode => format!(
            "attached {} to {} in {} mode: {} mode was requested but {} refused it, so it degraded (enable_dynamic_fallback)\n",
            a.program_id, a.interface, a.mode, a.requested_mode, a.interface
        ),
        Response::Attached(a) => format!(
            "attached {} to {} ({} mode)\n",
            a.program_id, a.interface, a.mode
        ),
        Response::Hooked(h) if as_json => json(h),
        Response::Hooked(h) => format!(
            "attached {} to {}{}\n",
            h.program_id,
            h.target,
            render::hook_options(h)
        ),
        Response::Unhooked(h) if as_json => json(h),
        Response::Unhooked(h) => format!("detached {} from {}\n", h.program_id, h.target),
        Response::Routes(r) if as_json => json(r),
        Response::Routes(r) => render::routes(r),
        Response::Hooks(h) if as_json => json(h),
        Response::Hooks(h) => render::hooks(h),
        Response::Detached(a) if as_json => json(a),
        Response::Detached(a) => format!("detached {} from {}\n", a.program_id, a.interface),
        Response::Unloaded { program_id } if as_json => {
            json(&serde_json::json!({ "unloaded": program_id }))
        }
        Response::Unloaded { program_id } => format!("unloaded {program_id}\n"),
        Response::Programs(p) if as_json => json(p),
        Response::Programs(p) => render::programs(p, verbose),
        Response::Stats(s) if as_json => json(s),
        Response::Stats(s) => render::stats(s),
        Response::Health(h) if as_json => json(h),
        Response::Health(h) => render::health(h),
        Response::Rules(r) if as_json => json(r),
        Response::Rules(r) => rules::render_rule_set(r),
        Response::Explained(e) if as_json => json(e),
        Response::Explained(e) => rules::render_explanation(e),
        Response::Flows(f) if as_json => json(&f.flows),
        Response::Flows(f) => flows::render(f),
        Response::Metrics(m) if prometheus => m.prometheus_text.clone(),
        Response::Metrics(m) if as_json => json(m),
        Response::Metrics(m) => render::metrics(m),
        Response::Shaper(s) if as_json => json(s),
        Response::Shaper(s) => render::shaper(s),
        Response::Supervisor(t) if as_json => json(t),
        Response::Supervisor(t) => render::supervisor(t),
        Response::Mapek(m) if as_json && verbose => json(&m.history),
        Response::Mapek(m) if as_json => json(m),
        Response::Mapek(m) => render::mapek(m, verbose),
        Response::CustomMetrics(m) if as_json => json(m),
        Response::CustomMetrics(m) => render::custom_metrics(m),
        Response::Tcp(t) if as_json => json(&t.peers),
        Response::Tcp(t) => render::tcp(t),
        Response::Alerts(a) if as_json => json(a),
        Response::Alerts(a) => render::alerts(a),
        Response::Done(what) if as_json => json(&serde_json::json!({ "done": what })),
        Response::Done(what) => format!("{what}\n"),
    };
    print!("{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actors::api::RulesRequest;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("x0tta6bl4-ebpf").chain(args.iter().copied()))
    }

    #[test]
    fn global_flags_go_before_or_after_the_verb() {
        let before = parse(&["--socket", "/tmp/s", "--json", "--timeout", "5", "status"]).unwrap();
        let after = parse(&["status", "--socket", "/tmp/s", "--json", "--timeout", "5"]).unwrap();
        for cli in [before, after] {
            assert_eq!(cli.socket, PathBuf::from("/tmp/s"));
            assert!(cli.json);
            assert_eq!(cli.timeout, 5);
        }
    }

    #[test]
    fn verbs_and_modes_parse() {
        let cli = parse(&["load", "xdp_firewall.o", "--mode", "hw"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Load {
                mode: Some(LoadMode::Hw),
                ..
            }
        ));
        let cli = parse(&["attach", "xdp_firewall-1", "veth0", "--mode", "skb"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Attach {
                mode: Some(AttachModeArg::Skb),
                ..
            }
        ));
        assert!(matches!(
            parse(&["programs", "--verbose"]).unwrap().command,
            Command::Programs { verbose: true }
        ));
    }

    #[test]
    fn usage_errors_are_refused() {
        // hw is a load-time default only; attach takes drv or skb.
        assert!(parse(&["attach", "p", "eth0", "--mode", "hw"]).is_err());
        assert!(parse(&["load"]).is_err());
        assert!(parse(&["frobnicate"]).is_err());
        assert!(parse(&["status", "--timeout", "0"]).is_err());
        // --priority arrives with program chaining; until then it is not a flag.
        assert!(parse(&["load", "xdp_firewall", "--priority", "100"]).is_err());
    }

    #[test]
    fn rules_verbs_parse_and_check_their_input() {
        let cli = parse(&[
            "rules",
            "add",
            "--action",
            "drop",
            "--src",
            "10.0.0.0/8",
            "--protocol",
            "tcp",
            "--dport",
            "20-22",
        ])
        .unwrap();
        let Command::Rules { command } = cli.command else {
            panic!("rules")
        };
        let RulesRequest::Add {
            rule,
            position: None,
        } = rules::request(&command).unwrap()
        else {
            panic!("add")
        };
        assert_eq!(rule.to_string(), "drop tcp from 10.0.0.0/8 dport 20-22");
        assert!(parse(&["rules", "add", "--action", "drop", "--src", "10.0.0.300"]).is_err());
        assert!(parse(&["rules", "add", "--action", "maybe"]).is_err());
        let cli = parse(&[
            "rules",
            "add",
            "--action",
            "drop",
            "--protocol",
            "icmp",
            "--dport",
            "1",
        ])
        .unwrap();
        let Command::Rules { command } = cli.command else {
            panic!("rules")
        };
        assert!(
            rules::request(&command)
                .unwrap_err()
                .contains("icmp has no ports")
        );
        assert!(
            parse(&[
                "rules",
                "explain",
                "--src",
                "10.0.0.1",
                "--dst",
                "10.0.0.2",
                "--protocol",
                "udp",
                "--dport",
                "53"
            ])
            .is_ok()
        );
        assert!(parse(&["rules", "del", "x"]).is_err());
    }

    #[test]
    fn large_rule_sets_travel_in_frames_under_the_cap() {
        let rule: actors::api::FirewallRule =
            serde_json::from_str(r#"{"action":"drop","source_ip":"fd00:1234:5678:9abc::/64","dest_ip":"fd00:1234:5678:9abc:def0:1234:5678:9abc","protocol":"tcp","source_port":"1000-2000","dest_port":"30000-40000"}"#).unwrap();
        let rules = vec![rule; 10_000];
        let frames = rules::in_frames(RulesRequest::Apply {
            rules,
            default_policy: None,
            staged: None,
        });
        assert_eq!(frames.len(), 4, "three chunks and the apply");
        for f in &frames {
            let frame =
                actors::api::encode_frame(&Request::Rules(f.clone())).expect("each frame fits");
            assert!(frame.len() < actors::api::MAX_FRAME_LEN);
        }
        assert!(matches!(
            frames.last(),
            Some(RulesRequest::Apply {
                staged: Some(_),
                ..
            })
        ));
    }

    #[test]
    fn rule_files_in_both_shapes_are_read() {
        let dir = std::env::temp_dir().join(format!("x0t-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let original = dir.join("programs.json");
        std::fs::write(&original, r#"{"xdp_firewall": {"type": "xdp", "attach_mode": "drv", "rules": [{"action": "drop", "source_ip": "192.168.1.100"}, {"action": "allow", "protocol": "tcp", "port": 443}]}, "tc_shaper": {"type": "tc"}}"#).unwrap();
        let (r, policy) = rules::read_rules_file(&original).unwrap();
        assert_eq!((r.len(), policy), (2, None));
        let list = dir.join("list.json");
        std::fs::write(
            &list,
            r#"[{"action": "drop", "protocol": "udp", "dest_port": "1-1023"}]"#,
        )
        .unwrap();
        assert_eq!(rules::read_rules_file(&list).unwrap().0.len(), 1);
        let bad = dir.join("bad.json");
        std::fs::write(
            &bad,
            r#"[{"action": "drop", "protocol": "icmp", "port": 7}]"#,
        )
        .unwrap();
        let e = rules::read_rules_file(&bad).unwrap_err();
        assert!(e.contains("bad.json") && e.contains("rule #1"), "{e}");
        std::fs::write(&bad, r#"{"rules": []}"#).unwrap();
        assert!(
            rules::read_rules_file(&bad)
                .unwrap_err()
                .contains("expected a JSON list")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn debug_verbs_parse_as_the_original_design_writes_them() {
        let cli = parse(&["debug", "--enable", "--log-level", "DEBUG"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Debug(DebugArgs { enable: true, .. })
        ));
        assert!(parse(&["debug", "--disable"]).is_ok());
        assert!(parse(&["debug", "crash", "attach:eth0"]).is_ok());
        assert!(parse(&["debug", "--enable", "--disable"]).is_err());
        assert!(
            parse(&["debug", "--log-level", "info"]).is_err(),
            "--log-level needs --enable"
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
