//! `/metrics` (Prometheus text format, built with the `prometheus` crate) and `/health` on
//! `prometheus_port`. Values are read from the actors at scrape time, so a scrape sees the
//! kernel's counters as they are; nothing is cached between scrapes.

use std::time::Duration;

use actors::api::{FlowQuery, HealthStatus, ProgramStats, Request, Response};
use actors::loader::LoaderMsg;
use actors::rpc::ask;
use ebpf_shared::LATENCY_BUCKETS;
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use ractor::ActorRef;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::control::Control;
use crate::root::{FALLBACK, LOADER};
use actors::fallback::FallbackMsg;

/// Every metric family `/metrics` can serve (the Grafana dashboard in `contrib/` may use
/// only these; a test checks it, and debug builds assert that nothing else is served).
pub const METRIC_NAMES: [&str; 17] = [
    "ebpf_tcp_connect_latency_microseconds",
    "ebpf_tcp_connects_total",
    "ebpf_tcp_connect_failures_total",
    "ebpf_tcp_resets_total",
    "ebpf_programs_loaded",
    "ebpf_packets_processed_total",
    "ebpf_packets_dropped_total",
    "ebpf_flows_active",
    "ebpf_flows_lost_total",
    "ebpf_flows_aged_out_total",
    "ebpf_memory_usage_bytes",
    "ebpf_errors_total",
    "ebpf_latency_microseconds",
    "ebpf_attach_mode",
    "ebpf_fallback_events_total",
    "ebpf_supervisor_restarts_total",
    "ebpf_alerts_active",
];

/// A scraper must send its request head within this time, in at most this many bytes.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
const HEAD_LIMIT: usize = 8 * 1024;

pub const METRICS: &str = "x0tta6bl4.metrics";

/// MetricsActor: owns the HTTP endpoint (`/metrics`, `/health`). A port it cannot bind is
/// reported (`health`), not fatal; a restart binds again.
pub struct MetricsActor;

pub struct MetricsArgs {
    pub control: Control,
    pub address: std::net::SocketAddr,
}

pub enum MetricsMsg {
    /// Why the endpoint is not serving, when it is not.
    Problem {
        reply: ractor::RpcReplyPort<Option<String>>,
    },
    /// Fault injection (`debug crash metrics`).
    Crash,
}

pub struct MetricsState {
    server: Option<tokio::task::JoinHandle<()>>,
    problem: Option<String>,
}

impl ractor::Actor for MetricsActor {
    type Msg = MetricsMsg;
    type State = MetricsState;
    type Arguments = MetricsArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<MetricsMsg>,
        args: MetricsArgs,
    ) -> Result<MetricsState, ractor::ActorProcessingErr> {
        let address = args.address;
        Ok(match TcpListener::bind(address).await {
            Ok(listener) => {
                tracing::info!(%address, "metrics on http://{address}/metrics");
                MetricsState {
                    server: Some(tokio::spawn(serve(args.control, listener))),
                    problem: None,
                }
            }
            Err(e) => {
                let problem = format!(
                    "cannot serve metrics on {address}: {e}; set prometheus_port to a free port"
                );
                tracing::error!("{problem}");
                MetricsState {
                    server: None,
                    problem: Some(problem),
                }
            }
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<MetricsMsg>,
        state: &mut MetricsState,
    ) -> Result<(), ractor::ActorProcessingErr> {
        if let Some(s) = state.server.take() {
            s.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<MetricsMsg>,
        msg: MetricsMsg,
        state: &mut MetricsState,
    ) -> Result<(), ractor::ActorProcessingErr> {
        match msg {
            MetricsMsg::Problem { reply } => {
                let _ = reply.send(state.problem.clone());
            }
            MetricsMsg::Crash => panic!("fault injected into MetricsActor"),
        }
        Ok(())
    }
}

async fn serve(control: Control, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let control = control.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(&control, stream).await {
                        debug!(%peer, error = %e, "metrics client");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting a metrics client failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(control: &Control, mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(HEAD_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < HEAD_LIMIT {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        std::io::Result::Ok(())
    })
    .await;
    if !matches!(complete, Ok(Ok(()))) {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&head);
    let mut request_line = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (
        request_line.next().unwrap_or(""),
        request_line.next().unwrap_or(""),
    );
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => match render(control).await {
            Ok(body) => ("200 OK", prometheus::TEXT_FORMAT, body),
            Err(e) => (
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                format!("{e}\n"),
            ),
        },
        ("GET", "/health") => {
            let health = control.health_report().await;
            let status = match health.status {
                HealthStatus::Unhealthy => "503 Service Unavailable",
                _ => "200 OK",
            };
            let body = serde_json::to_string_pretty(&health).expect("health serializes") + "\n";
            (status, "application/json", body)
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "x0tta6bl4-ebpfd serves /metrics and /health\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

pub(crate) fn counter(pairs: &[(&str, &str)], value: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

pub(crate) fn gauge(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    debug_assert!(
        METRIC_NAMES.contains(&name),
        "{name} is served but missing from METRIC_NAMES"
    );
    unchecked_family(name, help, kind, metrics)
}

/// A family whose name the operator chose (custom metrics), so not in METRIC_NAMES.
pub(crate) fn unchecked_family(
    name: &str,
    help: &str,
    kind: MetricType,
    metrics: Vec<Metric>,
) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

/// A Prometheus histogram in microseconds from the kernel's log2-of-nanoseconds buckets
/// (bucket i counts [2^i, 2^(i+1)) ns). The sum is estimated from bucket midpoints.
fn latency_histogram(program: &str, buckets: &[u64]) -> Metric {
    log2_ns_histogram(&[("program", program)], buckets)
}

fn log2_ns_histogram(pairs: &[(&str, &str)], buckets: &[u64]) -> Metric {
    let mut h = Histogram::default();
    let mut cumulative = 0u64;
    let mut sum_us = 0.0;
    let mut out = Vec::with_capacity(buckets.len());
    for (i, count) in buckets.iter().enumerate() {
        cumulative += count;
        sum_us += *count as f64 * 1.5 * (1u64 << i) as f64 / 1000.0;
        let mut b = Bucket::default();
        b.set_upper_bound((1u64 << (i + 1)) as f64 / 1000.0);
        b.set_cumulative_count(cumulative);
        out.push(b);
    }
    h.set_bucket(out);
    h.set_sample_count(cumulative);
    h.set_sample_sum(sum_us);
    let mut m = Metric::from_label(labels(pairs));
    m.set_histogram(h);
    m
}

fn interfaces_label(row: &ProgramStats) -> String {
    row.interfaces.join(",")
}

/// The metrics as `/metrics` serves them, and as samples for `x0tta6bl4-ebpf metrics`.
pub async fn snapshot(
    control: &Control,
) -> Result<actors::api::MetricsSnapshot, actors::api::ApiError> {
    let families = families(control).await?;
    let mut samples = Vec::new();
    for f in &families {
        for m in f.get_metric() {
            let labels: std::collections::BTreeMap<String, String> = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            let mut push = |name: String, value: f64| {
                samples.push(actors::api::MetricSample {
                    name,
                    labels: labels.clone(),
                    value,
                })
            };
            match f.get_field_type() {
                MetricType::COUNTER => push(f.name().to_string(), m.get_counter().get_value()),
                MetricType::GAUGE => push(f.name().to_string(), m.get_gauge().get_value()),
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    push(format!("{}_count", f.name()), h.get_sample_count() as f64);
                    push(format!("{}_sum", f.name()), h.get_sample_sum());
                }
                _ => {}
            }
        }
    }
    Ok(actors::api::MetricsSnapshot {
        taken_at: actors::sys::now_rfc3339(),
        samples,
        prometheus_text: encode(&families)?,
    })
}

fn encode(families: &[MetricFamily]) -> Result<String, actors::api::ApiError> {
    prometheus::TextEncoder::new()
        .encode_to_string(families)
        .map_err(|e| actors::api::ApiError::new(actors::api::ErrorKind::Internal, e.to_string()))
}

async fn render(control: &Control) -> Result<String, actors::api::ApiError> {
    encode(&families(control).await?)
}

async fn families(control: &Control) -> Result<Vec<MetricFamily>, actors::api::ApiError> {
    let programs = match control.dispatch(Request::Programs).await {
        Response::Programs(p) => p,
        Response::Error(e) => return Err(e),
        _ => Vec::new(),
    };
    let stats = match control.dispatch(Request::Stats).await {
        Response::Stats(s) => s,
        Response::Error(e) => return Err(e),
        _ => Vec::new(),
    };
    let query = FlowQuery {
        limit: Some(0),
        ..FlowQuery::default()
    };
    let tables = match control.dispatch(Request::Flows(query)).await {
        Response::Flows(f) => f.tables,
        _ => Vec::new(),
    };
    let latency = match ActorRef::<LoaderMsg>::where_is(LOADER) {
        Some(loader) => ask(&loader, "LoaderActor", |reply| LoaderMsg::Latency { reply })
            .await
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let map_memory = match ActorRef::<LoaderMsg>::where_is(LOADER) {
        Some(loader) => ask(&loader, "LoaderActor", |reply| LoaderMsg::MapMemory {
            reply,
        })
        .await
        .unwrap_or_default(),
        None => Vec::new(),
    };
    let restarts = control.restarts_by_actor().await;
    let active_alerts = match control.dispatch(Request::Alerts).await {
        Response::Alerts(a) => a,
        _ => Vec::new(),
    };

    let mut families = vec![family(
        "ebpf_programs_loaded",
        "Number of loaded eBPF programs",
        MetricType::GAUGE,
        vec![gauge(&[], programs.len() as f64)],
    )];
    let mut processed = Vec::new();
    let mut dropped = Vec::new();
    for row in &stats {
        let Some(c) = &row.counters else { continue };
        let interface = interfaces_label(row);
        let base = [
            ("interface", interface.as_str()),
            ("program", row.program_id.as_str()),
        ];
        processed.push(counter(&base, c.processed_packets));
        for (reason, n) in &c.dropped_by_reason {
            dropped.push(counter(
                &[base[0], base[1], ("reason", reason.as_str())],
                *n,
            ));
        }
    }
    families.push(family(
        "ebpf_packets_processed_total",
        "Total packets processed",
        MetricType::COUNTER,
        processed,
    ));
    families.push(family(
        "ebpf_packets_dropped_total",
        "Total packets dropped, by reason",
        MetricType::COUNTER,
        dropped,
    ));
    families.push(family(
        "ebpf_flows_active",
        "Number of active network flows in the kernel flow table",
        MetricType::GAUGE,
        tables
            .iter()
            .map(|t| gauge(&[("program", t.program_id.as_str())], t.entries as f64))
            .collect(),
    ));
    families.push(family(
        "ebpf_memory_usage_bytes",
        "Memory usage of eBPF maps: the kernel's memlock charge of each map",
        MetricType::GAUGE,
        map_memory
            .iter()
            .flat_map(|(program, maps)| {
                maps.iter().map(move |(map, bytes)| {
                    gauge(
                        &[("program", program.as_str()), ("map", map.as_str())],
                        *bytes as f64,
                    )
                })
            })
            .collect(),
    ));
    families.push(family(
        "ebpf_flows_aged_out_total",
        "Flows removed from the kernel table after flow_idle_timeout_seconds without a packet",
        MetricType::COUNTER,
        tables
            .iter()
            .map(|t| counter(&[("program", t.program_id.as_str())], t.aged_out))
            .collect(),
    ));
    families.push(family(
        "ebpf_flows_lost_total",
        "Flows lost to table pressure (pushed out by the LRU, or not inserted)",
        MetricType::COUNTER,
        tables
            .iter()
            .map(|t| {
                counter(
                    &[("program", t.program_id.as_str())],
                    t.evicted + t.insert_failures,
                )
            })
            .collect(),
    ));
    families.push(family(
        "ebpf_errors_total",
        "Total number of errors, by kind",
        MetricType::COUNTER,
        vec![counter(
            &[("kind", "flow_insert")],
            tables.iter().map(|t| t.insert_failures).sum(),
        )],
    ));
    families.push(family(
        "ebpf_latency_microseconds",
        "Per-packet processing time in the firewall, entry to verdict (one packet in 64 is timed)",
        MetricType::HISTOGRAM,
        latency
            .iter()
            .filter(|(_, b)| b.len() == LATENCY_BUCKETS as usize)
            .map(|(program, buckets)| latency_histogram(program, buckets))
            .collect(),
    ));
    let mut modes = Vec::new();
    for p in &programs {
        for a in &p.attachments {
            modes.push(gauge(
                &[
                    ("interface", a.interface.as_str()),
                    ("program", p.id.as_str()),
                    ("mode", a.mode.as_str()),
                    ("requested_mode", a.requested_mode.as_str()),
                ],
                1.0,
            ));
        }
    }
    families.push(family(
        "ebpf_attach_mode",
        "1 for the mode each attachment runs in (requested_mode differs when it degraded)",
        MetricType::GAUGE,
        modes,
    ));
    families.push(family(
        "ebpf_supervisor_restarts_total",
        "Actor restarts by the supervisors since the daemon started",
        MetricType::COUNTER,
        restarts
            .iter()
            .map(|(actor, n)| counter(&[("actor", actor.as_str())], *n))
            .collect(),
    ));
    if let Some(fallback) = ActorRef::<FallbackMsg>::where_is(FALLBACK)
        && let Ok(probes) = ask(&fallback, "FallbackActor", |reply| FallbackMsg::Events {
            reply,
        })
        .await
    {
        families.push(family(
            "ebpf_fallback_events_total",
            "FallbackActor events by interface: upgraded (back to the requested mode), probe_refused, degraded_aborting (too many XDP_ABORTED in driver mode)",
            MetricType::COUNTER,
            probes
                .iter()
                .map(|((interface, event), n)| {
                    counter(
                        &[("interface", interface.as_str()), ("event", event.as_str())],
                        *n,
                    )
                })
                .collect(),
        ));
    }
    if let Response::Tcp(tcp) = control.dispatch(Request::Tcp).await
        && tcp.enabled
    {
        families.push(family(
            "ebpf_tcp_connect_latency_microseconds",
            "Time from SYN_SENT to ESTABLISHED of TCP connections this host opened",
            MetricType::HISTOGRAM,
            vec![log2_ns_histogram(&[], &tcp.connect_latency_ns_log2)],
        ));
        let per_peer = |value: fn(&actors::api::TcpPeer) -> u64| -> Vec<Metric> {
            tcp.peers
                .iter()
                .map(|p| {
                    let peer = format!("{}:{}", p.peer, p.port);
                    counter(&[("peer", peer.as_str())], value(p))
                })
                .collect()
        };
        families.push(family(
            "ebpf_tcp_connects_total",
            "TCP connections established, by peer",
            MetricType::COUNTER,
            per_peer(|p| p.connects),
        ));
        families.push(family(
            "ebpf_tcp_connect_failures_total",
            "TCP connects that never established (refused, timed out), by peer",
            MetricType::COUNTER,
            per_peer(|p| p.failed),
        ));
        families.push(family(
            "ebpf_tcp_resets_total",
            "Established TCP connections reset, by peer",
            MetricType::COUNTER,
            per_peer(|p| p.resets),
        ));
    }
    families.push(family(
        "ebpf_alerts_active",
        "1 while the alert is active",
        MetricType::GAUGE,
        crate::alerts::ALERT_IDS
            .iter()
            .map(|id| {
                gauge(
                    &[("alert", id)],
                    f64::from(u8::from(active_alerts.iter().any(|a| a.id == *id))),
                )
            })
            .collect(),
    ));
    if let Some(loader) = ActorRef::<LoaderMsg>::where_is(LOADER) {
        families.extend(control.custom_metrics.families(&loader).await);
    }
    families.retain(|f| !f.get_metric().is_empty());
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dashboard shipped in contrib/ queries only metrics the daemon serves.
    #[test]
    fn the_grafana_dashboard_uses_only_served_metrics() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../contrib/grafana-dashboard.json"
        );
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut used = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("ebpf_") {
                        let family = word
                            .strip_suffix("_bucket")
                            .or_else(|| word.strip_suffix("_count"))
                            .or_else(|| word.strip_suffix("_sum"))
                            .unwrap_or(word);
                        assert!(
                            METRIC_NAMES.contains(&family),
                            "{family} in panel {} is not served",
                            panel["title"]
                        );
                        used += 1;
                    }
                }
            }
        }
        assert!(used >= 10);
    }

    #[test]
    fn log2_nanosecond_buckets_become_a_microsecond_histogram() {
        let mut buckets = vec![0u64; LATENCY_BUCKETS as usize];
        buckets[4] = 3; // [16, 32) ns
        buckets[10] = 1; // [1024, 2048) ns
        let m = latency_histogram("fw-1", &buckets);
        let h = m.get_histogram();
        assert_eq!(h.get_sample_count(), 4);
        let b = h.get_bucket();
        assert_eq!(b[4].upper_bound(), 0.032);
        assert_eq!(b[4].cumulative_count(), 3);
        assert_eq!(b[9].cumulative_count(), 3);
        assert_eq!(b[10].cumulative_count(), 4);
        assert!((h.get_sample_sum() - (3.0 * 0.024 + 1.536)).abs() < 1e-9);
    }
}
