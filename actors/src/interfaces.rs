//! InterfaceSupervisor: one AttachActor per interface (one_for_one). It records what is
//! attached where, so that when an AttachActor dies (and its links with it) it can restart
//! the actor and attach the same programs again, within a restart intensity.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info, warn};

use crate::api::{ApiError, AttachMode, Attachment, ErrorKind};
use crate::attach::{AttachActor, AttachArgs, AttachMsg};
use crate::loader::LoaderMsg;
use crate::restart::RestartIntensity;
use crate::rpc::ask;

/// Backoff of re-attach attempts after a restart: 10 ms, doubling, about 1.3 s in all.
const REATTACH_FIRST_DELAY: Duration = Duration::from_millis(10);
const REATTACH_MAX_DELAY: Duration = Duration::from_millis(640);

/// Told of every AttachActor restart: (interface, why it died).
pub type OnRestart = std::sync::Arc<dyn Fn(&str, &str) + Send + Sync>;

pub enum InterfacesMsg {
    Attach {
        program_id: String,
        interface: String,
        mode: Option<AttachMode>,
        /// Replace an XDP program this daemon does not manage (`attach --force`).
        force: bool,
        reply: RpcReplyPort<Result<Attachment, ApiError>>,
    },
    Detach {
        program_id: String,
        interface: String,
        reply: RpcReplyPort<Result<Attachment, ApiError>>,
    },
    /// Detaches a program from every interface (before unload).
    DetachProgram {
        program_id: String,
        reply: RpcReplyPort<Vec<Attachment>>,
    },
    /// Detaches everything (shutdown).
    DetachAll { reply: RpcReplyPort<()> },
    List {
        reply: RpcReplyPort<Vec<Attachment>>,
    },
    /// Asks every AttachActor whether its interface is still there.
    Verify {
        reply: RpcReplyPort<SupervisionReport>,
    },
    /// An AttachActor found a link detached (behind the daemon's back, or its interface
    /// deleted): attach again now, or once the interface is back.
    LinkLost {
        interface: String,
        program_id: String,
        why: String,
    },
    /// Periodic: retries attachments waiting for their interface.
    RetryLost,
    /// Tries the requested mode again for an attachment that degraded (FallbackActor): the
    /// degraded link comes off, the requested mode is attached, and if the driver still
    /// refuses, the degraded mode goes back on. `Ok(Err(why))`: still refused.
    ProbeUpgrade {
        program_id: String,
        interface: String,
        reply: RpcReplyPort<Result<Result<AttachMode, String>, ApiError>>,
    },
    /// Moves a driver-mode attachment to skb mode (the FallbackActor saw it abort too often);
    /// the requested mode stays, so it shows as degraded and is probed back later.
    Degrade {
        program_id: String,
        interface: String,
        why: String,
        reply: RpcReplyPort<Result<(), ApiError>>,
    },
    /// What reconciling links at start found and did.
    Reconciliation {
        reply: RpcReplyPort<Vec<crate::api::ReconcileStep>>,
    },
    /// The kernel announced a link change (netlink): check every attachment now.
    LinksChanged,
    /// An AttachActor found its interface down (`Some(why)`) or up again (`None`).
    LinkState {
        interface: String,
        down: Option<String>,
    },
    /// Fault injection: makes the supervisor itself panic.
    Crash,
    /// Fault injection: makes the interface's AttachActor panic.
    CrashChild {
        interface: String,
        reply: RpcReplyPort<Result<(), ApiError>>,
    },
}

/// What the supervisor knows about its children, for `health`.
#[derive(Debug, Clone, Default)]
pub struct SupervisionReport {
    /// Interface → why its attachment is not well.
    pub problems: BTreeMap<String, String>,
    pub restarts: u64,
    /// Attachments found detached behind the daemon's back and made again.
    pub repairs: u64,
    /// Attach requests refused so far, and the latest reason.
    pub attach_failures: (u64, Option<String>),
    pub attachments: usize,
    /// Attachments running in another mode than requested (xdp_mode_degraded), described.
    pub degraded: Vec<String>,
    /// Interfaces with attachments that pass no traffic (down, no carrier), described.
    pub down: Vec<String>,
}

pub struct InterfacesState {
    loader: ActorRef<LoaderMsg>,
    children: BTreeMap<String, ActorRef<AttachMsg>>,
    /// interface → program id → attachment.
    attachments: BTreeMap<String, BTreeMap<String, Attachment>>,
    intensity: BTreeMap<String, RestartIntensity>,
    /// Interfaces given up on after too many restarts, with the reason.
    given_up: BTreeMap<String, String>,
    restarts: u64,
    /// Links found detached and made again.
    repairs: u64,
    attach_failures: (u64, Option<String>),
    make_intensity: fn() -> RestartIntensity,
    state_dir: std::path::PathBuf,
    fallback: bool,
    on_restart: OnRestart,
    /// Attachments whose link was lost and could not be made again yet, with why.
    lost: BTreeMap<(String, String), String>,
    /// Interfaces with attachments that are down or without carrier, with why.
    down: BTreeMap<String, String>,
    /// What the start's reconciliation of links found (stale link pins, foreign programs).
    reconciliation: Vec<crate::api::ReconcileStep>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

pub struct InterfaceSupervisor;

pub struct InterfacesArgs {
    pub loader: ActorRef<LoaderMsg>,
    /// Degrade a driver-mode attach the interface refuses to skb mode
    /// (`enable_dynamic_fallback`), instead of failing it.
    pub fallback: bool,
    pub intensity: fn() -> RestartIntensity,
    /// Where the attachments are saved (and restored from at start).
    pub state_dir: std::path::PathBuf,
    /// Told of every AttachActor restart, so that the count outlives this supervisor.
    pub on_restart: OnRestart,
}

/// The attachments as saved in the state dir.
const ATTACHMENTS_FILE: &str = "attachments.json";

impl Actor for InterfaceSupervisor {
    type Msg = InterfacesMsg;
    type State = InterfacesState;
    type Arguments = InterfacesArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: InterfacesArgs,
    ) -> Result<InterfacesState, ActorProcessingErr> {
        Ok(InterfacesState {
            loader: args.loader,
            children: BTreeMap::new(),
            attachments: BTreeMap::new(),
            intensity: BTreeMap::new(),
            given_up: BTreeMap::new(),
            restarts: 0,
            repairs: 0,
            attach_failures: (0, None),
            make_intensity: args.intensity,
            state_dir: args.state_dir,
            fallback: args.fallback,
            on_restart: args.on_restart,
            lost: BTreeMap::new(),
            down: BTreeMap::new(),
            reconciliation: Vec::new(),
            ticker: None,
        })
    }

    /// Attaches again what a previous daemon (or a crashed supervisor) had attached; the
    /// loader adopts the pinned links, so the programs never left the interfaces.
    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut InterfacesState,
    ) -> Result<(), ActorProcessingErr> {
        state.ticker = Some(myself.send_interval(std::time::Duration::from_secs(1), || {
            InterfacesMsg::RetryLost
        }));
        let path = state.state_dir.join(ATTACHMENTS_FILE);
        let saved: Vec<Attachment> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(file = %path.display(), error = %e, "saved attachments unreadable; starting with none");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        };
        for a in saved {
            match state
                .attach(&myself, &a.program_id, &a.interface, Some(a.mode), false)
                .await
            {
                Ok(_) => {
                    info!(program_id = %a.program_id, interface = %a.interface, "attachment restored")
                }
                Err(e) => {
                    warn!(program_id = %a.program_id, interface = %a.interface, error = %e, "cannot restore the attachment");
                    state.given_up.insert(
                        a.interface.clone(),
                        format!("restoring {} after a restart failed: {e}", a.program_id),
                    );
                    state.reconciliation.push(crate::sys::reconciled(
                        "failed",
                        format!(
                            "{} on {}: could not be attached again ({e})",
                            a.program_id, a.interface
                        ),
                    ));
                }
            }
        }
        state.save();
        state.reconcile_links().await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: InterfacesMsg,
        state: &mut InterfacesState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            InterfacesMsg::Attach {
                program_id,
                interface,
                mode,
                force,
                reply,
            } => {
                let result = state
                    .attach(&myself, &program_id, &interface, mode, force)
                    .await;
                if let Err(e) = &result {
                    state.attach_failures.0 += 1;
                    state.attach_failures.1 =
                        Some(format!("attaching {program_id} to {interface} failed: {e}"));
                }
                let _ = reply.send(result);
            }
            InterfacesMsg::Detach {
                program_id,
                interface,
                reply,
            } => {
                let result = state.detach(&program_id, &interface).await;
                let _ = reply.send(result);
            }
            InterfacesMsg::DetachProgram { program_id, reply } => {
                let interfaces: Vec<String> = state
                    .attachments
                    .iter()
                    .filter(|(_, by_prog)| by_prog.contains_key(&program_id))
                    .map(|(i, _)| i.clone())
                    .collect();
                let mut detached = Vec::new();
                for interface in interfaces {
                    if let Ok(a) = state.detach(&program_id, &interface).await {
                        detached.push(a);
                    }
                }
                let _ = reply.send(detached);
            }
            InterfacesMsg::DetachAll { reply } => {
                let pairs: Vec<(String, String)> = state
                    .attachments
                    .iter()
                    .flat_map(|(i, by_prog)| by_prog.keys().map(move |p| (p.clone(), i.clone())))
                    .collect();
                for (program_id, interface) in pairs {
                    let _ = state.detach(&program_id, &interface).await;
                }
                let _ = reply.send(());
            }
            InterfacesMsg::List { reply } => {
                let _ = reply.send(state.all_attachments());
            }
            InterfacesMsg::Verify { reply } => {
                let all = state.all_attachments();
                let mut problems = state.given_up.clone();
                for ((interface, _), why) in &state.lost {
                    problems.insert(interface.clone(), why.clone());
                }
                let mut report = SupervisionReport {
                    problems,
                    restarts: state.restarts,
                    repairs: state.repairs,
                    attach_failures: state.attach_failures.clone(),
                    attachments: all.len(),
                    degraded: all
                        .iter()
                        .filter(|a| a.mode != a.requested_mode)
                        .map(|a| {
                            format!(
                                "{} on {} runs in {} mode: {} mode was requested and the interface refused it (xdp_mode_degraded)",
                                a.program_id, a.interface, a.mode, a.requested_mode
                            )
                        })
                        .collect(),
                    down: state
                        .down
                        .iter()
                        .filter(|(i, _)| state.attachments.get(*i).is_some_and(|m| !m.is_empty()))
                        .map(|(_, why)| why.clone())
                        .collect(),
                };
                for (interface, child) in &state.children {
                    if state
                        .attachments
                        .get(interface)
                        .is_none_or(|m| m.is_empty())
                    {
                        continue;
                    }
                    let what = format!("AttachActor[{interface}]");
                    let verdict = ask(child, &what, |reply| AttachMsg::Verify { reply })
                        .await
                        .unwrap_or_else(|e| Err(e.message));
                    if let Err(why) = verdict {
                        report.problems.entry(interface.clone()).or_insert(why);
                    }
                }
                let _ = reply.send(report);
            }
            InterfacesMsg::LinkLost {
                interface,
                program_id,
                why,
            } => {
                let Some(attachment) = state
                    .attachments
                    .get_mut(&interface)
                    .and_then(|m| m.remove(&program_id))
                else {
                    return Ok(());
                };
                warn!(%interface, %program_id, %why, "attaching again");
                state.repairs += 1;
                let mode = Some(attachment.requested_mode);
                if let Err(e) = state
                    .attach(&myself, &program_id, &interface, mode, false)
                    .await
                {
                    let waiting = format!("{why}; waiting to attach {program_id} again ({e})");
                    warn!(%interface, %program_id, "{waiting}");
                    state
                        .lost
                        .insert((interface.clone(), program_id.clone()), waiting);
                    state
                        .attachments
                        .entry(interface)
                        .or_default()
                        .insert(program_id, attachment);
                    state.save();
                }
            }
            InterfacesMsg::Degrade {
                program_id,
                interface,
                why,
                reply,
            } => {
                let result = state
                    .switch_mode(&myself, &program_id, &interface, AttachMode::Skb)
                    .await
                    .and_then(|outcome| {
                        outcome.map_err(|refused| {
                            ApiError::new(
                                ErrorKind::Unsupported,
                                format!("{interface} refused skb mode ({refused}); {program_id} stays in driver mode"),
                            )
                        })
                    });
                if result.is_ok() {
                    warn!(%program_id, %interface, %why, "degraded to skb mode");
                }
                let _ = reply.send(result.map(|_| ()));
            }
            InterfacesMsg::ProbeUpgrade {
                program_id,
                interface,
                reply,
            } => {
                let _ = reply.send(state.probe_upgrade(&myself, &program_id, &interface).await);
            }
            InterfacesMsg::Reconciliation { reply } => {
                let _ = reply.send(state.reconciliation.clone());
            }
            InterfacesMsg::LinksChanged => {
                for child in state.children.values() {
                    let _ = child.cast(AttachMsg::Check);
                }
                if !state.lost.is_empty() {
                    let _ = myself.cast(InterfacesMsg::RetryLost);
                }
            }
            InterfacesMsg::LinkState { interface, down } => match down {
                Some(why) => {
                    warn!(%interface, %why, "interface down");
                    state.down.insert(interface, why);
                }
                None => {
                    if state.down.remove(&interface).is_some() {
                        info!(%interface, "interface up again");
                    }
                }
            },
            InterfacesMsg::RetryLost => {
                let lost: Vec<(String, String)> = state.lost.keys().cloned().collect();
                for (interface, program_id) in lost {
                    if !crate::sys::interface_exists(&interface) {
                        continue;
                    }
                    let mode = state
                        .attachments
                        .get_mut(&interface)
                        .and_then(|m| m.remove(&program_id))
                        .map(|a| a.requested_mode);
                    match state
                        .attach(&myself, &program_id, &interface, mode, false)
                        .await
                    {
                        Ok(_) => {
                            info!(%interface, %program_id, "interface is back: attached again");
                            state.lost.remove(&(interface, program_id));
                        }
                        Err(e) => {
                            warn!(%interface, %program_id, error = %e, "attaching again failed; will retry")
                        }
                    }
                }
            }
            InterfacesMsg::Crash => panic!("fault injected into InterfaceSupervisor"),
            InterfacesMsg::CrashChild { interface, reply } => {
                let result = match state.children.get(&interface) {
                    Some(child) => child
                        .cast(AttachMsg::Crash)
                        .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string())),
                    None => Err(ApiError::new(
                        ErrorKind::UnknownInterface,
                        format!("no AttachActor for {interface}: nothing is attached there"),
                    )),
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut InterfacesState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut InterfacesState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!("stopped: {}", reason.unwrap_or_else(|| "no reason".into())),
            ),
            _ => return Ok(()),
        };
        let Some(interface) = state.interface_of(&cell) else {
            return Ok(());
        };
        state.children.remove(&interface);
        let wanted = state
            .attachments
            .get(&interface)
            .cloned()
            .unwrap_or_default();
        if wanted.is_empty() {
            return Ok(());
        }
        error!(%interface, %why, "AttachActor died; its links are gone");
        let now = Instant::now();
        let make = state.make_intensity;
        let allowed = state
            .intensity
            .entry(interface.clone())
            .or_insert_with(make)
            .allow(now);
        if !allowed {
            let limit = state.intensity[&interface].describe();
            let reason = format!(
                "AttachActor[{interface}] died more than {limit}; gave up, its programs are detached (last: {why})"
            );
            error!(%interface, "{reason}");
            // The links are pinned: without their pins nothing holds them, so they detach.
            for program_id in wanted.keys() {
                let _ = state.loader.cast(LoaderMsg::ForgetLink {
                    program_id: program_id.clone(),
                    interface: interface.clone(),
                });
            }
            state.attachments.remove(&interface);
            state.given_up.insert(interface, reason);
            state.save();
            return Ok(());
        }
        state.restarts += 1;
        (state.on_restart)(&interface, &why);
        for (program_id, attachment) in wanted {
            // The links are pinned, so the programs stayed attached while the actor died; the
            // loader adopts the pins for the new actor. Should a pin be gone, the attach is
            // new, and the dead actor's handles may still be closing, so an interface that
            // looks busy is retried with exponential backoff.
            if let Some(m) = state.attachments.get_mut(&interface) {
                m.remove(&program_id);
            }
            let mut delay = REATTACH_FIRST_DELAY;
            loop {
                let result = state
                    .attach(
                        &myself,
                        &program_id,
                        &interface,
                        Some(attachment.requested_mode),
                        false,
                    )
                    .await;
                match result {
                    Ok(_) => {
                        info!(%interface, %program_id, "re-attached after AttachActor restart");
                        break;
                    }
                    Err(e) if e.kind == ErrorKind::Busy && delay <= REATTACH_MAX_DELAY => {
                        tokio::time::sleep(delay).await;
                        delay *= 2;
                    }
                    Err(e) => {
                        warn!(%interface, %program_id, error = %e, "re-attach failed");
                        state.given_up.insert(
                            interface.clone(),
                            format!("re-attaching {program_id} after a restart failed: {e}"),
                        );
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

impl InterfacesState {
    fn save(&self) {
        let json =
            serde_json::to_vec_pretty(&self.all_attachments()).expect("attachments serialize");
        if let Err(e) = crate::sys::write_atomically(&self.state_dir.join(ATTACHMENTS_FILE), &json)
        {
            warn!(state_dir = %self.state_dir.display(), error = %e, "saving the attachments failed; a restart will not restore them");
        }
    }

    fn all_attachments(&self) -> Vec<Attachment> {
        self.attachments
            .values()
            .flat_map(|m| m.values().cloned())
            .collect()
    }

    fn interface_of(&self, cell: &ActorCell) -> Option<String> {
        self.children
            .iter()
            .find(|(_, c)| c.get_id() == cell.get_id())
            .map(|(i, _)| i.clone())
    }

    async fn child(
        &mut self,
        myself: &ActorRef<InterfacesMsg>,
        interface: &str,
    ) -> Result<ActorRef<AttachMsg>, ApiError> {
        if let Some(c) = self.children.get(interface) {
            return Ok(c.clone());
        }
        let (child, _) = Actor::spawn_linked(
            None,
            AttachActor,
            AttachArgs {
                interface: interface.to_string(),
                supervisor: myself.clone(),
            },
            myself.get_cell(),
        )
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("starting AttachActor[{interface}]: {e}"),
            )
        })?;
        self.children.insert(interface.to_string(), child.clone());
        Ok(child)
    }

    /// Moves an attachment to `mode`, keeping its requested mode: its link comes off and one
    /// in `mode` goes on. When the interface refuses `mode`, the attachment goes back to its
    /// mode before and the answer is `Ok(Err(why))`.
    async fn switch_mode(
        &mut self,
        myself: &ActorRef<InterfacesMsg>,
        program_id: &str,
        interface: &str,
        mode: AttachMode,
    ) -> Result<Result<AttachMode, String>, ApiError> {
        let Some(before) = self
            .attachments
            .get(interface)
            .and_then(|m| m.get(program_id))
            .map(|a| a.mode)
        else {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("{program_id} is not attached to {interface}"),
            ));
        };
        let child = self.child(myself, interface).await?;
        let what = format!("AttachActor[{interface}]");
        ask(&child, &what, |reply| AttachMsg::Release {
            program_id: program_id.to_string(),
            reply,
        })
        .await?;
        let create = |mode: AttachMode| {
            ask(&self.loader, "LoaderActor", move |reply| {
                LoaderMsg::CreateLink {
                    program_id: program_id.to_string(),
                    interface: interface.to_string(),
                    mode: Some(mode),
                    reply,
                }
            })
        };
        let (link, outcome) = match create(mode).await? {
            Ok(link) => {
                let now = link.mode;
                (link, Ok(now))
            }
            Err(refused) => (create(before).await??, Err(refused.message)),
        };
        let actual = link.mode;
        ask(&child, &what, |reply| AttachMsg::Adopt {
            program_id: program_id.to_string(),
            link: link.link,
            reply,
        })
        .await?;
        if let Some(m) = self
            .attachments
            .get_mut(interface)
            .and_then(|m| m.get_mut(program_id))
        {
            m.mode = actual;
        }
        self.save();
        Ok(outcome)
    }

    /// Tries the requested mode again for a degraded attachment (`ProbeUpgrade`).
    async fn probe_upgrade(
        &mut self,
        myself: &ActorRef<InterfacesMsg>,
        program_id: &str,
        interface: &str,
    ) -> Result<Result<AttachMode, String>, ApiError> {
        let attachment = self
            .attachments
            .get(interface)
            .and_then(|m| m.get(program_id))
            .cloned();
        match attachment {
            Some(a) if a.mode == a.requested_mode => Ok(Ok(a.mode)),
            Some(a) => {
                let outcome = self
                    .switch_mode(myself, program_id, interface, a.requested_mode)
                    .await?;
                if outcome.is_ok() {
                    info!(%program_id, %interface, mode = %a.requested_mode, "the driver takes native XDP again: upgraded back from skb mode");
                }
                Ok(outcome)
            }
            None => Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("{program_id} is not attached to {interface}"),
            )),
        }
    }

    /// After restoring: removes link pins of ours that no saved attachment wants (they would
    /// keep a program attached), and notes XDP programs on any interface that are not ours.
    async fn reconcile_links(&mut self) {
        self.reconciliation.clear();
        let pins = ask(&self.loader, "LoaderActor", |reply| LoaderMsg::LinkPins {
            reply,
        })
        .await
        .unwrap_or_default();
        for (program_id, interface) in pins {
            let wanted = self
                .attachments
                .get(&interface)
                .is_some_and(|m| m.contains_key(&program_id));
            if !wanted {
                let _ = self.loader.cast(LoaderMsg::ForgetLink {
                    program_id: program_id.clone(),
                    interface: interface.clone(),
                });
                warn!(%program_id, %interface, "removed a pinned link no saved attachment wants");
                self.reconciliation.push(crate::sys::reconciled(
                    "removed",
                    format!("{program_id} on {interface}: pinned link with no saved attachment; removed, which detached it"),
                ));
            }
        }
        let ours: Vec<u32> = ask(&self.loader, "LoaderActor", |reply| LoaderMsg::List {
            reply,
        })
        .await
        .unwrap_or_default()
        .iter()
        .map(|p| p.kernel_id)
        .collect();
        for interface in crate::sys::interface_names() {
            if let Some((on, name)) = xdp_program_on(&interface)
                && !ours.contains(&on.prog_id)
            {
                self.reconciliation.push(crate::sys::reconciled(
                    "foreign",
                    format!("{}: left alone", describe_foreign(&interface, &on, &name)),
                ));
            }
        }
    }

    async fn attach(
        &mut self,
        myself: &ActorRef<InterfacesMsg>,
        program_id: &str,
        interface: &str,
        mode: Option<AttachMode>,
        force: bool,
    ) -> Result<Attachment, ApiError> {
        // An unknown program is the first thing to tell the user, before any interface state.
        let programs = ask(&self.loader, "LoaderActor", |reply| LoaderMsg::List {
            reply,
        })
        .await?;
        if !programs.iter().any(|p| p.id == program_id) {
            let loaded: Vec<&str> = programs.iter().map(|p| p.id.as_str()).collect();
            return Err(ApiError::new(
                ErrorKind::UnknownProgram,
                format!(
                    "no program with id {program_id:?} (loaded: {})",
                    if loaded.is_empty() {
                        "none".into()
                    } else {
                        loaded.join(", ")
                    }
                ),
            ));
        }
        if let Some(existing) = self
            .attachments
            .get(interface)
            .and_then(|m| m.values().next())
        {
            let message = if existing.program_id == program_id {
                format!(
                    "{program_id} is already attached to {interface} ({} mode)",
                    existing.mode
                )
            } else {
                format!(
                    "interface {interface} already has {} attached ({} mode); one XDP program per \
                     interface for now: detach it first (`x0tta6bl4-ebpf detach {} {interface}`)",
                    existing.program_id, existing.mode, existing.program_id
                )
            };
            return Err(ApiError::new(ErrorKind::Busy, message));
        }
        let requested = mode.unwrap_or_else(|| {
            programs
                .iter()
                .find(|p| p.id == program_id)
                .map(|p| p.default_mode)
                .unwrap_or(AttachMode::Drv)
        });
        let create = |mode: AttachMode| {
            ask(&self.loader, "LoaderActor", move |reply| {
                LoaderMsg::CreateLink {
                    program_id: program_id.to_string(),
                    interface: interface.to_string(),
                    mode: Some(mode),
                    reply,
                }
            })
        };
        // Another manager's XDP program holds the interface: name it, and replace it only when
        // asked to (`--force`).
        let first = match create(requested).await? {
            Err(e) if e.kind == ErrorKind::Busy => match xdp_program_on(interface) {
                Some((foreign, name)) if force => {
                    remove_foreign(interface, &foreign, &name)?;
                    warn!(%interface, foreign_program_id = foreign.prog_id, foreign_program = %name, mode = %foreign.mode, "replaced an XDP program this daemon did not manage (--force)");
                    create(requested).await?
                }
                Some((foreign, name)) => Err(ApiError::new(
                    ErrorKind::Busy,
                    format!(
                        "interface {}: it is not replaced; remove it yourself, or attach with --force to replace it",
                        describe_foreign(interface, &foreign, &name)
                    ),
                )),
                None => Err(e),
            },
            other => other,
        };
        let new_link = match first {
            // The driver refused native XDP: skb mode works on every interface. Degrade,
            // loudly: the log, `status`, `programs` and `health` all say so.
            Err(e)
                if self.fallback
                    && requested == AttachMode::Drv
                    && e.kind == ErrorKind::Unsupported =>
            {
                warn!(%program_id, %interface, refused = %e, "driver mode refused; degrading to skb mode (enable_dynamic_fallback)");
                create(AttachMode::Skb).await??
            }
            other => other?,
        };
        let attachment = Attachment {
            program_id: program_id.to_string(),
            interface: interface.to_string(),
            mode: new_link.mode,
            program_type: new_link.program_type,
            requested_mode: requested,
        };
        let child = self.child(myself, interface).await?;
        ask(&child, &format!("AttachActor[{interface}]"), |reply| {
            AttachMsg::Adopt {
                program_id: program_id.to_string(),
                link: new_link.link,
                reply,
            }
        })
        .await?;
        self.given_up.remove(interface);
        self.attachments
            .entry(interface.to_string())
            .or_default()
            .insert(program_id.to_string(), attachment.clone());
        self.save();
        Ok(attachment)
    }

    async fn detach(&mut self, program_id: &str, interface: &str) -> Result<Attachment, ApiError> {
        let Some(attachment) = self
            .attachments
            .get_mut(interface)
            .and_then(|m| m.remove(program_id))
        else {
            let here: Vec<String> = self
                .all_attachments()
                .iter()
                .map(|a| format!("{} on {}", a.program_id, a.interface))
                .collect();
            let here = if here.is_empty() {
                "nothing is attached".to_string()
            } else {
                format!("attached: {}", here.join(", "))
            };
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("{program_id} is not attached to {interface} ({here})"),
            ));
        };
        if let Some(child) = self.children.get(interface) {
            let what = format!("AttachActor[{interface}]");
            if let Err(e) = ask(child, &what, |reply| AttachMsg::Release {
                program_id: program_id.to_string(),
                reply,
            })
            .await
            {
                warn!(%interface, %program_id, error = %e, "release failed");
            }
        }
        self.save();
        Ok(attachment)
    }
}

/// `eth0 runs XDP program id 42 (xdp_pass, skb mode) that this daemon does not manage`.
fn describe_foreign(interface: &str, on: &crate::xdpnl::XdpOnLink, name: &str) -> String {
    format!(
        "{interface} runs XDP program id {} ({name}, {} mode) that this daemon does not manage",
        on.prog_id, on.mode
    )
}

/// The XDP program on `interface`, if any, and its name.
fn xdp_program_on(interface: &str) -> Option<(crate::xdpnl::XdpOnLink, String)> {
    let ifindex = nix::net::if_::if_nametoindex(interface).ok()?;
    let on = crate::xdpnl::xdp_of(ifindex).ok()??;
    let name = crate::xdpnl::program_name(on.prog_id).unwrap_or_else(|| "unnamed".into());
    Some((on, name))
}

/// Takes a foreign XDP program off `interface`: the netlink way for one attached the old way,
/// BPF_LINK_DETACH for one held by a bpf_link (which refuses the netlink way).
fn remove_foreign(
    interface: &str,
    foreign: &crate::xdpnl::XdpOnLink,
    name: &str,
) -> Result<(), ApiError> {
    let failed = |e: std::io::Error| {
        ApiError::new(
            ErrorKind::Busy,
            format!(
                "--force could not remove XDP program id {} ({name}) from {interface}: {e}; \
                 see `bpftool net show dev {interface}` and remove it by hand \
                 (`ip link set dev {interface} xdp off`, or `bpftool link detach id N` for a bpf_link)",
                foreign.prog_id
            ),
        )
    };
    let ifindex = nix::net::if_::if_nametoindex(interface).map_err(|e| failed(e.into()))?;
    match crate::xdpnl::detach_netlink(ifindex, foreign.mode) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            crate::xdpnl::detach_links(ifindex).map_err(failed)?;
        }
        Err(e) => return Err(failed(e)),
    }
    match crate::xdpnl::xdp_of(ifindex) {
        Ok(None) => Ok(()),
        Ok(Some(still)) => Err(failed(std::io::Error::other(format!(
            "program id {} is still attached",
            still.prog_id
        )))),
        Err(e) => Err(failed(e)),
    }
}
