//! RootSupervisor: the top of the supervision tree. Its children, in start order, are the
//! LoaderActor, the InterfaceSupervisor (rest_for_one between these two: if the loader dies,
//! the programs it held are gone, so the interfaces restart too; if the InterfaceSupervisor
//! dies, only it restarts) and the FlowActor, which depends on neither (it finds the loader
//! by name and reads pinned maps) and restarts alone. After a restart of the first two the
//! startup plan (auto-load) runs again.

use std::time::Instant;

use actors::api::{ApiError, AttachMode, ErrorKind};
use actors::fallback::{FallbackActor, FallbackArgs, FallbackMsg};
use actors::flows::{FlowActor, FlowArgs, FlowMsg};
use actors::interfaces::{InterfaceSupervisor, InterfacesArgs, InterfacesMsg};
use actors::loader::{FirewallSettings, LoaderActor, LoaderArgs, LoaderMsg};
use actors::restart::RestartIntensity;
use actors::rpc::ask;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info, warn};

/// Registry names of the root's children, so the control socket finds the live ones.
pub const LOADER: &str = "x0tta6bl4.loader";
pub const INTERFACES: &str = "x0tta6bl4.interfaces";
pub const FLOWS: &str = "x0tta6bl4.flows";
pub const FALLBACK: &str = "x0tta6bl4.fallback";

/// What the daemon does at start (and again after its children restart).
#[derive(Debug, Clone)]
pub struct StartupPlan {
    pub programs_dir: std::path::PathBuf,
    pub state_dir: std::path::PathBuf,
    pub pin_root: std::path::PathBuf,
    /// `enable_dynamic_fallback`: degrade refused driver-mode attaches to skb.
    pub fallback: bool,
    /// Load the TCP probe (`tcp_state`) at start (with `enable_flow_observability`).
    pub tcp_probe: bool,
    /// The FallbackActor's probe interval (with `fallback`).
    pub fallback_probe_interval: std::time::Duration,
    /// The FlowActor's read interval and idle timeout.
    pub flow_poll_interval: std::time::Duration,
    pub flow_idle_timeout: std::time::Duration,
    pub firewall: FirewallSettings,
    /// Load `xdp_firewall` and attach it here (`auto_load_programs` + `interface`).
    pub auto_attach: Option<(String, AttachMode)>,
}

pub enum RootMsg {
    /// Startup problems and restart count, for `health`.
    Report { reply: RpcReplyPort<RootReport> },
    /// Runs the startup plan (sent to itself after start and after restarts).
    RunPlan,
    /// The InterfaceSupervisor restarted an AttachActor.
    AttachActorRestarted { interface: String, why: String },
}

#[derive(Debug, Clone, Default)]
pub struct RootReport {
    pub startup_error: Option<String>,
    /// Restarts of the root's children (LoaderActor, InterfaceSupervisor).
    pub restarts: u64,
    /// Restarts of AttachActors, counted here so that they survive their supervisor's own.
    pub attach_restarts: u64,
    pub gave_up: Option<String>,
    /// Per actor (`LoaderActor`, `AttachActor[eth0]`, …): restarts and the latest failure.
    pub actors: std::collections::BTreeMap<String, ActorRecord>,
}

#[derive(Debug, Clone, Default)]
pub struct ActorRecord {
    pub restarts: u64,
    /// When (RFC 3339) and why it last died.
    pub last_failure: Option<(String, String)>,
}

impl RootReport {
    fn record(&mut self, actor: &str, why: &str) {
        let r = self.actors.entry(actor.to_string()).or_default();
        r.restarts += 1;
        r.last_failure = Some((actors::sys::now_rfc3339(), why.to_string()));
    }
}

pub struct RootState {
    plan: StartupPlan,
    loader: Option<ActorRef<LoaderMsg>>,
    interfaces: Option<ActorRef<InterfacesMsg>>,
    flows: Option<ActorRef<FlowMsg>>,
    fallback: Option<ActorRef<FallbackMsg>>,
    report: RootReport,
    intensity: RestartIntensity,
}

pub struct RootSupervisor;

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = StartupPlan;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        plan: StartupPlan,
    ) -> Result<RootState, ActorProcessingErr> {
        let mut state = RootState {
            plan,
            loader: None,
            interfaces: None,
            flows: None,
            fallback: None,
            report: RootReport::default(),
            intensity: RestartIntensity::default(),
        };
        state.start_children(&myself).await?;
        state.start_flows(&myself).await?;
        state.start_fallback(&myself).await?;
        Ok(state)
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        myself.cast(RootMsg::RunPlan)?;
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Report { reply } => {
                let _ = reply.send(state.report.clone());
            }
            RootMsg::AttachActorRestarted { interface, why } => {
                state.report.attach_restarts += 1;
                state
                    .report
                    .record(&format!("AttachActor[{interface}]"), &why);
            }
            RootMsg::RunPlan => {
                state.report.startup_error = state.run_plan().await.err().map(|e| e.message);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("stopped: {}", reason.unwrap_or_default()))
            }
            _ => return Ok(()),
        };
        let is_loader = state
            .loader
            .as_ref()
            .is_some_and(|l| l.get_id() == cell.get_id());
        let is_interfaces = state
            .interfaces
            .as_ref()
            .is_some_and(|i| i.get_id() == cell.get_id());
        let is_flows = state
            .flows
            .as_ref()
            .is_some_and(|f| f.get_id() == cell.get_id());
        let is_fallback = state
            .fallback
            .as_ref()
            .is_some_and(|f| f.get_id() == cell.get_id());
        if !is_loader && !is_interfaces && !is_flows && !is_fallback {
            return Ok(());
        }
        let who = if is_loader {
            "LoaderActor"
        } else if is_interfaces {
            "InterfaceSupervisor"
        } else if is_flows {
            "FlowActor"
        } else {
            "FallbackActor"
        };
        error!(actor = who, %why, "child of the root supervisor died");
        if !state.intensity.allow(Instant::now()) {
            let reason = format!(
                "{who} died more than {}; the daemon stops restarting it (last: {why})",
                state.intensity.describe()
            );
            error!("{reason}");
            state.report.gave_up = Some(reason);
            return Ok(());
        }
        state.report.restarts += 1;
        state.report.record(who, &why);
        if is_flows {
            state.flows = None;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            state.start_flows(&myself).await?;
            return Ok(());
        }
        if is_fallback {
            state.fallback = None;
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            state.start_fallback(&myself).await?;
            return Ok(());
        }
        // rest_for_one: the loader comes first, so its death takes the interfaces down too.
        if is_loader {
            if let Some(i) = state.interfaces.take() {
                i.unlink(myself.get_cell());
                i.stop(Some("LoaderActor restarted".into()));
            }
            state.loader = None;
            // The registry frees a name only once the old actor has fully stopped.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            state.start_children(&myself).await?;
        } else {
            state.interfaces = None;
            state.start_interfaces(&myself).await?;
        }
        myself.cast(RootMsg::RunPlan)?;
        Ok(())
    }
}

impl RootState {
    async fn start_children(
        &mut self,
        myself: &ActorRef<RootMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let (loader, _) = Actor::spawn_linked(
            Some(LOADER.into()),
            LoaderActor,
            LoaderArgs {
                programs_dir: self.plan.programs_dir.clone(),
                firewall: self.plan.firewall.clone(),
                state_dir: self.plan.state_dir.clone(),
                pin_root: self.plan.pin_root.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        self.loader = Some(loader);
        self.start_interfaces(myself).await
    }

    async fn start_fallback(
        &mut self,
        myself: &ActorRef<RootMsg>,
    ) -> Result<(), ActorProcessingErr> {
        if !self.plan.fallback {
            return Ok(());
        }
        let (fallback, _) = Actor::spawn_linked(
            Some(FALLBACK.into()),
            FallbackActor,
            FallbackArgs {
                interfaces: INTERFACES.into(),
                interval: self.plan.fallback_probe_interval,
            },
            myself.get_cell(),
        )
        .await?;
        self.fallback = Some(fallback);
        Ok(())
    }

    async fn start_flows(&mut self, myself: &ActorRef<RootMsg>) -> Result<(), ActorProcessingErr> {
        let (flows, _) = Actor::spawn_linked(
            Some(FLOWS.into()),
            FlowActor,
            FlowArgs {
                loader: LOADER.into(),
                interval: self.plan.flow_poll_interval,
                idle_timeout: self.plan.flow_idle_timeout,
            },
            myself.get_cell(),
        )
        .await?;
        self.flows = Some(flows);
        Ok(())
    }

    async fn start_interfaces(
        &mut self,
        myself: &ActorRef<RootMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let loader = self.loader.clone().ok_or("the loader is not running")?;
        let (interfaces, _) = Actor::spawn_linked(
            Some(INTERFACES.into()),
            InterfaceSupervisor,
            InterfacesArgs {
                loader,
                intensity: RestartIntensity::default,
                state_dir: self.plan.state_dir.clone(),
                fallback: self.plan.fallback,
                on_restart: {
                    let root = myself.clone();
                    std::sync::Arc::new(move |interface: &str, why: &str| {
                        let _ = root.cast(RootMsg::AttachActorRestarted {
                            interface: interface.to_string(),
                            why: why.to_string(),
                        });
                    })
                },
            },
            myself.get_cell(),
        )
        .await?;
        self.interfaces = Some(interfaces);
        Ok(())
    }

    async fn run_plan(&mut self) -> Result<(), ApiError> {
        if self.plan.tcp_probe
            && let Some(loader) = &self.loader
        {
            let loaded = ask(loader, "LoaderActor", |reply| LoaderMsg::List { reply }).await?;
            if !loaded.iter().any(|p| p.name == "tcp_state") {
                match ask(loader, "LoaderActor", |reply| LoaderMsg::Load {
                    name: "tcp_state".into(),
                    mode: None,
                    reply,
                })
                .await?
                {
                    Ok(info) => {
                        info!(program_id = %info.id, "TCP probe loaded on sock/inet_sock_set_state")
                    }
                    Err(e) => {
                        warn!(error = %e, "the TCP probe could not be loaded; tcp shows nothing")
                    }
                }
            }
        }
        let Some((interface, mode)) = self.plan.auto_attach.clone() else {
            return Ok(());
        };
        let (Some(loader), Some(interfaces)) = (&self.loader, &self.interfaces) else {
            return Ok(());
        };
        let already = ask(interfaces, "InterfaceSupervisor", |reply| {
            InterfacesMsg::List { reply }
        })
        .await?;
        if already.iter().any(|a| a.interface == interface) {
            return Ok(());
        }
        let result = async {
            let info = ask(loader, "LoaderActor", |reply| LoaderMsg::Load {
                name: "xdp_firewall".into(),
                mode: Some(mode),
                reply,
            })
            .await??;
            let attached = ask(interfaces, "InterfaceSupervisor", |reply| {
                InterfacesMsg::Attach {
                    program_id: info.id.clone(),
                    interface: interface.clone(),
                    mode: Some(mode),
                    force: false,
                    reply,
                }
            })
            .await?;
            if attached.is_err() {
                // Do not leave an unattached firewall behind: a later run of the plan loads
                // a fresh one.
                let _ = ask(loader, "LoaderActor", |reply| LoaderMsg::Unload {
                    program_id: info.id.clone(),
                    reply,
                })
                .await;
            }
            attached
        }
        .await;
        match &result {
            Ok(a) => {
                info!(program_id = %a.program_id, %interface, mode = %a.mode, "auto-loaded xdp_firewall")
            }
            Err(e) => warn!(%interface, error = %e, "auto-loading xdp_firewall failed"),
        }
        result.map(|_| ()).map_err(|e| {
            let hint = if e.kind == ErrorKind::Unsupported {
                " (for the attach at start, set attach_mode = \"skb\" under [programs.xdp_firewall] in the config)"
            } else {
                ""
            };
            ApiError::new(
                e.kind,
                format!("auto-loading xdp_firewall on {interface} failed: {e}{hint}"),
            )
        })
    }
}
