//! `x0tta6bl4-ebpfd`: loads and attaches the x0tta6bl4 eBPF programs on this node and serves
//! the operator CLI on a Unix socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use actors::interfaces::InterfacesMsg;
use actors::loader::LoaderMsg;
use actors::rpc::ask;
use anyhow::Context as _;
use clap::Parser;
use ractor::{Actor, ActorRef};
use supervisor::config::{Config, DEFAULT_CONFIG_PATH};
use supervisor::control::{Control, SetLogFilter};
use supervisor::host;
use supervisor::root::{INTERFACES, LOADER, RootMsg, RootSupervisor, SERVICES, StartupPlan};
use supervisor::strategy::{ChildSpec, Strategy, StrategySupervisor, SupervisorArgs};
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(
    name = "x0tta6bl4-ebpfd",
    version,
    about = "x0tta6bl4 eBPF node daemon"
)]
struct Args {
    /// TOML config file [default: /etc/x0tta6bl4/ebpf.toml when it exists]
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the config, print the result and exit.
    #[arg(long)]
    check_config: bool,
    /// Overrides `interface`.
    #[arg(long)]
    interface: Option<String>,
    /// Overrides `socket_path`.
    #[arg(long = "socket")]
    socket_path: Option<PathBuf>,
    /// Overrides `pin_root`.
    #[arg(long)]
    pin_root: Option<PathBuf>,
    /// Overrides `state_dir`.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Overrides `log_file`.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// Overrides `programs_dir`.
    #[arg(long)]
    programs_dir: Option<PathBuf>,
    /// Overrides `auto_load_programs`.
    #[arg(long)]
    auto_load_programs: Option<bool>,
    /// Accept `debug crash ACTOR` (for the chaos harness and for trying self-healing).
    #[arg(long)]
    enable_fault_injection: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("x0tta6bl4-ebpfd: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!(
            "config OK: interface={:?} auto_load_programs={} socket_path={} pin_root={}",
            config.interface,
            config.auto_load_programs,
            config.socket_path.display(),
            config.pin_root.display()
        );
        return ExitCode::SUCCESS;
    }
    let (_log_guard, set_log_filter) = init_logging(&config);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("x0tta6bl4-ebpfd: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, set_log_filter, args.enable_fault_injection)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("x0tta6bl4-ebpfd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None if std::path::Path::new(DEFAULT_CONFIG_PATH).exists() => {
            Config::load(std::path::Path::new(DEFAULT_CONFIG_PATH))?
        }
        None => Config::default(),
    };
    if let Some(v) = &args.interface {
        supervisor::config::check_interface_name(v)
            .map_err(|m| anyhow::anyhow!("--interface: {m}"))?;
        config.interface = v.clone();
    }
    if let Some(v) = &args.socket_path {
        config.socket_path = v.clone();
    }
    if let Some(v) = &args.pin_root {
        config.pin_root = v.clone();
    }
    if let Some(v) = &args.state_dir {
        config.state_dir = v.clone();
    }
    if let Some(v) = &args.log_file {
        config.log_file = v.clone();
    }
    if let Some(v) = &args.programs_dir {
        config.programs_dir = v.clone();
    }
    if let Some(v) = args.auto_load_programs {
        config.auto_load_programs = v;
    }
    Ok(config)
}

/// Logs go to stderr and to `log_file`, which is rotated by size (`log_max_bytes`, keeping
/// `log_max_files` as `ebpf.log.1` …, newest first). A log file that cannot be opened is
/// reported and skipped: the daemon still runs. Returns a way to change the filter at run time.
fn init_logging(
    config: &Config,
) -> (
    Option<tracing_appender::non_blocking::WorkerGuard>,
    SetLogFilter,
) {
    use file_rotate::{ContentLimit, FileRotate, compression::Compression, suffix::AppendCount};
    use tracing_subscriber::{EnvFilter, fmt, prelude::*, reload};
    let initial = std::env::var("X0TTA6BL4_LOG").unwrap_or_else(|_| "info".to_string());
    let filter = EnvFilter::try_new(&initial).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let path = &config.log_file;
    // FileRotate panics on a directory it cannot create and drops writes to a file it cannot
    // open, so both are tried here first, where a failure can be reported.
    let usable = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        })
        .map_err(|e| e.to_string());
    let (file_layer, guard, problem) = match usable {
        Ok(_) => {
            let rotating = FileRotate::new(
                path,
                AppendCount::new(config.log_max_files as usize),
                ContentLimit::BytesSurpassed(
                    usize::try_from(config.log_max_bytes).unwrap_or(usize::MAX),
                ),
                Compression::None,
                None,
            );
            let (writer, guard) = tracing_appender::non_blocking(rotating);
            (
                Some(fmt::layer().with_ansi(false).with_writer(writer)),
                Some(guard),
                None,
            )
        }
        Err(e) => (None, None, Some(e)),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_writer(std::io::stderr))
        .with(file_layer)
        .init();
    if let Some(e) = problem {
        tracing::warn!(log_file = %config.log_file.display(), error = %e, "logging to stderr only");
    }
    let set: SetLogFilter = std::sync::Arc::new(move |level: Option<&str>| {
        let wanted = match level {
            // The original design writes `--log-level DEBUG`.
            Some(l)
                if ["trace", "debug", "info", "warn", "error"]
                    .contains(&l.to_ascii_lowercase().as_str()) =>
            {
                l.to_ascii_lowercase()
            }
            Some(l) => l.to_string(),
            None => initial.clone(),
        };
        let parsed = EnvFilter::try_new(&wanted).map_err(|e| {
            format!("{wanted:?} is not a log filter ({e}): use trace, debug, info, warn or error")
        })?;
        handle
            .modify(|f| *f = parsed)
            .map_err(|e| format!("changing the log filter: {e}"))?;
        tracing::info!(filter = %wanted, "log filter changed");
        Ok(wanted)
    });
    (guard, set)
}

async fn run(
    config: Config,
    set_log_filter: SetLogFilter,
    fault_injection: bool,
) -> anyhow::Result<()> {
    host::check_privileges()?;
    // Before anything is started: a SIGTERM during start-up must stop the daemon cleanly, not
    // kill it with the default action.
    let signals = Signals::install()?;
    actors::sys::ensure_pin_root(&config.pin_root).map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state_dir {}", config.state_dir.display()))?;
    let listener = host::bind_control_socket(&config.socket_path)?;
    let firewall = config.firewall();
    let plan = StartupPlan {
        programs_dir: config.programs_dir.clone(),
        state_dir: config.state_dir.clone(),
        pin_root: config.pin_root.clone(),
        fallback: config.enable_dynamic_fallback,
        tcp_probe: config.enable_flow_observability && config.enable_tcp_probe,
        flow_poll_interval: std::time::Duration::from_secs_f64(config.flow_poll_interval_seconds),
        fallback_probe_interval: std::time::Duration::from_secs_f64(
            config.fallback_probe_interval_seconds,
        ),
        fallback_abort_rate: config.fallback_abort_rate,
        flow_idle_timeout: std::time::Duration::from_secs_f64(config.flow_idle_timeout_seconds),
        auto_attach: (config.auto_load_programs && !config.interface.is_empty())
            .then(|| (config.interface.clone(), firewall.attach_mode)),
        firewall,
    };
    let (root, mut root_handle) = Actor::spawn(None, RootSupervisor, plan)
        .await
        .context("starting the supervision tree")?;
    info!(
        socket = %config.socket_path.display(),
        pin_root = %config.pin_root.display(),
        version = env!("CARGO_PKG_VERSION"),
        "x0tta6bl4-ebpfd ready"
    );
    let control = Control {
        started: Instant::now(),
        root: root.clone(),
        set_log_filter,
        fault_injection,
        custom_metrics: supervisor::custom_metrics::CustomMetrics::load(&config.state_dir),
    };
    let server = tokio::spawn(control.clone().serve(listener));
    // Link changes (deleted, down, back) reach the AttachActors at once; their periodic check
    // stays as the safety net.
    if let Err(e) = actors::sys::watch_links(|| {
        if let Some(interfaces) = ActorRef::<InterfacesMsg>::where_is(INTERFACES) {
            let _ = interfaces.cast(InterfacesMsg::LinksChanged);
        }
    }) {
        tracing::warn!(error = %e, "no netlink link events; attachments are checked every 500 ms only");
    }
    let (services, mut services_handle) = Actor::spawn(
        Some(SERVICES.into()),
        StrategySupervisor,
        services(&config, &control),
    )
    .await
    .context("starting the services supervisor (alerts, MAPE-K, metrics)")?;
    // Ready (systemd Type=notify) once the socket serves and the restored state is in place:
    // the InterfaceSupervisor answers only after restoring the attachments, the root only
    // after the startup plan it queued when it started.
    if let Some(interfaces) = ActorRef::<InterfacesMsg>::where_is(INTERFACES) {
        let _ = ask(&interfaces, "InterfaceSupervisor", |reply| {
            InterfacesMsg::List { reply }
        })
        .await;
    }
    let _ = ask(&root, "RootSupervisor", |reply| RootMsg::Report { reply }).await;
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        error!(error = %e, "telling systemd we are ready (NOTIFY_SOCKET)");
    }
    let watchdog = sd_notify::watchdog_enabled().map(|period| {
        let root = root.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period / 2);
            loop {
                tick.tick().await;
                // Ping only while the supervision tree answers: a wedged daemon gets restarted.
                if ask(&root, "RootSupervisor", |reply| RootMsg::Report { reply })
                    .await
                    .is_ok()
                {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        })
    });

    let gave_up = tokio::select! {
        signal = signals.wait() => {
            signal?;
            false
        }
        _ = &mut root_handle => true,
        _ = &mut services_handle => true,
    };
    if gave_up {
        // Escalation from the top of a tree: exit, and leave the programs on their pinned
        // links for the restarted daemon to adopt.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        server.abort();
        services.stop(None);
        let _ = std::fs::remove_file(&config.socket_path);
        anyhow::bail!(
            "the supervision tree gave up (its actors died too often; see the errors above): exiting \
             for the service manager to restart the daemon; the programs stay attached on their pinned links"
        );
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(w) = watchdog {
        w.abort();
    }
    server.abort();
    let keep = config.keep_attached_on_shutdown;
    if let Some(shaper) = ActorRef::<actors::shaper::ShaperMsg>::where_is(actors::shaper::SHAPER)
        && let Err(e) = ask(&shaper, "ShaperActor", |reply| {
            actors::shaper::ShaperMsg::Shutdown { keep, reply }
        })
        .await
    {
        error!(error = %e, "removing the shaper at shutdown");
    }
    // Alerts, metrics and the MAPE-K loop go first: the loop must not act on the teardown
    // (retry the attachments being detached, say).
    services.stop(None);
    let _ = services_handle.await;
    if keep {
        info!(
            "shutting down: programs stay attached on their pinned links (keep_attached_on_shutdown); the next start adopts them"
        );
    } else {
        info!("shutting down: detaching every program");
        if let Some(interfaces) = ActorRef::<InterfacesMsg>::where_is(INTERFACES)
            && let Err(e) = ask(&interfaces, "InterfaceSupervisor", |reply| {
                InterfacesMsg::DetachAll { reply }
            })
            .await
        {
            error!(error = %e, "detaching at shutdown");
        }
    }
    if let Some(loader) = ActorRef::<LoaderMsg>::where_is(LOADER)
        && let Err(e) = ask(&loader, "LoaderActor", |reply| LoaderMsg::Shutdown {
            keep,
            reply,
        })
        .await
    {
        error!(error = %e, "unloading at shutdown");
    }
    root.stop(Some("shutdown".into()));
    let _ = root_handle.await;
    let _ = std::fs::remove_file(&config.socket_path);
    actors::sys::remove_pin_root_if_empty(&config.pin_root);
    info!("stopped");
    Ok(())
}

/// The actors beside the tree of the kernel-facing ones (they need the control handle, which
/// needs the root): the AlertsActor, the MapekActor, the MetricsActor and the ShaperActor,
/// one_for_one.
fn services(config: &Config, control: &Control) -> SupervisorArgs {
    use supervisor::{alerts, mapek, metrics};
    let interval = std::time::Duration::from_secs_f64(config.monitoring_interval_seconds);
    let (c, latency_threshold_ms) = (control.clone(), config.latency_threshold_ms);
    let mut children = vec![ChildSpec::permanent(
        "AlertsActor",
        alerts::ALERTS,
        || alerts::AlertsActor,
        move || {
            Ok(alerts::AlertsArgs {
                control: c.clone(),
                interval,
                latency_threshold_ms,
            })
        },
    )];
    if config.enable_mapek_integration {
        let (c, state_dir) = (control.clone(), config.state_dir.clone());
        let policy = mapek::Policy::from_idle_timeout(std::time::Duration::from_secs_f64(
            config.flow_idle_timeout_seconds,
        ));
        children.push(ChildSpec::permanent(
            "MapekActor",
            mapek::MAPEK,
            || mapek::MapekActor,
            move || {
                Ok(mapek::MapekArgs {
                    control: c.clone(),
                    interval,
                    state_dir: state_dir.clone(),
                    policy: policy.clone(),
                })
            },
        ));
    }
    if config.enable_metrics_export {
        let c = control.clone();
        let address =
            std::net::SocketAddr::new(config.metrics_bind_address, config.prometheus_port);
        children.push(ChildSpec::permanent(
            "MetricsActor",
            metrics::METRICS,
            || metrics::MetricsActor,
            move || {
                Ok(metrics::MetricsArgs {
                    control: c.clone(),
                    address,
                })
            },
        ));
    }
    let (pin_root, state_dir, configured) = (
        config.pin_root.clone(),
        config.state_dir.clone(),
        config.shaper(),
    );
    children.push(ChildSpec::permanent(
        "ShaperActor",
        actors::shaper::SHAPER,
        || actors::shaper::ShaperActor,
        move || {
            Ok(actors::shaper::ShaperArgs {
                pin_root: pin_root.clone(),
                state_dir: state_dir.clone(),
                configured: configured.clone(),
                check_interval: std::time::Duration::from_secs(1),
            })
        },
    ));
    SupervisorArgs {
        strategy: Strategy::OneForOne,
        max_restarts: 5,
        window: std::time::Duration::from_secs(30),
        children,
    }
}

/// SIGTERM and SIGINT, caught from the moment `install` returns.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(mut self) -> anyhow::Result<()> {
        tokio::select! {
            _ = self.term.recv() => info!("SIGTERM"),
            _ = self.int.recv() => info!("SIGINT"),
        }
        Ok(())
    }
}
