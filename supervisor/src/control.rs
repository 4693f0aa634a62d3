//! The control socket: frames in, requests to the actors, frames out. A client's mistake
//! (garbage, a wrong version, an oversized frame, an impossible request) gets an error
//! response; it never stops the daemon or disturbs other clients.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actors::api::{
    self, ActorNode, ApiError, Attachment, Check, DebugRequest, Direction, ErrorKind, Health,
    HealthStatus, HookTarget, InterfaceAttachment, MapekReport, PacketCounters, ProgramStats,
    ProgramType, Request, Response, RulesRequest, Status,
};
use actors::flows::FlowMsg;
use actors::interfaces::InterfacesMsg;
use actors::loader::LoaderMsg;
use actors::rpc::ask;
use actors::shaper::{SHAPER, ShaperMsg};
use ractor::ActorRef;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::alerts::{ALERTS, AlertsMsg};
use crate::mapek::{MAPEK, MapekMsg};
use crate::metrics::{METRICS, MetricsMsg};
use crate::root::{FALLBACK, FLOWS, INTERFACES, LOADER, RootMsg, SERVICES};
use crate::strategy::SupervisorMsg;

/// A client that starts a frame must finish it within this time.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Sets the daemon's log filter; `None` restores the one it started with. Returns the filter
/// now in force, or why the given one is not a filter.
pub type SetLogFilter =
    std::sync::Arc<dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync>;

#[derive(Clone)]
pub struct Control {
    pub started: Instant,
    pub root: ActorRef<RootMsg>,
    /// Sets the log filter at run time (`debug --enable --log-level`); `None` restores the
    /// filter the daemon started with.
    pub set_log_filter: SetLogFilter,
    /// `--enable-fault-injection`: `debug crash` is allowed.
    pub fault_injection: bool,
    /// `metrics add|list|remove`: metrics read from the maps of loaded programs.
    pub custom_metrics: crate::custom_metrics::CustomMetrics,
}

impl Control {
    /// Accepts clients until the listener is dropped; each client runs on its own task.
    pub async fn serve(self, listener: UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let control = self.clone();
                    tokio::spawn(async move { control.client(stream).await });
                }
                Err(e) => {
                    warn!(error = %e, "accepting a control client failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn client(&self, mut stream: UnixStream) {
        loop {
            let mut prefix = [0u8; 4];
            if stream.read_exact(&mut prefix).await.is_err() {
                return; // the client closed the connection
            }
            let len = match api::frame_len(prefix, api::MAX_FRAME_LEN) {
                Ok(len) => len,
                Err(e) => {
                    // The stream cannot be resynchronised after a bad length: answer, close.
                    let _ = send(&mut stream, &protocol_error(e)).await;
                    return;
                }
            };
            let mut body = vec![0u8; len];
            match tokio::time::timeout(READ_TIMEOUT, stream.read_exact(&mut body)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    let e = ApiError::new(
                        ErrorKind::Protocol,
                        format!(
                            "the frame was announced as {len} bytes but did not arrive within {}s",
                            READ_TIMEOUT.as_secs()
                        ),
                    );
                    let _ = send(&mut stream, &Response::Error(e)).await;
                    return;
                }
            }
            let response = match api::decode_body::<Request>(&body) {
                Ok(request) => {
                    debug!(?request, "request");
                    self.dispatch(request).await
                }
                Err(e) => protocol_error(e),
            };
            if send(&mut stream, &response).await.is_err() {
                return;
            }
        }
    }

    pub async fn dispatch(&self, request: Request) -> Response {
        match self.try_dispatch(request).await {
            Ok(r) => r,
            Err(e) => Response::Error(e),
        }
    }

    async fn try_dispatch(&self, request: Request) -> Result<Response, ApiError> {
        let (loader, interfaces) = children()?;
        Ok(match request {
            Request::Status => Response::Status(self.status(&loader, &interfaces).await?),
            Request::Load { name, mode } => Response::Loaded(
                ask(&loader, "LoaderActor", |reply| LoaderMsg::Load {
                    name,
                    mode,
                    reply,
                })
                .await??,
            ),
            Request::Attach {
                program_id,
                interface,
                mode,
                force,
                cgroup,
                tracepoint,
                deny,
                direction,
                sample_every,
            } => {
                let (program_type, target) = hook_of(
                    &loader,
                    &program_id,
                    interface.clone(),
                    cgroup,
                    tracepoint,
                    direction,
                )
                .await?;
                match target {
                    Some(target) => {
                        if mode.is_some() || force {
                            return Err(ApiError::new(
                                ErrorKind::InvalidRequest,
                                format!(
                                    "--mode and --force are for XDP programs; {program_id} is a {}",
                                    program_type.unwrap_or(ProgramType::Other)
                                ),
                            ));
                        }
                        Response::Hooked(
                            ask(&loader, "LoaderActor", |reply| LoaderMsg::AttachHook {
                                program_id,
                                target,
                                deny,
                                sample_every: sample_every.unwrap_or(0),
                                reply,
                            })
                            .await??,
                        )
                    }
                    None => {
                        if deny || sample_every.is_some() || direction.is_some() {
                            return Err(ApiError::new(
                                ErrorKind::InvalidRequest,
                                format!(
                                    "--deny, --sample and --direction are not for XDP programs like {program_id}"
                                ),
                            ));
                        }
                        Response::Attached(
                            ask(&interfaces, "InterfaceSupervisor", |reply| {
                                InterfacesMsg::Attach {
                                    program_id,
                                    interface,
                                    mode,
                                    force,
                                    reply,
                                }
                            })
                            .await??,
                        )
                    }
                }
            }
            Request::Detach {
                program_id,
                interface,
                cgroup,
                tracepoint,
                direction,
            } => {
                let (_, target) = hook_of(
                    &loader,
                    &program_id,
                    interface.clone(),
                    cgroup,
                    tracepoint,
                    direction,
                )
                .await?;
                match target {
                    Some(target) => Response::Unhooked(
                        ask(&loader, "LoaderActor", |reply| LoaderMsg::DetachHook {
                            program_id,
                            target,
                            reply,
                        })
                        .await??,
                    ),
                    None => Response::Detached(
                        ask(&interfaces, "InterfaceSupervisor", |reply| {
                            InterfacesMsg::Detach {
                                program_id,
                                interface,
                                reply,
                            }
                        })
                        .await??,
                    ),
                }
            }
            Request::Routes(change) => Response::Routes(
                ask(&loader, "LoaderActor", |reply| LoaderMsg::Routes {
                    change,
                    reply,
                })
                .await??,
            ),
            Request::Hooks => Response::Hooks(
                ask(&loader, "LoaderActor", |reply| LoaderMsg::HookStats {
                    reply,
                })
                .await?,
            ),
            Request::Unload { program_id } => {
                // Check the id first so that an unknown id changes nothing.
                let programs =
                    ask(&loader, "LoaderActor", |reply| LoaderMsg::List { reply }).await?;
                if programs.iter().any(|p| p.id == program_id) {
                    ask(&interfaces, "InterfaceSupervisor", |reply| {
                        InterfacesMsg::DetachProgram {
                            program_id: program_id.clone(),
                            reply,
                        }
                    })
                    .await?;
                }
                ask(&loader, "LoaderActor", |reply| LoaderMsg::Unload {
                    program_id: program_id.clone(),
                    reply,
                })
                .await??;
                Response::Unloaded { program_id }
            }
            Request::Programs => {
                let attachments = attachments(&interfaces).await?;
                let mut programs =
                    ask(&loader, "LoaderActor", |reply| LoaderMsg::List { reply }).await?;
                for p in &mut programs {
                    p.attachments = attachments
                        .iter()
                        .filter(|a| a.program_id == p.id)
                        .map(|a| InterfaceAttachment {
                            interface: a.interface.clone(),
                            mode: a.mode,
                            requested_mode: a.requested_mode,
                        })
                        .collect();
                }
                Response::Programs(programs)
            }
            Request::Stats => Response::Stats(stats(&loader, &interfaces).await?),
            Request::Health => Response::Health(self.health(&loader, &interfaces).await),
            Request::Rules(RulesRequest::List) => Response::Rules(
                ask(&loader, "LoaderActor", |reply| LoaderMsg::Rules { reply }).await?,
            ),
            Request::Rules(RulesRequest::Explain(query)) => Response::Explained(
                ask(&loader, "LoaderActor", |reply| LoaderMsg::Explain {
                    query,
                    reply,
                })
                .await??,
            ),
            Request::Debug(DebugRequest::LogLevel(level)) => {
                let applied = (self.set_log_filter)(level.as_deref())
                    .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, e))?;
                Response::Done(format!("log filter is now {applied:?}"))
            }
            Request::Debug(DebugRequest::Crash(actor)) => {
                if !self.fault_injection {
                    return Err(ApiError::new(
                        ErrorKind::PermissionDenied,
                        "fault injection is off: start x0tta6bl4-ebpfd with --enable-fault-injection to use `debug crash`",
                    ));
                }
                self.crash(&actor, &loader, &interfaces).await?;
                Response::Done(format!(
                    "{actor} was made to panic; its supervisor restarts it"
                ))
            }
            Request::Metrics => Response::Metrics(Box::pin(crate::metrics::snapshot(self)).await?),
            Request::Tcp => {
                Response::Tcp(ask(&loader, "LoaderActor", |reply| LoaderMsg::Tcp { reply }).await?)
            }
            Request::Alerts => Response::Alerts(match ActorRef::<AlertsMsg>::where_is(ALERTS) {
                Some(alerts) => {
                    ask(&alerts, "AlertsActor", |reply| AlertsMsg::List { reply }).await?
                }
                None => Vec::new(),
            }),
            Request::Supervisor => Response::Supervisor(self.tree(&interfaces).await?),
            Request::Shaper(request) => Response::Shaper(
                ask(&shaper_actor()?, "ShaperActor", |reply| {
                    ShaperMsg::Request { request, reply }
                })
                .await??,
            ),
            Request::Mapek => Response::Mapek(match ActorRef::<MapekMsg>::where_is(MAPEK) {
                Some(m) => ask(&m, "MapekActor", |reply| MapekMsg::Report { reply }).await?,
                None => MapekReport {
                    enabled: false,
                    interval_seconds: 0.0,
                    cycles: 0,
                    symptoms: Vec::new(),
                    history: Vec::new(),
                },
            }),
            Request::CustomMetrics(request) => {
                Response::CustomMetrics(self.custom_metrics.handle(request, &loader).await?)
            }
            Request::Flows(query) => Response::Flows(
                ask(&flow_actor()?, "FlowActor", |reply| FlowMsg::Query {
                    query,
                    reply,
                })
                .await?,
            ),
            Request::Rules(change) => Response::Rules(
                ask(&loader, "LoaderActor", |reply| LoaderMsg::ChangeRules {
                    change,
                    reply,
                })
                .await??,
            ),
        })
    }

    async fn status(
        &self,
        loader: &ActorRef<LoaderMsg>,
        interfaces: &ActorRef<InterfacesMsg>,
    ) -> Result<Status, ApiError> {
        let programs = ask(loader, "LoaderActor", |reply| LoaderMsg::List { reply }).await?;
        let attachments = attachments(interfaces).await?;
        let mut total = PacketCounters::default();
        for row in stats(loader, interfaces).await? {
            if let Some(c) = row.counters {
                total.processed_packets += c.processed_packets;
                total.passed_packets += c.passed_packets;
                total.dropped_packets += c.dropped_packets;
            }
        }
        let mut reconciliation = ask(loader, "LoaderActor", |reply| LoaderMsg::Reconciliation {
            reply,
        })
        .await?;
        reconciliation.extend(
            ask(interfaces, "InterfaceSupervisor", |reply| {
                InterfacesMsg::Reconciliation { reply }
            })
            .await?,
        );
        Ok(Status {
            reconciliation,
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.started.elapsed().as_secs(),
            programs_loaded: programs.len(),
            attachments,
            processed_packets: total.processed_packets,
            passed_packets: total.passed_packets,
            blocked_packets: total.dropped_packets,
        })
    }

    async fn crash(
        &self,
        actor: &str,
        loader: &ActorRef<LoaderMsg>,
        interfaces: &ActorRef<InterfacesMsg>,
    ) -> Result<(), ApiError> {
        let unreachable = |e: String| ApiError::new(ErrorKind::Internal, e);
        match actor {
            "loader" => loader
                .cast(LoaderMsg::Crash)
                .map_err(|e| unreachable(e.to_string())),
            "interfaces" => interfaces
                .cast(InterfacesMsg::Crash)
                .map_err(|e| unreachable(e.to_string())),
            "flows" => flow_actor()?
                .cast(FlowMsg::Crash)
                .map_err(|e| unreachable(e.to_string())),
            "shaper" => shaper_actor()?
                .cast(ShaperMsg::Crash)
                .map_err(|e| unreachable(e.to_string())),
            "metrics" => ActorRef::<MetricsMsg>::where_is(METRICS)
                .ok_or_else(|| unreachable("the MetricsActor is not running".into()))?
                .cast(MetricsMsg::Crash)
                .map_err(|e| unreachable(e.to_string())),
            other => match other.strip_prefix("attach:") {
                Some(interface) => {
                    ask(interfaces, "InterfaceSupervisor", |reply| {
                        InterfacesMsg::CrashChild {
                            interface: interface.to_string(),
                            reply,
                        }
                    })
                    .await?
                }
                None => Err(ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!(
                        "no actor {other:?}: use loader, interfaces, flows, metrics, shaper or attach:IFACE"
                    ),
                )),
            },
        }
    }

    /// The supervision tree as it is now, with what the root recorded of each actor's deaths.
    async fn tree(&self, interfaces: &ActorRef<InterfacesMsg>) -> Result<Vec<ActorNode>, ApiError> {
        let report = ask(&self.root, "RootSupervisor", |reply| RootMsg::Report {
            reply,
        })
        .await?;
        let attached = attachments(interfaces).await?;
        let node = |name: &str, depth: u8, role: &str, running: Option<bool>| {
            let record = report.actors.get(name);
            ActorNode {
                name: name.to_string(),
                depth,
                role: role.to_string(),
                state: match running {
                    Some(true) => "running".into(),
                    Some(false) => "restarting".into(),
                    None => "off".into(),
                },
                restarts: record.map_or(0, |r| r.restarts),
                last_failure_at: record.and_then(|r| r.last_failure.as_ref().map(|f| f.0.clone())),
                last_failure: record.and_then(|r| r.last_failure.as_ref().map(|f| f.1.clone())),
            }
        };
        let registered = |name: &str| ractor::registry::where_is(name).is_some();
        let mut root = node(
            "RootSupervisor",
            0,
            "supervisor: rest_for_one over LoaderActor → InterfaceSupervisor → FlowActor → FallbackActor",
            Some(true),
        );
        if let Some(why) = &report.gave_up {
            root.state = format!("gave up: {why}");
        }
        let mut nodes = vec![root];
        nodes.push(node(
            "LoaderActor",
            1,
            "worker: programs, maps, pins",
            Some(registered(LOADER)),
        ));
        nodes.push(node(
            "InterfaceSupervisor",
            1,
            "supervisor: one_for_one, an AttachActor per interface",
            Some(registered(INTERFACES)),
        ));
        let interfaces_seen: std::collections::BTreeSet<&str> =
            attached.iter().map(|a| a.interface.as_str()).collect();
        for interface in interfaces_seen {
            nodes.push(node(
                &format!("AttachActor[{interface}]"),
                2,
                "worker: the interface's links, liveness",
                Some(true),
            ));
        }
        nodes.push(node(
            "FlowActor",
            1,
            "worker: flow tables",
            Some(registered(FLOWS)),
        ));
        nodes.push(node(
            "FallbackActor",
            1,
            "worker: probes degraded attachments for their requested mode",
            registered(FALLBACK).then_some(true),
        ));
        // The second tree: alerts, MAPE-K, metrics and the shaper.
        nodes.push(ActorNode {
            name: "ServicesSupervisor".into(),
            depth: 0,
            role: "supervisor: one_for_one over AlertsActor, MapekActor, MetricsActor, ShaperActor"
                .into(),
            state: if registered(SERVICES) {
                "running"
            } else {
                "stopped"
            }
            .into(),
            restarts: 0,
            last_failure_at: None,
            last_failure: None,
        });
        let services = match ActorRef::<SupervisorMsg>::where_is(SERVICES) {
            Some(s) => ask(&s, "ServicesSupervisor", |reply| SupervisorMsg::Children {
                reply,
            })
            .await
            .unwrap_or_default(),
            None => Vec::new(),
        };
        let roles = [
            (
                "AlertsActor",
                "worker: the alerts, every monitoring interval",
            ),
            (
                "MapekActor",
                "worker: the MAPE-K loop, every monitoring interval",
            ),
            (
                "MetricsActor",
                "worker: the HTTP endpoint (/metrics, /health)",
            ),
            (
                "ShaperActor",
                "worker: the TC shaper's qdiscs and classifier links",
            ),
        ];
        for (name, role) in roles {
            let child = services.iter().find(|c| c.name == name);
            nodes.push(ActorNode {
                name: name.into(),
                depth: 1,
                role: role.into(),
                state: match child {
                    Some(c) if c.running => "running".into(),
                    Some(_) => "restarting".into(),
                    None => "off".into(),
                },
                restarts: child.map_or(0, |c| c.restarts),
                last_failure_at: None,
                last_failure: child.and_then(|c| c.last_failure.clone()),
            });
        }
        Ok(nodes)
    }

    /// `health`, also when the actors are between restarts (then unhealthy, saying so).
    pub async fn health_report(&self) -> Health {
        match children() {
            Ok((loader, interfaces)) => self.health(&loader, &interfaces).await,
            Err(e) => {
                let mut checks = BTreeMap::new();
                checks.insert(
                    "supervisor".to_string(),
                    Check {
                        status: HealthStatus::Unhealthy,
                        message: e.message,
                    },
                );
                Health::from_checks(checks)
            }
        }
    }

    /// Restarts so far by actor (`AttachActor[eth0]`, …); the root's children are always
    /// there, at 0 before their first restart.
    pub async fn restarts_by_actor(&self) -> BTreeMap<String, u64> {
        let mut by_actor: BTreeMap<String, u64> =
            ["LoaderActor", "InterfaceSupervisor", "FlowActor"]
                .iter()
                .map(|a| (a.to_string(), 0))
                .collect();
        if let Ok(report) = ask(&self.root, "RootSupervisor", |reply| RootMsg::Report {
            reply,
        })
        .await
        {
            for (actor, record) in report.actors {
                by_actor.insert(actor, record.restarts);
            }
        }
        by_actor
    }

    /// The flow tables' bookkeeping as of the FlowActor's latest timed read (at most its
    /// interval old): for the actors that ask every monitoring interval. Empty while the
    /// FlowActor restarts.
    pub async fn flow_tables(&self) -> Vec<api::FlowTable> {
        match flow_actor() {
            Ok(flows) => ask(&flows, "FlowActor", |reply| FlowMsg::Tables { reply })
                .await
                .map(|list| list.tables)
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Restarts so far, of every actor of the tree (AttachActors included).
    pub async fn restarts(&self) -> u64 {
        ask(&self.root, "RootSupervisor", |reply| RootMsg::Report {
            reply,
        })
        .await
        .map(|r| r.restarts())
        .unwrap_or(0)
    }

    async fn health(
        &self,
        loader: &ActorRef<LoaderMsg>,
        interfaces: &ActorRef<InterfacesMsg>,
    ) -> Health {
        let mut checks = BTreeMap::new();
        let check = |status, message: String| Check { status, message };
        let report = ask(&self.root, "RootSupervisor", |reply| RootMsg::Report {
            reply,
        })
        .await
        .unwrap_or_default();
        let programs = ask(loader, "LoaderActor", |reply| LoaderMsg::List { reply }).await;
        checks.insert(
            "programs".to_string(),
            match (&programs, &report.startup_error) {
                (Err(e), _) => check(HealthStatus::Unhealthy, e.message.clone()),
                (Ok(_), Some(e)) => check(HealthStatus::Unhealthy, e.clone()),
                (Ok(p), None) => check(HealthStatus::Healthy, format!("{} loaded", p.len())),
            },
        );
        let verified = ask(interfaces, "InterfaceSupervisor", |reply| {
            InterfacesMsg::Verify { reply }
        })
        .await;
        checks.insert(
            "attachments".to_string(),
            match &verified {
                Err(e) => check(HealthStatus::Unhealthy, e.message.clone()),
                Ok(r) if !r.problems.is_empty() => check(
                    HealthStatus::Unhealthy,
                    r.problems
                        .iter()
                        .map(|(i, why)| format!("{i}: {why}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                Ok(r) if !r.degraded.is_empty() || !r.down.is_empty() => check(
                    HealthStatus::Degraded,
                    r.degraded
                        .iter()
                        .chain(&r.down)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                Ok(r) => check(
                    HealthStatus::Healthy,
                    format!("{} attached and present", r.attachments),
                ),
            },
        );
        let restarts = report.restarts();
        checks.insert(
            "supervisor".to_string(),
            match &report.gave_up {
                Some(why) => check(HealthStatus::Unhealthy, why.clone()),
                None if restarts > 0 => check(
                    HealthStatus::Degraded,
                    format!("{restarts} actor restart(s) since start; see the log for why"),
                ),
                None => check(HealthStatus::Healthy, "no actor restarts".into()),
            },
        );
        let metrics_problem = match ActorRef::<MetricsMsg>::where_is(METRICS) {
            Some(m) => ask(&m, "MetricsActor", |reply| MetricsMsg::Problem { reply })
                .await
                .unwrap_or_default(),
            None => None,
        };
        if let Some(problem) = &metrics_problem {
            checks.insert(
                "metrics".to_string(),
                check(HealthStatus::Degraded, problem.clone()),
            );
        }
        // The shaper shows only when something is shaped.
        if let Ok(shaper) = shaper_actor()
            && let Ok(Ok(list)) = ask(&shaper, "ShaperActor", |reply| ShaperMsg::Request {
                request: api::ShaperRequest::Show,
                reply,
            })
            .await
            && !list.is_empty()
        {
            let failing: Vec<String> = list
                .iter()
                .filter(|s| s.state != "active")
                .map(|s| format!("{}: {}", s.interface, s.state))
                .collect();
            checks.insert(
                "shaper".to_string(),
                if failing.is_empty() {
                    check(
                        HealthStatus::Healthy,
                        format!("{} interface(s) shaped", list.len()),
                    )
                } else {
                    check(HealthStatus::Degraded, failing.join("; "))
                },
            );
        }
        Health::from_checks(checks)
    }
}

fn children() -> Result<(ActorRef<LoaderMsg>, ActorRef<InterfacesMsg>), ApiError> {
    let loader = ActorRef::<LoaderMsg>::where_is(LOADER);
    let interfaces = ActorRef::<InterfacesMsg>::where_is(INTERFACES);
    match (loader, interfaces) {
        (Some(l), Some(i)) => Ok((l, i)),
        _ => Err(ApiError::new(
            ErrorKind::Internal,
            "the daemon's actors are restarting; try again in a moment",
        )),
    }
}

fn flow_actor() -> Result<ActorRef<FlowMsg>, ApiError> {
    ActorRef::<FlowMsg>::where_is(FLOWS).ok_or_else(|| {
        ApiError::new(
            ErrorKind::Internal,
            "the FlowActor is restarting; try again in a moment",
        )
    })
}

/// The type of loaded program `id`; `None` when no such program is loaded (the XDP path
/// then reports it).
/// The program's type and, for the kinds that are not XDP, where `attach`/`detach` point it
/// (`hook_target`).
async fn hook_of(
    loader: &ActorRef<LoaderMsg>,
    program_id: &str,
    interface: String,
    cgroup: Option<String>,
    tracepoint: Option<String>,
    direction: Option<Direction>,
) -> Result<(Option<ProgramType>, Option<HookTarget>), ApiError> {
    let programs = ask(loader, "LoaderActor", |reply| LoaderMsg::List { reply }).await?;
    let program_type = programs
        .iter()
        .find(|p| p.id == program_id)
        .map(|p| p.program_type);
    let target = hook_target(
        program_type,
        program_id,
        interface,
        cgroup,
        tracepoint,
        direction,
    )?;
    Ok((program_type, target))
}

/// Where a program of `program_type` attaches, for the kinds that are not XDP (`None`: XDP,
/// or an unknown program).
fn hook_target(
    program_type: Option<ProgramType>,
    program_id: &str,
    interface: String,
    cgroup: Option<String>,
    tracepoint: Option<String>,
    direction: Option<Direction>,
) -> Result<Option<HookTarget>, ApiError> {
    let needs_interface = |what: &str| {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!(
                "{program_id} is a {what} program: name an interface (`attach {program_id} IFACE`), not --cgroup"
            ),
        )
    };
    Ok(match program_type {
        Some(ProgramType::CgroupSkb) => match cgroup {
            Some(path) => Some(HookTarget::Cgroup { path }),
            None => {
                return Err(ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!(
                        "{program_id} is a cgroup_skb program: name its cgroup with --cgroup PATH (a cgroup v2 directory, e.g. under /sys/fs/cgroup/unified)"
                    ),
                ));
            }
        },
        Some(ProgramType::Tc) if cgroup.is_none() => Some(HookTarget::Tc {
            interface,
            direction: direction.unwrap_or(Direction::Ingress),
        }),
        Some(ProgramType::SocketFilter) if cgroup.is_none() => {
            Some(HookTarget::Socket { interface })
        }
        Some(ProgramType::Tc) => return Err(needs_interface("tc")),
        Some(ProgramType::SocketFilter) => return Err(needs_interface("socket_filter")),
        Some(ProgramType::Tracepoint) => {
            match tracepoint.as_deref().and_then(|t| t.split_once('/')) {
                Some((category, name)) if !category.is_empty() && !name.is_empty() => {
                    Some(HookTarget::Tracepoint {
                        category: category.to_string(),
                        name: name.to_string(),
                    })
                }
                _ => {
                    return Err(ApiError::new(
                        ErrorKind::InvalidRequest,
                        format!(
                            "{program_id} is a tracepoint program: name its tracepoint with --tracepoint CATEGORY/NAME (e.g. sock/inet_sock_set_state)"
                        ),
                    ));
                }
            }
        }
        _ if tracepoint.is_some() => {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("--tracepoint is for tracepoint programs; {program_id} is not one"),
            ));
        }
        _ if cgroup.is_some() => {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!("--cgroup is for cgroup_skb programs; {program_id} is not one"),
            ));
        }
        _ => None,
    })
}

fn shaper_actor() -> Result<ActorRef<ShaperMsg>, ApiError> {
    ActorRef::<ShaperMsg>::where_is(SHAPER).ok_or_else(|| {
        ApiError::new(
            ErrorKind::Internal,
            "the ShaperActor is not running (restarting, or it failed to start: see `x0tta6bl4-ebpf supervisor`); try again in a moment",
        )
    })
}

async fn attachments(interfaces: &ActorRef<InterfacesMsg>) -> Result<Vec<Attachment>, ApiError> {
    ask(interfaces, "InterfaceSupervisor", |reply| {
        InterfacesMsg::List { reply }
    })
    .await
}

async fn stats(
    loader: &ActorRef<LoaderMsg>,
    interfaces: &ActorRef<InterfacesMsg>,
) -> Result<Vec<ProgramStats>, ApiError> {
    let attachments = attachments(interfaces).await?;
    let counters = ask(loader, "LoaderActor", |reply| LoaderMsg::Counters { reply }).await?;
    Ok(counters
        .into_iter()
        .map(|(program_id, counters)| ProgramStats {
            interfaces: attachments
                .iter()
                .filter(|a| a.program_id == program_id)
                .map(|a| a.interface.clone())
                .collect(),
            program_id,
            counters,
        })
        .collect())
}

fn protocol_error(e: api::FrameError) -> Response {
    Response::Error(ApiError::new(
        ErrorKind::Protocol,
        format!("bad request frame: {e}"),
    ))
}

async fn send(stream: &mut UnixStream, response: &Response) -> std::io::Result<()> {
    let frame = api::encode_response(response).unwrap_or_else(|e| {
        let fallback = Response::Error(ApiError::new(
            ErrorKind::Internal,
            format!("response too large: {e}"),
        ));
        api::encode_response(&fallback).expect("a short error always encodes")
    });
    stream.write_all(&frame).await
}
