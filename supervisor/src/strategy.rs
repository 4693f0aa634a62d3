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

impl ChildSpec {
    /// A permanent child registered as `registered`: the actor `actor` makes, spawned with
    /// the arguments `args` makes at each (re)start. `args` may refuse (a dependency not running yet); the
    /// start is then retried like any other.
    pub fn permanent<A>(
        name: &str,
        registered: &'static str,
        actor: fn() -> A,
        args: impl Fn() -> Result<A::Arguments, ActorProcessingErr> + Send + Sync + 'static,
    ) -> ChildSpec
    where
        A: Actor,
    {
        ChildSpec {
            name: name.to_string(),
            restart: Restart::Permanent,
            start: Arc::new(move |sup: ActorCell| {
                let (actor, args) = (actor(), args());
                Box::pin(async move {
                    let (a, _) =
                        Actor::spawn_linked(Some(registered.into()), actor, args?, sup).await?;
                    Ok(a.get_cell())
                })
            }),
        }
    }
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

/// What a death led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restarted {
    /// The child that died, and why.
    pub child: String,
    pub why: String,
    /// Every child started again (the dead one first, then in start order).
    pub restarted: Vec<String>,
}

/// The strategy engine: a supervisor's children, started in order, restarted on their deaths
/// by the strategy, restart types and intensity. `StrategySupervisor` is an actor around it;
/// the daemon's RootSupervisor embeds one too.
pub struct Children {
    strategy: Strategy,
    intensity: RestartIntensity,
    children: Vec<Child>,
}

impl Children {
    pub fn new(
        strategy: Strategy,
        max_restarts: usize,
        window: Duration,
        specs: Vec<ChildSpec>,
    ) -> Self {
        Children {
            strategy,
            intensity: RestartIntensity::new(max_restarts, window),
            children: specs
                .into_iter()
                .map(|spec| Child {
                    spec,
                    cell: None,
                    restarts: 0,
                    last_failure: None,
                })
                .collect(),
        }
    }

    /// Starts every child not running, in order.
    pub async fn start_all(&mut self, supervisor: &ActorCell) -> Result<(), ActorProcessingErr> {
        for i in 0..self.children.len() {
            if self.children[i].cell.is_none() {
                self.start(i, supervisor).await?;
            }
        }
        Ok(())
    }

    pub fn report(&self) -> Vec<ChildReport> {
        self.children
            .iter()
            .map(|c| ChildReport {
                name: c.spec.name.clone(),
                running: c.cell.is_some(),
                restarts: c.restarts,
                last_failure: c.last_failure.clone(),
            })
            .collect()
    }

    /// Handles a supervision event. `Ok(None)`: not about a child, or a child not to be
    /// restarted (transient after a normal stop, temporary). `Err(why)`: the intensity was
    /// exceeded; every child has been stopped and the supervisor must give up (escalate).
    pub async fn on_event(
        &mut self,
        supervisor: &ActorCell,
        event: SupervisionEvent,
    ) -> Result<Option<Restarted>, String> {
        let (cell, failed, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, true, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                false,
                format!("stopped: {}", reason.unwrap_or_else(|| "normally".into())),
            ),
            _ => return Ok(None),
        };
        let Some(i) = self
            .children
            .iter()
            .position(|c| c.cell.as_ref().is_some_and(|c| c.get_id() == cell.get_id()))
        else {
            return Ok(None);
        };
        let child = &mut self.children[i];
        child.cell = None;
        child.last_failure = Some(why.clone());
        let restart = match child.spec.restart {
            Restart::Permanent => true,
            Restart::Transient => failed,
            Restart::Temporary => false,
        };
        if !restart {
            info!(child = %child.spec.name, %why, restart = ?child.spec.restart, "not restarted");
            return Ok(None);
        }
        let name = child.spec.name.clone();
        if !self.intensity.allow(Instant::now()) {
            let reason = format!(
                "{name} died ({why}) more often than {}: giving up and escalating",
                self.intensity.describe()
            );
            error!("{reason}");
            self.stop_range(0, self.children.len(), supervisor, "supervisor gave up");
            return Err(reason);
        }
        // The dead child, and with it all (one_for_all) or those started after it
        // (rest_for_one), stopped first in reverse start order.
        let (from, to) = match self.strategy {
            Strategy::OneForOne => (i, i + 1),
            Strategy::OneForAll => (0, self.children.len()),
            Strategy::RestForOne => (i, self.children.len()),
        };
        self.stop_range(
            from,
            to,
            supervisor,
            &format!("{name} restarts ({:?})", self.strategy),
        );
        error!(child = %name, %why, strategy = ?self.strategy, "restarting");
        self.children[i].restarts += 1;
        let mut restarted = vec![name.clone()];
        self.start(i, supervisor)
            .await
            .map_err(|e| format!("restarting {name}: {e}"))?;
        for j in from..to {
            // Temporary children stopped with the others are not brought back.
            if j == i || self.children[j].spec.restart == Restart::Temporary {
                continue;
            }
            self.start(j, supervisor)
                .await
                .map_err(|e| format!("restarting {}: {e}", self.children[j].spec.name))?;
            restarted.push(self.children[j].spec.name.clone());
        }
        Ok(Some(Restarted {
            child: name,
            why,
            restarted,
        }))
    }

    async fn start(&mut self, i: usize, supervisor: &ActorCell) -> Result<(), ActorProcessingErr> {
        let child = &mut self.children[i];
        // A name frees only once the old actor has fully stopped.
        let mut tries = 0;
        let cell = loop {
            match (child.spec.start)(supervisor.clone()).await {
                Ok(cell) => break cell,
                Err(e) if tries < 50 => {
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

    fn stop_range(&mut self, from: usize, to: usize, supervisor: &ActorCell, why: &str) {
        for c in self.children[from..to].iter_mut().rev() {
            if let Some(cell) = c.cell.take() {
                cell.unlink(supervisor.clone());
                cell.stop(Some(why.to_string()));
            }
        }
    }
}

pub struct StrategySupervisor;

impl Actor for StrategySupervisor {
    type Msg = SupervisorMsg;
    type State = Children;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<Children, ActorProcessingErr> {
        let mut children =
            Children::new(args.strategy, args.max_restarts, args.window, args.children);
        children.start_all(&myself.get_cell()).await?;
        Ok(children)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        children: &mut Children,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Children { reply } => {
                let _ = reply.send(children.report());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        children: &mut Children,
    ) -> Result<(), ActorProcessingErr> {
        children
            .on_event(&myself.get_cell(), event)
            .await
            .map(|_| ())
            .map_err(ActorProcessingErr::from)
    }
}
