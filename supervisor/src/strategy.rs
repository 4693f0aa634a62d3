//! A supervisor with Erlang/OTP's strategies on ractor's supervision events: ractor links
//! actors and reports their deaths (`SupervisionEvent`) but leaves restarting to us.
//! `ractor-supervisor` was evaluated and not used: it forces ractor's `async-trait` feature
//! and a ractor version of its own.
//!
//! - Strategies: `OneForOne` restarts the child that died; `OneForAll` restarts every child;
//!   `RestForOne` restarts the child and every child started after it (their order is the
//!   dependency order).
//! - Restart types: `Permanent` children are always restarted, `Transient` ones only when they
//!   fail (a panic), not when they stop normally, `Temporary` ones never.
//! - Intensity: more than `max_restarts` in `window` and the supervisor gives up: it stops its
//!   children and fails itself, which escalates to its own supervisor.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::restart::RestartIntensity;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    OneForOne,
    OneForAll,
    RestForOne,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Permanent,
    Transient,
    Temporary,
}

/// Starts a child linked to the supervisor cell it is given.
pub type StartFn = Arc<
    dyn Fn(ActorCell) -> Pin<Box<dyn Future<Output = Result<ActorCell, ActorProcessingErr>> + Send>>
        + Send
        + Sync,
>;

#[derive(Clone)]
pub struct ChildSpec {
    pub name: String,
    pub restart: Restart,
    pub start: StartFn,
}

pub struct SupervisorArgs {
    pub strategy: Strategy,
    pub max_restarts: usize,
    pub window: Duration,
    pub children: Vec<ChildSpec>,
}

/// A child as its supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildReport {
    pub name: String,
    pub running: bool,
    pub restarts: u64,
    pub last_failure: Option<String>,
}

pub enum SupervisorMsg {
    Children {
        reply: RpcReplyPort<Vec<ChildReport>>,
    },
}

struct Child {
    spec: ChildSpec,
    cell: Option<ActorCell>,
    restarts: u64,
    last_failure: Option<String>,
}

pub struct SupervisorState {
    strategy: Strategy,
    intensity: RestartIntensity,
    children: Vec<Child>,
}

pub struct StrategySupervisor;

impl Actor for StrategySupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            strategy: args.strategy,
            intensity: RestartIntensity::new(args.max_restarts, args.window),
            children: args
                .children
                .into_iter()
                .map(|spec| Child {
                    spec,
                    cell: None,
                    restarts: 0,
                    last_failure: None,
                })
                .collect(),
        };
        for i in 0..state.children.len() {
            state.start(i, &myself).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Children { reply } => {
                let _ = reply.send(
                    state
                        .children
                        .iter()
                        .map(|c| ChildReport {
                            name: c.spec.name.clone(),
                            running: c.cell.is_some(),
                            restarts: c.restarts,
                            last_failure: c.last_failure.clone(),
                        })
                        .collect(),
                );
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, failed, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, true, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                false,
                format!("stopped: {}", reason.unwrap_or_else(|| "normally".into())),
            ),
            _ => return Ok(()),
        };
        let Some(i) = state
            .children
            .iter()
            .position(|c| c.cell.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            return Ok(());
        };
        let child = &mut state.children[i];
        child.cell = None;
        child.last_failure = Some(why.clone());
        let restart = match child.spec.restart {
            Restart::Permanent => true,
            Restart::Transient => failed,
            Restart::Temporary => false,
        };
        if !restart {
            info!(child = %child.spec.name, %why, restart = ?child.spec.restart, "not restarted");
            return Ok(());
        }
        if !state.intensity.allow(Instant::now()) {
            let reason = format!(
                "{} died ({why}) more often than {}: giving up and escalating",
                child.spec.name,
                state.intensity.describe()
            );
            error!("{reason}");
            state.stop_all(&myself);
            return Err(reason.into());
        }
        // Which children restart: the dead one, and with it all (one_for_all) or those
        // started after it (rest_for_one), stopped first in reverse start order.
        let from = match state.strategy {
            Strategy::OneForOne => i,
            Strategy::OneForAll => 0,
            Strategy::RestForOne => i,
        };
        let to = match state.strategy {
            Strategy::OneForOne => i + 1,
            Strategy::OneForAll | Strategy::RestForOne => state.children.len(),
        };
        for j in (from..to).rev() {
            if let Some(c) = state.children[j].cell.take() {
                c.unlink(myself.get_cell());
                c.stop(Some(format!(
                    "{} restarts ({:?})",
                    state.children[i].spec.name, state.strategy
                )));
            }
        }
        error!(child = %state.children[i].spec.name, %why, strategy = ?state.strategy, "restarting");
        for j in from..to {
            let c = &state.children[j];
            // Temporary children that were stopped with the others are not brought back.
            if j != i && c.spec.restart == Restart::Temporary {
                continue;
            }
            state.children[j].restarts += 1;
            state.start(j, &myself).await?;
        }
        Ok(())
    }
}

impl SupervisorState {
    async fn start(
        &mut self,
        i: usize,
        myself: &ActorRef<SupervisorMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let child = &mut self.children[i];
        // A name frees only once the old actor has fully stopped.
        let mut tries = 0;
        let cell = loop {
            match (child.spec.start)(myself.get_cell()).await {
                Ok(cell) => break cell,
                Err(e) if tries < 20 => {
                    tries += 1;
                    tracing::debug!(child = %child.spec.name, error = %e, "start failed; retrying");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        };
        child.cell = Some(cell);
        Ok(())
    }

    fn stop_all(&mut self, myself: &ActorRef<SupervisorMsg>) {
        for c in self.children.iter_mut().rev() {
            if let Some(cell) = c.cell.take() {
                cell.unlink(myself.get_cell());
                cell.stop(Some("supervisor gave up".into()));
            }
        }
    }
}
