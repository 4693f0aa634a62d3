//! Human output: every table the CLI prints is built here.

use actors::api::{
    ActorNode, Alert, Attachment, CustomMetricStatus, Health, Hook, HookStats, HookTarget,
    MapekReport, MetricsSnapshot, PacketCounters, ProgramInfo, ProgramStats, RouteStatus, Severity,
    ShaperStatus, Status, TcpReport,
};
use comfy_table::{Table, presets::NOTHING};

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.iter().map(|h| h.to_string()));
    t
}

fn attachments_of(p: &ProgramInfo) -> String {
    if p.attachments.is_empty() && p.hooks.is_empty() {
        return "-".into();
    }
    p.attachments
        .iter()
        .map(|a| {
            if a.mode == a.requested_mode {
                format!("{}({})", a.interface, a.mode)
            } else {
                format!(
                    "{}({}, {} requested)",
                    a.interface, a.mode, a.requested_mode
                )
            }
        })
        .chain(
            p.hooks
                .iter()
                .map(|h| format!("{}{}", h.target, hook_options(h))),
        )
        .collect::<Vec<_>>()
        .join(",")
}

/// ` (ingress+egress, deny)`: what `attach` set beyond the target.
pub fn hook_options(h: &Hook) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let HookTarget::Cgroup { .. } = h.target {
        parts.push(
            h.directions
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("+"),
        );
    }
    if h.deny {
        parts.push("deny".into());
    }
    if h.sample_every > 0 {
        parts.push(format!("1 in {} sampled", h.sample_every));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// `routes list`.
pub fn routes(list: &[RouteStatus]) -> String {
    if list.is_empty() {
        return "no routes; `x0tta6bl4-ebpf routes update FILE` (and `load xdp_router`, attached to the mesh interfaces)\n".into();
    }
    let mut t = table(&["PREFIX", "INTERFACE", "NEXT HOP", "PACKETS", "BYTES"]);
    for r in list {
        t.add_row(vec![
            r.route.prefix.clone(),
            r.route.interface.clone(),
            r.route.next_hop_mac.clone(),
            r.packets.to_string(),
            r.bytes.to_string(),
        ]);
    }
    format!("{t}\n")
}

/// `hooks`: each non-XDP attachment and what its program counted.
pub fn hooks(list: &[HookStats]) -> String {
    if list.is_empty() {
        return "no cgroup, TCX or socket attachments; e.g. `x0tta6bl4-ebpf load cgroup_counter` then `attach cgroup_counter-1 --cgroup PATH`\n".into();
    }
    let mut t = table(&[
        "PROGRAM",
        "ATTACHED TO",
        "COUNTED",
        "PACKETS",
        "BYTES",
        "DENIED",
    ]);
    for h in list {
        let target = format!("{}{}", h.hook.target, hook_options(&h.hook));
        if h.counters.is_empty() {
            t.add_row(vec![
                h.hook.program_id.clone(),
                target.clone(),
                "- (export its maps with `metrics add`)".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for c in &h.counters {
            t.add_row(vec![
                h.hook.program_id.clone(),
                target.clone(),
                c.what.clone(),
                c.packets.to_string(),
                c.bytes.to_string(),
                c.denied.to_string(),
            ]);
        }
        if h.hook.sample_every > 0 {
            t.add_row(vec![
                h.hook.program_id.clone(),
                target,
                "samples received".into(),
                h.samples.to_string(),
                h.sample_bytes.to_string(),
                "-".into(),
            ]);
        }
    }
    format!("{t}\n")
}

pub fn status(s: &Status) -> String {
    let mut out = format!(
        "x0tta6bl4-ebpfd {}  up {}s\nprograms loaded: {}\npackets: {} processed, {} passed, {} blocked\n",
        s.version,
        s.uptime_seconds,
        s.programs_loaded,
        s.processed_packets,
        s.passed_packets,
        s.blocked_packets
    );
    if s.attachments.is_empty() {
        out.push_str("attachments: none\n");
    } else {
        out.push('\n');
        out.push_str(&attachment_table(&s.attachments));
    }
    if !s.reconciliation.is_empty() {
        out.push_str("\nreconciliation (what the start found in the kernel and did):\n");
        for r in &s.reconciliation {
            out.push_str(&format!("  {} {:<9} {}\n", r.at, r.kind, r.detail));
        }
    }
    out
}

/// The attach mode, and the mode asked for when the daemon had to fall back.
pub fn mode(a: &Attachment) -> String {
    if a.mode == a.requested_mode {
        a.mode.to_string()
    } else {
        format!("{} (degraded from {})", a.mode, a.requested_mode)
    }
}

/// `10.0.0.1:80`, `[fd00::1]:80`, or the bare address for port-less protocols.
pub fn endpoint(ip: &std::net::IpAddr, port: u16) -> String {
    if port != 0 {
        std::net::SocketAddr::new(*ip, port).to_string()
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

fn attachment_table(attachments: &[Attachment]) -> String {
    let mut t = table(&["PROGRAM", "INTERFACE", "MODE", "TYPE"]);
    for a in attachments {
        t.add_row(vec![
            a.program_id.clone(),
            a.interface.clone(),
            mode(a),
            a.program_type.to_string(),
        ]);
    }
    format!("{t}\n")
}

pub fn programs(programs: &[ProgramInfo], verbose: bool) -> String {
    if programs.is_empty() {
        return "no programs loaded (load one with `x0tta6bl4-ebpf load xdp_firewall`)\n".into();
    }
    let mut header = vec!["ID", "NAME", "TYPE", "KERNEL ID", "ATTACHED", "LOADED AT"];
    if verbose {
        header.extend(["DEFAULT MODE", "SOURCE", "MAPS"]);
    }
    let mut t = table(&header);
    for p in programs {
        let mut row = vec![
            p.id.clone(),
            p.name.clone(),
            p.program_type.to_string(),
            p.kernel_id.to_string(),
            attachments_of(p),
            p.loaded_at.clone(),
        ];
        if verbose {
            row.extend([
                p.default_mode.to_string(),
                p.source.clone(),
                p.maps.join(","),
            ]);
        }
        t.add_row(row);
    }
    format!("{t}\n")
}

pub fn stats(rows: &[ProgramStats]) -> String {
    if rows.is_empty() {
        return "no programs loaded\n".into();
    }
    let mut t = table(&[
        "PROGRAM",
        "INTERFACES",
        "PROCESSED",
        "BYTES",
        "PASSED",
        "BYTES",
        "DROPPED",
        "BYTES",
        "DROP REASONS",
    ]);
    for r in rows {
        let interfaces = if r.interfaces.is_empty() {
            "-".into()
        } else {
            r.interfaces.join(",")
        };
        let c = r.counters.clone();
        let cells = match &c {
            Some(c) => counter_cells(c),
            None => vec!["n/a".to_string(); 7],
        };
        let mut row = vec![r.program_id.clone(), interfaces];
        row.extend(cells);
        t.add_row(row);
    }
    format!("{t}\n")
}

fn counter_cells(c: &PacketCounters) -> Vec<String> {
    let reasons: Vec<String> = c
        .dropped_by_reason
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    vec![
        c.processed_packets.to_string(),
        c.processed_bytes.to_string(),
        c.passed_packets.to_string(),
        c.passed_bytes.to_string(),
        c.dropped_packets.to_string(),
        c.dropped_bytes.to_string(),
        if reasons.is_empty() {
            "-".into()
        } else {
            reasons.join(" ")
        },
    ]
}

pub fn health(h: &Health) -> String {
    let mut t = table(&["CHECK", "STATUS", "MESSAGE"]);
    for (name, c) in &h.checks {
        t.add_row(vec![
            name.clone(),
            c.status.as_str().to_string(),
            c.message.clone(),
        ]);
    }
    format!("status: {}\n\n{t}\n", h.status.as_str())
}

pub fn alerts(alerts: &[Alert]) -> String {
    if alerts.is_empty() {
        return "no active alerts\n".into();
    }
    let mut t = table(&["ALERT", "SEVERITY", "SINCE", "MESSAGE"]);
    for a in alerts {
        let severity = match a.severity {
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        };
        t.add_row(vec![
            a.id.clone(),
            severity.to_string(),
            a.since.clone(),
            a.message.clone(),
        ]);
    }
    format!("{t}\n")
}

pub fn metrics(m: &MetricsSnapshot) -> String {
    let mut t = table(&["METRIC", "LABELS", "VALUE"]);
    for s in &m.samples {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t.add_row(vec![s.name.clone(), labels.join(" "), s.value.to_string()]);
    }
    format!("taken at {}\n\n{t}\n", m.taken_at)
}

/// The supervision tree, indented by depth.
pub fn supervisor(nodes: &[ActorNode]) -> String {
    let mut t = table(&["ACTOR", "STATE", "RESTARTS", "LAST FAILURE", "ROLE"]);
    for n in nodes {
        let indent = if n.depth == 0 {
            String::new()
        } else {
            format!("{}└─ ", "   ".repeat(usize::from(n.depth) - 1))
        };
        t.add_row(vec![
            format!("{indent}{}", n.name),
            n.state.clone(),
            n.restarts.to_string(),
            match (&n.last_failure_at, &n.last_failure) {
                (Some(at), Some(why)) => format!("{at}: {why}"),
                _ => "-".into(),
            },
            n.role.clone(),
        ]);
    }
    format!("{t}\n")
}

/// `shaper show` (and the answer to `set` and `clear`).
pub fn shaper(list: &[ShaperStatus]) -> String {
    if list.is_empty() {
        return "no interface is shaped; `x0tta6bl4-ebpf shaper set IFACE --rate 100mbit --latency 50ms`\n".into();
    }
    let mut t = table(&[
        "INTERFACE",
        "RATE",
        "LATENCY",
        "BURST",
        "QUEUE",
        "CLASSIFIED",
        "SENT",
        "DROPPED",
        "BACKLOG",
        "STATE",
    ]);
    for s in list {
        t.add_row(vec![
            s.interface.clone(),
            rate(s.rate_bits_per_second),
            format!("{}ms", s.latency_target_us as f64 / 1000.0),
            format!("{}B", s.burst_bytes),
            format!("{}B", s.queue_limit_bytes),
            format!("{} pkts / {}B", s.classified_packets, s.classified_bytes),
            format!("{} pkts / {}B", s.sent_packets, s.sent_bytes),
            s.dropped_packets.to_string(),
            format!("{}B", s.backlog_bytes),
            s.state.clone(),
        ]);
    }
    format!("{t}\n")
}

fn rate(bits: u64) -> String {
    match bits {
        b if b >= 1_000_000_000 && b % 1_000_000_000 == 0 => format!("{}gbit", b / 1_000_000_000),
        b if b >= 1_000_000 && b % 1_000_000 == 0 => format!("{}mbit", b / 1_000_000),
        b if b >= 1_000 && b % 1_000 == 0 => format!("{}kbit", b / 1_000),
        b => format!("{b}bit"),
    }
}

/// `mapek status` (the latest 10 actions) or, with `all`, `mapek history`.
pub fn mapek(m: &MapekReport, all: bool) -> String {
    if !m.enabled {
        return "the MAPE-K loop is off (enable_mapek_integration = false)\n".into();
    }
    let mut out = String::new();
    if !all {
        out.push_str(&format!(
            "MAPE-K: every {}s, {} cycles; symptoms now: {}\n\n",
            m.interval_seconds,
            m.cycles,
            if m.symptoms.is_empty() {
                "none".to_string()
            } else {
                m.symptoms.join(", ")
            }
        ));
    }
    if m.history.is_empty() {
        out.push_str("no actions taken yet\n");
        return out;
    }
    let shown = if all { m.history.len() } else { 10 };
    let mut t = table(&["AT", "SYMPTOM", "ACTION", "OUTCOME", "WHY", "DETAIL"]);
    for e in m.history.iter().rev().take(shown).rev() {
        t.add_row(vec![
            e.at.clone(),
            e.symptom.clone(),
            e.action.clone(),
            e.outcome.clone(),
            e.reason.clone(),
            e.detail.clone(),
        ]);
    }
    out.push_str(&format!("{t}\n"));
    out
}

pub fn custom_metrics(metrics: &[CustomMetricStatus]) -> String {
    if metrics.is_empty() {
        return "no custom metrics (add one with `x0tta6bl4-ebpf metrics add --name N --type counter --labels a,b --from-map PROGRAM_ID:MAP`)\n".into();
    }
    let mut t = table(&["NAME", "TYPE", "LABELS", "FROM", "SERIES"]);
    for m in metrics {
        t.add_row(vec![
            m.metric.name.clone(),
            m.metric.kind.to_string(),
            m.metric.labels.join(","),
            format!("{}:{}", m.metric.program_id, m.metric.map),
            match (&m.series, &m.problem) {
                (Some(n), _) => n.to_string(),
                (None, Some(p)) => format!("none: {p}"),
                (None, None) => "none".into(),
            },
        ]);
    }
    format!("{t}\n")
}

pub fn tcp(report: &TcpReport) -> String {
    if !report.enabled {
        return "the TCP probe is not loaded (enable_flow_observability = false, or `load tcp_state`)\n".into();
    }
    if report.peers.is_empty() {
        return "no TCP connections seen yet\n".into();
    }
    let mut t = table(&[
        "PEER",
        "CONNECTS",
        "AVG CONNECT (µs)",
        "FAILED",
        "RESETS",
        "CLOSES",
    ]);
    for p in &report.peers {
        let peer = if p.peer.is_ipv6() {
            format!("[{}]:{}", p.peer, p.port)
        } else {
            format!("{}:{}", p.peer, p.port)
        };
        t.add_row(vec![
            peer,
            p.connects.to_string(),
            format!("{:.1}", p.connect_avg_us),
            p.failed.to_string(),
            p.resets.to_string(),
            p.closes.to_string(),
        ]);
    }
    format!("{t}\n")
}

#[cfg(test)]
mod tests {
    use super::endpoint;

    #[test]
    fn endpoints_bracket_v6_and_drop_a_zero_port() {
        let v4: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let v6: std::net::IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(endpoint(&v4, 80), "10.0.0.1:80");
        assert_eq!(endpoint(&v4, 0), "10.0.0.1");
        assert_eq!(endpoint(&v6, 80), "[fd00::1]:80");
        assert_eq!(endpoint(&v6, 0), "[fd00::1]");
    }
}
