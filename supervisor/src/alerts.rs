//! AlertsActor: every `monitoring_interval_seconds` it looks at what the daemon measures and
//! keeps the alerts of the original design active while their condition holds: latency above
//! `latency_threshold_ms`, a program that failed to load, an attachment that failed or was
//! lost, a flow table fuller than 80%, drops above 5% of the packets of the interval.

use std::collections::BTreeMap;
use std::time::Duration;

use actors::api::{Alert, Request, Response, Severity};
use actors::loader::LoaderMsg;
use actors::rpc::ask;
use ebpf_shared::LATENCY_BUCKETS;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::control::Control;
use crate::root::{INTERFACES, LOADER};
use actors::interfaces::InterfacesMsg;

pub const ALERTS: &str = "x0tta6bl4.alerts";

/// Every alert this actor raises.
pub const ALERT_IDS: [&str; 6] = [
    "high_latency",
    "program_load_failure",
    "attach_failure",
    "map_memory",
    "drop_rate",
    "xdp_mode_degraded",
];

/// Thresholds of the original design.
const MAP_MEMORY_LIMIT: f64 = 0.80;
const DROP_RATE_LIMIT: f64 = 0.05;

pub enum AlertsMsg {
    Evaluate,
    List { reply: RpcReplyPort<Vec<Alert>> },
}

pub struct AlertsArgs {
    pub control: Control,
    pub interval: Duration,
    pub latency_threshold_ms: f64,
}

pub struct AlertsState {
    control: Control,
    interval: Duration,
    latency_threshold_ms: f64,
    active: BTreeMap<String, Alert>,
    /// Totals at the previous evaluation: (processed, dropped), latency buckets.
    last_packets: Option<(u64, u64)>,
    last_latency: Option<Vec<u64>>,
    /// Load and attach failures counted at the previous evaluation.
    last_failures: (u64, u64),
    /// Flows evicted per program at the previous evaluation.
    last_evicted: BTreeMap<String, u64>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

pub struct AlertsActor;

impl Actor for AlertsActor {
    type Msg = AlertsMsg;
    type State = AlertsState;
    type Arguments = AlertsArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<AlertsMsg>,
        args: AlertsArgs,
    ) -> Result<AlertsState, ActorProcessingErr> {
        Ok(AlertsState {
            control: args.control,
            interval: args.interval,
            latency_threshold_ms: args.latency_threshold_ms,
            active: BTreeMap::new(),
            last_packets: None,
            last_latency: None,
            last_failures: (0, 0),
            last_evicted: BTreeMap::new(),
            ticker: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<AlertsMsg>,
        state: &mut AlertsState,
    ) -> Result<(), ActorProcessingErr> {
        // The first evaluation, now, sets the baselines (packets, latency, failures), so that
        // the first interval is measured from the start like every other.
        myself.cast(AlertsMsg::Evaluate)?;
        state.ticker = Some(myself.send_interval(state.interval, || AlertsMsg::Evaluate));
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<AlertsMsg>,
        state: &mut AlertsState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<AlertsMsg>,
        msg: AlertsMsg,
        state: &mut AlertsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AlertsMsg::Evaluate => {
                let now = state.conditions().await;
                state.update(now);
            }
            AlertsMsg::List { reply } => {
                let _ = reply.send(state.active.values().cloned().collect());
            }
        }
        Ok(())
    }
}

/// The quantile `q` of a log2-ns histogram, as the upper bound of its bucket, in ms.
pub fn quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let want = (total as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= want {
            return Some((1u64 << (i + 1)) as f64 / 1e6);
        }
    }
    None
}

impl AlertsState {
    /// The conditions that hold now: alert id → (severity, message).
    async fn conditions(&mut self) -> BTreeMap<String, (Severity, String)> {
        let mut now = BTreeMap::new();
        let health = self.control.health_report().await;
        if let Some(c) = health.checks.get("programs")
            && c.status == actors::api::HealthStatus::Unhealthy
        {
            now.insert(
                "program_load_failure".to_string(),
                (Severity::Critical, c.message.clone()),
            );
        }
        if let Some(c) = health.checks.get("attachments")
            && c.status == actors::api::HealthStatus::Unhealthy
        {
            now.insert(
                "attach_failure".to_string(),
                (Severity::Critical, c.message.clone()),
            );
        }
        // Failed loads and attaches are events: the alert holds for the interval they happened in.
        let loads = match ActorRef::<LoaderMsg>::where_is(LOADER) {
            Some(l) => ask(&l, "LoaderActor", |reply| LoaderMsg::LoadFailures { reply })
                .await
                .unwrap_or_default(),
            None => (0, None),
        };
        let verified = match ActorRef::<InterfacesMsg>::where_is(INTERFACES) {
            Some(i) => ask(&i, "InterfaceSupervisor", |reply| InterfacesMsg::Verify {
                reply,
            })
            .await
            .ok(),
            None => None,
        };
        // Running in another mode than requested (drv degraded to skb): active while it lasts.
        if let Some(r) = &verified
            && !r.degraded.is_empty()
        {
            now.insert(
                "xdp_mode_degraded".to_string(),
                (Severity::Warning, r.degraded.join("; ")),
            );
        }
        let attaches = match verified {
            Some(r) => r.attach_failures,
            None => (0, None),
        };
        if loads.0 > self.last_failures.0 {
            now.entry("program_load_failure".to_string())
                .or_insert((Severity::Critical, loads.1.clone().unwrap_or_default()));
        }
        if attaches.0 > self.last_failures.1 {
            now.entry("attach_failure".to_string())
                .or_insert((Severity::Critical, attaches.1.clone().unwrap_or_default()));
        }
        self.last_failures = (loads.0, attaches.0);
        for t in self
            .control
            .flow_tables()
            .await
            .iter()
            .filter(|t| t.capacity > 0)
        {
            let fill = t.entries as f64 / f64::from(t.capacity);
            // The kernel's LRU evicts before the table is strictly full (its free lists are
            // per CPU): flows pushed out in the interval mean the table is full too.
            let evicted = t.evicted.saturating_sub(
                self.last_evicted
                    .get(&t.program_id)
                    .copied()
                    .unwrap_or(t.evicted),
            );
            self.last_evicted.insert(t.program_id.clone(), t.evicted);
            if fill > MAP_MEMORY_LIMIT || evicted > 0 {
                now.insert(
                    "map_memory".to_string(),
                    (
                        Severity::Warning,
                        format!(
                            "{}'s flow table holds {} of {} flows ({:.0}%; {} pushed out in the last interval): raise flow_table_size",
                            t.program_id,
                            t.entries,
                            t.capacity,
                            fill * 100.0,
                            evicted
                        ),
                    ),
                );
            }
        }
        if let Response::Stats(rows) = self.control.dispatch(Request::Stats).await {
            let (processed, dropped) = rows
                .iter()
                .filter_map(|r| r.counters.as_ref())
                .fold((0, 0), |(p, d), c| {
                    (p + c.processed_packets, d + c.dropped_packets)
                });
            if let Some((p0, d0)) = self.last_packets
                && processed > p0
            {
                let rate = (dropped.saturating_sub(d0)) as f64 / (processed - p0) as f64;
                if rate > DROP_RATE_LIMIT {
                    now.insert(
                        "drop_rate".to_string(),
                        (
                            Severity::Warning,
                            format!(
                                "{:.1}% of the packets of the last interval were dropped (> 5%)",
                                rate * 100.0
                            ),
                        ),
                    );
                }
            }
            self.last_packets = Some((processed, dropped));
        }
        if let Some(loader) = ActorRef::<LoaderMsg>::where_is(LOADER) {
            let histograms = ask(&loader, "LoaderActor", |reply| LoaderMsg::Latency { reply })
                .await
                .unwrap_or_default();
            let mut sum = vec![0u64; LATENCY_BUCKETS as usize];
            for (_, h) in &histograms {
                for (s, v) in sum.iter_mut().zip(h) {
                    *s += v;
                }
            }
            let interval: Vec<u64> = match &self.last_latency {
                Some(last) if last.len() == sum.len() => sum
                    .iter()
                    .zip(last)
                    .map(|(a, b)| a.saturating_sub(*b))
                    .collect(),
                _ => sum.clone(),
            };
            if let Some(p99) = quantile_ms(&interval, 0.99)
                && p99 > self.latency_threshold_ms
            {
                now.insert(
                    "high_latency".to_string(),
                    (
                        Severity::Warning,
                        format!(
                            "99% of sampled packets took up to {p99} ms in the firewall (> latency_threshold_ms = {})",
                            self.latency_threshold_ms
                        ),
                    ),
                );
            }
            self.last_latency = Some(sum);
        }
        now
    }

    fn update(&mut self, now: BTreeMap<String, (Severity, String)>) {
        self.active.retain(|id, alert| {
            let holds = now.contains_key(id);
            if !holds {
                info!(alert = %id, "alert cleared: {}", alert.message);
            }
            holds
        });
        for (id, (severity, message)) in now {
            match self.active.get_mut(&id) {
                Some(a) => a.message = message,
                None => {
                    warn!(alert = %id, ?severity, "alert: {message}");
                    self.active.insert(
                        id.clone(),
                        Alert {
                            id,
                            severity,
                            since: actors::sys::now_rfc3339(),
                            message,
                        },
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_bucket_upper_bounds() {
        let mut b = vec![0u64; 32];
        b[5] = 99; // [32, 64) ns
        b[20] = 1; // [1 ms, 2 ms)
        assert_eq!(quantile_ms(&b, 0.99), Some(64.0 / 1e6));
        assert_eq!(quantile_ms(&b, 1.0), Some((1u64 << 21) as f64 / 1e6));
        assert_eq!(quantile_ms(&[0; 32], 0.99), None);
    }
}
