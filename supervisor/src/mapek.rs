//! MapekActor: the MAPE-K loop. Every `monitoring_interval_seconds` it
//! - **M**onitors: a snapshot of the flow tables, the attachments' problems, the restart count
//!   and the active alerts;
//! - **A**nalyzes: symptoms against thresholds and trends (a flow table over 80% full, an
//!   attachment lost, restarts rising, alerts active);
//! - **P**lans: for each symptom, the next step of its policy ladder (`plan`, a pure function):
//!   an action is tried `TRIES_PER_STEP` times; while the symptom persists the loop moves up
//!   the ladder, and at its top escalates once and then holds, rather than repeating what
//!   did not help;
//! - **E**xecutes: messages to the actors (the FlowActor ages idle flows out early, the
//!   InterfaceSupervisor retries lost attachments), or a warning that names what to do;
//! - **K**nowledge: a bounded history of symptom → action → outcome, kept in
//!   `state_dir/mapek-knowledge.json` across restarts, from which the ladder step is read.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use actors::api::{MapekEntry, MapekReport, Request, Response};
use actors::flows::FlowMsg;
use actors::interfaces::InterfacesMsg;
use actors::rpc::ask;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::control::Control;
use crate::root::{FALLBACK, FLOWS, INTERFACES};
use actors::fallback::FallbackMsg;

pub const MAPEK: &str = "x0tta6bl4.mapek";
const FILE: &str = "mapek-knowledge.json";
/// Entries of knowledge kept; the oldest go first.
pub const HISTORY_LIMIT: usize = 256;
/// How often an action is tried on a persisting symptom before the next step.
pub const TRIES_PER_STEP: usize = 2;
/// A flow table fuller than this comes under pressure (the `map_memory` alert's threshold)...
const FLOW_TABLE_LIMIT: f64 = 0.80;
/// ...and stays under pressure until it is no fuller than this: the LRU's own evictions make
/// a busy table's count wander around the limit, and a symptom that flaps would restart its
/// policy from the bottom each time.
const FLOW_TABLE_CLEAR: f64 = 0.70;

/// Something wrong that the loop can act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Symptom {
    FlowTablePressure {
        program: String,
        fill: f64,
    },
    AttachmentLost {
        interface: String,
        why: String,
    },
    RestartsRising {
        restarts: u64,
    },
    /// An attachment runs in skb mode though drv was requested (the `xdp_mode_degraded` alert).
    ModeDegraded,
    /// An active alert with no remedy of its own (`high_latency`, `drop_rate`, …).
    Alert {
        id: String,
    },
}

impl Symptom {
    /// The knowledge's name for it: the same symptom in two cycles has the same key.
    pub fn key(&self) -> String {
        match self {
            Symptom::FlowTablePressure { program, .. } => format!("flow_table_pressure:{program}"),
            Symptom::AttachmentLost { interface, .. } => format!("attachment_lost:{interface}"),
            Symptom::RestartsRising { .. } => "restarts_rising".into(),
            Symptom::ModeDegraded => "xdp_mode_degraded".into(),
            Symptom::Alert { id } => format!("alert:{id}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    AgeOutFlows {
        idle: Duration,
    },
    RetryAttachment {
        interface: String,
    },
    /// Ask the FallbackActor to probe driver mode now, ahead of its backoff.
    ProbeUpgrade,
    /// The loop has no (more) remedy: say what a person should do.
    Escalate {
        advice: String,
    },
    /// Watch: the symptom is reported (its alert is active) and nothing else is done.
    Observe,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::AgeOutFlows { .. } => "age_out_flows",
            Action::RetryAttachment { .. } => "retry_attachment",
            Action::ProbeUpgrade => "probe_upgrade",
            Action::Escalate { .. } => "escalate",
            Action::Observe => "observe",
        }
    }
}

/// The knobs of the policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The first early ageing removes flows idle this long (the second, a quarter of it).
    pub early_idle: Duration,
}

impl Policy {
    /// Early ageing starts at an eighth of `flow_idle_timeout_seconds` (at least 1 s).
    pub fn from_idle_timeout(idle_timeout: Duration) -> Policy {
        Policy {
            early_idle: (idle_timeout / 8).max(Duration::from_secs(1)),
        }
    }

    fn ladder(&self, symptom: &Symptom) -> Vec<Action> {
        match symptom {
            Symptom::FlowTablePressure { program, .. } => vec![
                Action::AgeOutFlows {
                    idle: self.early_idle,
                },
                Action::AgeOutFlows {
                    idle: (self.early_idle / 4).max(Duration::from_secs(1)),
                },
                Action::Escalate {
                    advice: format!(
                        "the flow table of {program} stays over 80% full with active flows: raise flow_table_size"
                    ),
                },
            ],
            Symptom::AttachmentLost { interface, why } => vec![
                Action::RetryAttachment {
                    interface: interface.clone(),
                },
                Action::Escalate {
                    advice: format!(
                        "the attachment on {interface} stays lost ({why}); it is made again as soon as the interface is back"
                    ),
                },
            ],
            Symptom::RestartsRising { restarts } => vec![
                Action::Observe,
                Action::Escalate {
                    advice: format!(
                        "actors keep restarting ({restarts} restarts): see `x0tta6bl4-ebpf health` and the log"
                    ),
                },
            ],
            // The FallbackActor probes on its own backoff; if the loop still sees the degrade
            // after watching a while, it asks for a probe now, then hands over to a person.
            Symptom::ModeDegraded => vec![
                Action::Observe,
                Action::ProbeUpgrade,
                Action::Escalate {
                    advice: "an attachment stays in skb mode though drv was requested: the driver keeps refusing native XDP; see the log for its reason".into(),
                },
            ],
            Symptom::Alert { .. } => vec![Action::Observe],
        }
    }
}

/// A planned action, and whether it goes into the knowledge (holding does not).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub symptom: Symptom,
    pub action: Action,
    pub reason: String,
    pub record: bool,
}

/// Entries about `key` since its last resolution, newest first.
fn streak<'a>(history: &'a [MapekEntry], key: &str) -> Vec<&'a MapekEntry> {
    history
        .iter()
        .rev()
        .filter(|e| e.symptom == key)
        .take_while(|e| e.outcome != "resolved")
        .collect()
}

/// Plan: for each symptom, the step of its ladder that the knowledge calls for. Pure.
pub fn plan(symptoms: &[Symptom], history: &[MapekEntry], policy: &Policy) -> Vec<Decision> {
    symptoms
        .iter()
        .map(|symptom| {
            let key = symptom.key();
            let ladder = policy.ladder(symptom);
            let recent = streak(history, &key);
            let failed = recent.iter().filter(|e| e.outcome == "persisted").count();
            let step = (failed / TRIES_PER_STEP).min(ladder.len() - 1);
            let action = ladder[step].clone();
            // At the top of its ladder, doing the same again says nothing new: hold.
            let repeat = step == ladder.len() - 1
                && recent
                    .first()
                    .is_some_and(|last| last.action == action.name());
            let reason = if repeat {
                format!("{} already; holding while it persists", action.name())
            } else if step == 0 && failed == 0 {
                "first step of the policy".to_string()
            } else {
                format!(
                    "step {} of {}: {failed} earlier action(s) did not clear it",
                    step + 1,
                    ladder.len()
                )
            };
            Decision {
                symptom: symptom.clone(),
                action,
                reason,
                record: !repeat,
            }
        })
        .collect()
}

/// Outcomes of the last cycle's actions: resolved if their symptom is gone, else persisted.
/// A symptom that clears after its actions stopped (holding) gets a `cleared` entry, so the
/// next time it appears its ladder starts again from the bottom.
pub fn settle(history: &mut VecDeque<MapekEntry>, present: &[String], at: &str) {
    for e in history.iter_mut().filter(|e| e.outcome == "pending") {
        e.outcome = if present.contains(&e.symptom) {
            "persisted".into()
        } else {
            "resolved".into()
        };
    }
    let mut open: BTreeMap<String, bool> = BTreeMap::new();
    for e in history.iter() {
        open.insert(e.symptom.clone(), e.outcome != "resolved");
    }
    for (symptom, is_open) in open {
        if is_open && !present.contains(&symptom) {
            history.push_back(MapekEntry {
                at: at.to_string(),
                symptom,
                action: "cleared".into(),
                reason: "the symptom went away".into(),
                detail: String::new(),
                outcome: "resolved".into(),
            });
        }
    }
    while history.len() > HISTORY_LIMIT {
        history.pop_front();
    }
}

/// What the Monitor step saw.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// (program, entries, capacity) per flow table.
    pub flow_tables: Vec<(String, u64, u32)>,
    /// Interface → why its attachment is not well.
    pub lost: BTreeMap<String, String>,
    pub restarts: u64,
    pub alerts: Vec<String>,
}

/// Analyze: symptoms in an observation (`last_restarts` and the symptom keys `before` from
/// the cycle before). Pure.
pub fn analyze(seen: &Observation, last_restarts: Option<u64>, before: &[String]) -> Vec<Symptom> {
    let mut symptoms = Vec::new();
    for (program, entries, capacity) in &seen.flow_tables {
        let fill = *entries as f64 / f64::from((*capacity).max(1));
        let symptom = Symptom::FlowTablePressure {
            program: program.clone(),
            fill,
        };
        let limit = if before.contains(&symptom.key()) {
            FLOW_TABLE_CLEAR
        } else {
            FLOW_TABLE_LIMIT
        };
        if fill > limit {
            symptoms.push(symptom);
        }
    }
    for (interface, why) in &seen.lost {
        symptoms.push(Symptom::AttachmentLost {
            interface: interface.clone(),
            why: why.clone(),
        });
    }
    if last_restarts.is_some_and(|before| seen.restarts > before) {
        symptoms.push(Symptom::RestartsRising {
            restarts: seen.restarts,
        });
    }
    for id in &seen.alerts {
        match id.as_str() {
            // These have symptoms of their own, with remedies.
            "map_memory" | "attach_failure" => {}
            "xdp_mode_degraded" => symptoms.push(Symptom::ModeDegraded),
            _ => symptoms.push(Symptom::Alert { id: id.clone() }),
        }
    }
    symptoms
}

pub enum MapekMsg {
    Cycle,
    Report { reply: RpcReplyPort<MapekReport> },
}

pub struct MapekArgs {
    pub control: Control,
    pub interval: Duration,
    pub state_dir: PathBuf,
    pub policy: Policy,
}

pub struct MapekState {
    args: MapekArgs,
    history: VecDeque<MapekEntry>,
    cycles: u64,
    symptoms: Vec<String>,
    last_restarts: Option<u64>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

pub struct MapekActor;

impl Actor for MapekActor {
    type Msg = MapekMsg;
    type State = MapekState;
    type Arguments = MapekArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<MapekMsg>,
        args: MapekArgs,
    ) -> Result<MapekState, ActorProcessingErr> {
        let path = args.state_dir.join(FILE);
        let history = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(file = %path.display(), error = %e, "MAPE-K knowledge unreadable; starting without it");
                VecDeque::new()
            }),
            Err(_) => VecDeque::new(),
        };
        Ok(MapekState {
            args,
            history,
            cycles: 0,
            symptoms: Vec::new(),
            last_restarts: None,
            ticker: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<MapekMsg>,
        state: &mut MapekState,
    ) -> Result<(), ActorProcessingErr> {
        state.ticker = Some(myself.send_interval(state.args.interval, || MapekMsg::Cycle));
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<MapekMsg>,
        state: &mut MapekState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<MapekMsg>,
        msg: MapekMsg,
        state: &mut MapekState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MapekMsg::Cycle => state.cycle().await,
            MapekMsg::Report { reply } => {
                let _ = reply.send(MapekReport {
                    enabled: true,
                    interval_seconds: state.args.interval.as_secs_f64(),
                    cycles: state.cycles,
                    symptoms: state.symptoms.clone(),
                    history: state.history.iter().cloned().collect(),
                });
            }
        }
        Ok(())
    }
}

impl MapekState {
    async fn monitor(&self) -> Observation {
        let control = &self.args.control;
        let mut seen = Observation {
            flow_tables: control
                .flow_tables()
                .await
                .iter()
                .map(|t| (t.program_id.clone(), t.entries, t.capacity))
                .collect(),
            ..Observation::default()
        };
        if let Some(interfaces) = ActorRef::<InterfacesMsg>::where_is(INTERFACES)
            && let Ok(report) = ask(&interfaces, "InterfaceSupervisor", |reply| {
                InterfacesMsg::Verify { reply }
            })
            .await
        {
            seen.lost = report.problems;
        }
        seen.restarts = control.restarts().await;
        if let Response::Alerts(alerts) = control.dispatch(Request::Alerts).await {
            seen.alerts = alerts.into_iter().map(|a| a.id).collect();
        }
        seen
    }

    async fn execute(&self, action: &Action) -> String {
        match action {
            Action::AgeOutFlows { idle } => match ActorRef::<FlowMsg>::where_is(FLOWS) {
                Some(flows) => match ask(&flows, "FlowActor", |reply| FlowMsg::AgeOut {
                    idle: *idle,
                    reply,
                })
                .await
                {
                    Ok(n) => format!("removed {n} flows idle for over {}s", idle.as_secs_f64()),
                    Err(e) => format!("the FlowActor did not answer: {e}"),
                },
                None => "the FlowActor is restarting".into(),
            },
            Action::RetryAttachment { .. } => {
                match ActorRef::<InterfacesMsg>::where_is(INTERFACES) {
                    Some(i) => match i.cast(InterfacesMsg::RetryLost) {
                        Ok(()) => "asked the InterfaceSupervisor to attach again now".into(),
                        Err(e) => e.to_string(),
                    },
                    None => "the InterfaceSupervisor is restarting".into(),
                }
            }
            Action::ProbeUpgrade => match ActorRef::<FallbackMsg>::where_is(FALLBACK) {
                Some(fallback) => {
                    match ask(&fallback, "FallbackActor", |reply| FallbackMsg::ProbeNow {
                        reply,
                    })
                    .await
                    {
                        Ok(found) if found.is_empty() => "nothing degraded to probe".into(),
                        Ok(found) => found.join("; "),
                        Err(e) => format!("the FallbackActor did not answer: {e}"),
                    }
                }
                None => "no FallbackActor (enable_dynamic_fallback is off)".into(),
            },
            Action::Escalate { advice } => {
                warn!(%advice, "MAPE-K escalates");
                advice.clone()
            }
            Action::Observe => String::new(),
        }
    }

    async fn cycle(&mut self) {
        let seen = self.monitor().await;
        let symptoms = analyze(&seen, self.last_restarts, &self.symptoms);
        self.last_restarts = Some(seen.restarts);
        let keys: Vec<String> = symptoms.iter().map(Symptom::key).collect();
        let now = actors::sys::now_rfc3339();
        let before = self.history.clone();
        settle(&mut self.history, &keys, &now);
        let history: Vec<MapekEntry> = self.history.iter().cloned().collect();
        for d in plan(&symptoms, &history, &self.args.policy) {
            if !d.record {
                continue;
            }
            let detail = self.execute(&d.action).await;
            info!(
                symptom = %d.symptom.key(),
                action = d.action.name(),
                reason = %d.reason,
                %detail,
                "MAPE-K acts"
            );
            self.history.push_back(MapekEntry {
                at: now.clone(),
                symptom: d.symptom.key(),
                action: d.action.name().into(),
                reason: d.reason,
                detail,
                outcome: "pending".into(),
            });
        }
        while self.history.len() > HISTORY_LIMIT {
            self.history.pop_front();
        }
        self.symptoms = keys;
        self.cycles += 1;
        if self.history != before {
            self.save();
        }
    }

    fn save(&self) {
        let path = self.args.state_dir.join(FILE);
        let result = serde_json::to_vec_pretty(&self.history)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                std::fs::create_dir_all(&self.args.state_dir)?;
                actors::sys::write_atomically(&path, &bytes)
            });
        if let Err(e) = result {
            warn!(file = %path.display(), error = %e, "saving the MAPE-K knowledge failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(symptom: &str, action: &str, outcome: &str) -> MapekEntry {
        MapekEntry {
            at: String::new(),
            symptom: symptom.into(),
            action: action.into(),
            reason: String::new(),
            detail: String::new(),
            outcome: outcome.into(),
        }
    }

    fn pressure() -> Symptom {
        Symptom::FlowTablePressure {
            program: "fw-1".into(),
            fill: 0.9,
        }
    }

    fn policy() -> Policy {
        Policy::from_idle_timeout(Duration::from_secs(120))
    }

    #[test]
    fn a_new_symptom_gets_the_first_step() {
        let d = plan(&[pressure()], &[], &policy());
        assert_eq!(
            d[0].action,
            Action::AgeOutFlows {
                idle: Duration::from_secs(15)
            }
        );
        assert!(d[0].record);
    }

    #[test]
    fn actions_that_do_not_help_are_not_repeated_forever() {
        let key = pressure().key();
        let mut history = Vec::new();
        let mut taken = Vec::new();
        for _ in 0..8 {
            let d = plan(&[pressure()], &history, &policy()).remove(0);
            taken.push((d.action.name(), d.record));
            if d.record {
                history.push(entry(&key, d.action.name(), "persisted"));
            }
        }
        assert_eq!(
            taken,
            vec![
                ("age_out_flows", true),
                ("age_out_flows", true),
                ("age_out_flows", true),
                ("age_out_flows", true),
                ("escalate", true),
                ("escalate", false),
                ("escalate", false),
                ("escalate", false),
            ]
        );
        // The second step ages out harder.
        let d = plan(&[pressure()], &history[..2], &policy()).remove(0);
        assert_eq!(
            d.action,
            Action::AgeOutFlows {
                idle: Duration::from_millis(3750)
            }
        );
    }

    /// The actions a symptom that never clears gets, cycle after cycle (`None`: holding).
    fn ladder_walk(symptom: &Symptom, cycles: usize) -> Vec<Option<&'static str>> {
        let mut history = Vec::new();
        (0..cycles)
            .map(|_| {
                let d = plan(std::slice::from_ref(symptom), &history, &policy()).remove(0);
                d.record.then(|| {
                    history.push(entry(&symptom.key(), d.action.name(), "persisted"));
                    d.action.name()
                })
            })
            .collect()
    }

    #[test]
    fn every_ladder_climbs_to_its_top_and_holds() {
        assert_eq!(
            ladder_walk(&Symptom::ModeDegraded, 7),
            [
                Some("observe"),
                Some("observe"),
                Some("probe_upgrade"),
                Some("probe_upgrade"),
                Some("escalate"),
                None,
                None
            ]
        );
        assert_eq!(
            ladder_walk(&Symptom::RestartsRising { restarts: 3 }, 5),
            [
                Some("observe"),
                Some("observe"),
                Some("escalate"),
                None,
                None
            ]
        );
        let lost = Symptom::AttachmentLost {
            interface: "eth0".into(),
            why: "deleted".into(),
        };
        assert_eq!(
            ladder_walk(&lost, 4),
            [
                Some("retry_attachment"),
                Some("retry_attachment"),
                Some("escalate"),
                None
            ]
        );
    }

    #[test]
    fn a_resolved_symptom_starts_from_the_bottom_again() {
        let key = pressure().key();
        let history = vec![
            entry(&key, "age_out_flows", "persisted"),
            entry(&key, "age_out_flows", "persisted"),
            entry(&key, "age_out_flows", "resolved"),
        ];
        let d = plan(&[pressure()], &history, &policy()).remove(0);
        assert_eq!(d.reason, "first step of the policy");
        // Other symptoms' entries do not count.
        let other = vec![entry("attachment_lost:eth0", "retry_attachment", "persisted"); 5];
        assert!(plan(&[pressure()], &other, &policy())[0].record);
    }

    #[test]
    fn alerts_are_observed_once_while_they_last() {
        let alert = Symptom::Alert {
            id: "drop_rate".into(),
        };
        let d = plan(std::slice::from_ref(&alert), &[], &policy()).remove(0);
        assert_eq!((d.action.clone(), d.record), (Action::Observe, true));
        let history = vec![entry(&alert.key(), "observe", "persisted")];
        assert!(!plan(&[alert], &history, &policy())[0].record);
    }

    #[test]
    fn settling_marks_outcomes_and_records_clearing() {
        let mut history: VecDeque<MapekEntry> = [
            entry("a", "age_out_flows", "pending"),
            entry("b", "retry_attachment", "pending"),
            entry("c", "escalate", "persisted"),
        ]
        .into();
        settle(&mut history, &["a".to_string()], "now");
        let outcomes: Vec<(&str, &str, &str)> = history
            .iter()
            .map(|e| (e.symptom.as_str(), e.action.as_str(), e.outcome.as_str()))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                ("a", "age_out_flows", "persisted"),
                ("b", "retry_attachment", "resolved"),
                ("c", "escalate", "persisted"),
                ("c", "cleared", "resolved"),
            ]
        );
    }

    #[test]
    fn analysis_finds_pressure_losses_rising_restarts_and_alerts() {
        let seen = Observation {
            flow_tables: vec![("fw-1".into(), 900, 1024), ("fw-2".into(), 10, 1024)],
            lost: [("eth0".to_string(), "deleted".to_string())].into(),
            restarts: 3,
            alerts: vec![
                "map_memory".into(),
                "drop_rate".into(),
                "xdp_mode_degraded".into(),
            ],
        };
        let keys: Vec<String> = analyze(&seen, Some(2), &[])
            .iter()
            .map(Symptom::key)
            .collect();
        assert_eq!(
            keys,
            vec![
                "flow_table_pressure:fw-1",
                "attachment_lost:eth0",
                "restarts_rising",
                "alert:drop_rate",
                "xdp_mode_degraded"
            ]
        );
        assert_eq!(analyze(&seen, Some(3), &[]).len(), 4, "restarts steady");
        assert_eq!(analyze(&seen, None, &[]).len(), 4, "no baseline yet");
        // Hysteresis: 75% full raises nothing, but keeps a table already under pressure so.
        let at_75 = Observation {
            flow_tables: vec![("fw-1".into(), 768, 1024)],
            ..Observation::default()
        };
        assert!(analyze(&at_75, None, &[]).is_empty());
        let key = "flow_table_pressure:fw-1".to_string();
        assert_eq!(analyze(&at_75, None, &[key]).len(), 1);
    }
}
