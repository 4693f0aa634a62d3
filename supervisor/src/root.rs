//! RootSupervisor: the top of the supervision tree. Its children, in start order, are the
//! LoaderActor, the InterfaceSupervisor, the FlowActor and the FallbackActor, supervised
//! rest_for_one by the strategy engine (`strategy::Children`): a child's death restarts it and
//! every child started after it, since those depend on it (the InterfaceSupervisor holds the
//! loader's programs in its links). After the loader or the InterfaceSupervisor restarts,
//! the startup plan (auto-load) runs again. More than 5 deaths in 30 s and the root gives up:
//! it fails, and the daemon exits with an error for its service manager to restart it (the
//! programs stay attached on their pinned links meanwhile).

use actors::api::{ApiError, AttachMode, ErrorKind};
use std::sync::Arc;
use std::time::Duration;

use actors::fallback::{FallbackActor, FallbackArgs};
use actors::flows::{FlowActor, FlowArgs};
use actors::interfaces::{InterfaceSupervisor, InterfacesArgs, InterfacesMsg};
use actors::loader::{FirewallSettings, LoaderActor, LoaderArgs, LoaderMsg};
use actors::restart::RestartIntensity;
use actors::rpc::ask;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{info, warn};

use crate::strategy::{ChildSpec, Children, Strategy};

/// Registry names of the root's children, so the control socket finds the live ones.
pub const LOADER: &str = "x0tta6bl4.loader";
pub const INTERFACES: &str = "x0tta6bl4.interfaces";
pub const FLOWS: &str = "x0tta6bl4.flows";
pub const FALLBACK: &str = "x0tta6bl4.fallback";
/// The supervisor of the actors beside the kernel-facing tree (alerts, MAPE-K, metrics).
pub const SERVICES: &str = "x0tta6bl4.services";

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
    /// XDP_ABORTED a second above which a drv attachment degrades; 0: not watched (and
    /// `xdp_exceptions` not loaded).
    pub fallback_abort_rate: f64,
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
    pub gave_up: Option<String>,
    /// Per actor (`LoaderActor`, `AttachActor[eth0]`, …): restarts and the latest failure.
    /// AttachActors are counted here too, so that their count survives their supervisor's
    /// own restarts.
    pub actors: std::collections::BTreeMap<String, ActorRecord>,
}

#[derive(Debug, Clone, Default)]
pub struct ActorRecord {
    pub restarts: u64,
    /// When (RFC 3339) and why it last died.
    pub last_failure: Option<(String, String)>,
}

impl RootReport {
    /// Restarts of every actor of the tree so far.
    pub fn restarts(&self) -> u64 {
        self.actors.values().map(|r| r.restarts).sum()
    }

    fn record(&mut self, actor: &str, why: &str) {
        let r = self.actors.entry(actor.to_string()).or_default();
        r.restarts += 1;
        r.last_failure = Some((actors::sys::now_rfc3339(), why.to_string()));
    }
}

pub struct RootState {
    plan: StartupPlan,
    children: Children,
    report: RootReport,
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
        let specs = child_specs(&plan, &myself);
        let mut state = RootState {
            children: Children::new(Strategy::RestForOne, 5, Duration::from_secs(30), specs),
            plan,
            report: RootReport::default(),
        };
        state.children.start_all(&myself.get_cell()).await?;
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
        match state.children.on_event(&myself.get_cell(), event).await {
            Ok(Some(r)) => {
                state.report.record(&r.child, &r.why);
                if r.restarted
                    .iter()
                    .any(|c| c == "LoaderActor" || c == "InterfaceSupervisor")
                {
                    myself.cast(RootMsg::RunPlan)?;
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(reason) => {
                state.report.gave_up = Some(reason.clone());
                Err(reason.into())
            }
        }
    }
}

/// The root's children in start (and dependency) order.
fn child_specs(plan: &StartupPlan, root: &ActorRef<RootMsg>) -> Vec<ChildSpec> {
    let loader_args = LoaderArgs {
        programs_dir: plan.programs_dir.clone(),
        firewall: plan.firewall.clone(),
        state_dir: plan.state_dir.clone(),
        pin_root: plan.pin_root.clone(),
    };
    let (state_dir, fallback, root) = (plan.state_dir.clone(), plan.fallback, root.clone());
    let (interval, idle_timeout) = (plan.flow_poll_interval, plan.flow_idle_timeout);
    let mut specs = vec![
        ChildSpec::permanent(
            "LoaderActor",
            LOADER,
            || LoaderActor,
            move || Ok(loader_args.clone()),
        ),
        ChildSpec::permanent(
            "InterfaceSupervisor",
            INTERFACES,
            || InterfaceSupervisor,
            move || {
                let loader = ActorRef::<LoaderMsg>::where_is(LOADER)
                    .ok_or("the LoaderActor is not running")?;
                let root = root.clone();
                let on_restart: actors::interfaces::OnRestart =
                    Arc::new(move |interface: &str, why: &str| {
                        let _ = root.cast(RootMsg::AttachActorRestarted {
                            interface: interface.to_string(),
                            why: why.to_string(),
                        });
                    });
                Ok(InterfacesArgs {
                    loader,
                    intensity: RestartIntensity::default,
                    state_dir: state_dir.clone(),
                    fallback,
                    on_restart,
                })
            },
        ),
        ChildSpec::permanent(
            "FlowActor",
            FLOWS,
            || FlowActor,
            move || {
                Ok(FlowArgs {
                    loader: LOADER.into(),
                    interval,
                    idle_timeout,
                })
            },
        ),
    ];
    if plan.fallback {
        let (interval, abort_rate) = (plan.fallback_probe_interval, plan.fallback_abort_rate);
        specs.push(ChildSpec::permanent(
            "FallbackActor",
            FALLBACK,
            || FallbackActor,
            move || {
                Ok(FallbackArgs {
                    interfaces: INTERFACES.into(),
                    loader: LOADER.into(),
                    interval,
                    abort_rate,
                })
            },
        ));
    }
    specs
}

impl RootState {
    async fn run_plan(&mut self) -> Result<(), ApiError> {
        // The built-in tracepoint programs the config asks for.
        let probes = [
            (
                self.plan.tcp_probe,
                "tcp_state",
                "TCP probe loaded on sock/inet_sock_set_state",
            ),
            (
                self.plan.fallback && self.plan.fallback_abort_rate > 0.0,
                "xdp_exceptions",
                "XDP_ABORTED watch loaded on xdp/xdp_exception",
            ),
        ];
        if let Some(loader) = &ActorRef::<LoaderMsg>::where_is(LOADER) {
            let loaded = ask(loader, "LoaderActor", |reply| LoaderMsg::List { reply }).await?;
            for (wanted, name, what) in probes {
                if !wanted || loaded.iter().any(|p| p.name == name) {
                    continue;
                }
                match ask(loader, "LoaderActor", |reply| LoaderMsg::Load {
                    name: name.into(),
                    mode: None,
                    reply,
                })
                .await?
                {
                    Ok(info) => info!(program_id = %info.id, "{what}"),
                    Err(e) => warn!(program = name, error = %e, "could not be loaded"),
                }
            }
        }
        let Some((interface, mode)) = self.plan.auto_attach.clone() else {
            return Ok(());
        };
        let (Some(loader), Some(interfaces)) = (
            &ActorRef::<LoaderMsg>::where_is(LOADER),
            &ActorRef::<InterfacesMsg>::where_is(INTERFACES),
        ) else {
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
