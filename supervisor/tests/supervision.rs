//! Supervision with real actors and a real kernel: an AttachActor that panics is restarted by
//! the InterfaceSupervisor, which attaches the same program again; past its restart intensity
//! it gives up and says so. Needs root; never skips.

use std::time::{Duration, Instant};

use actors::api::AttachMode;
use actors::interfaces::{InterfaceSupervisor, InterfacesArgs, InterfacesMsg, SupervisionReport};
use actors::loader::{LoaderActor, LoaderArgs, LoaderMsg};
use actors::restart::RestartIntensity;
use actors::rpc::ask;
use chaos_tests::{LocalVeth, kernel_linked_programs, require_root};
use ractor::{Actor, ActorRef};

/// A state dir and a pin root of the test's own, removed at the end.
struct Dirs {
    state: tempfile::TempDir,
    pins: std::path::PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let pins = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/x0t-supervision-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        actors::sys::ensure_pin_root(&pins).unwrap();
        Dirs {
            state: tempfile::tempdir().unwrap(),
            pins,
        }
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        actors::sys::remove_pins(&self.pins);
    }
}

async fn tree(
    dirs: &Dirs,
    intensity: fn() -> RestartIntensity,
) -> (ActorRef<LoaderMsg>, ActorRef<InterfacesMsg>) {
    let (loader, _) = Actor::spawn(
        None,
        LoaderActor,
        LoaderArgs {
            programs_dir: std::env::temp_dir(),
            firewall: Default::default(),
            state_dir: dirs.state.path().to_path_buf(),
            pin_root: dirs.pins.clone(),
        },
    )
    .await
    .unwrap();
    let (interfaces, _) = Actor::spawn(
        None,
        InterfaceSupervisor,
        InterfacesArgs {
            loader: loader.clone(),
            intensity,
            state_dir: dirs.state.path().to_path_buf(),
            fallback: true,
            on_restart: std::sync::Arc::new(|_: &str, _: &str| {}),
        },
    )
    .await
    .unwrap();
    (loader, interfaces)
}

async fn report(interfaces: &ActorRef<InterfacesMsg>) -> SupervisionReport {
    ask(interfaces, "InterfaceSupervisor", |reply| {
        InterfacesMsg::Verify { reply }
    })
    .await
    .unwrap()
}

async fn crash(interfaces: &ActorRef<InterfacesMsg>, interface: &str) {
    ask(interfaces, "InterfaceSupervisor", |reply| {
        InterfacesMsg::CrashChild {
            interface: interface.to_string(),
            reply,
        }
    })
    .await
    .unwrap()
    .unwrap();
}

/// Waits until the supervisor has handled `restarts` restarts (or gave up).
async fn settle(interfaces: &ActorRef<InterfacesMsg>, restarts: u64) -> SupervisionReport {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = report(interfaces).await;
        let gave_up = r.problems.values().any(|why| why.contains("gave up"));
        if r.restarts >= restarts || gave_up || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn load_and_attach(
    loader: &ActorRef<LoaderMsg>,
    interfaces: &ActorRef<InterfacesMsg>,
    interface: &str,
) -> (String, u64) {
    let info = ask(loader, "LoaderActor", |reply| LoaderMsg::Load {
        name: "xdp_firewall".into(),
        mode: Some(AttachMode::Skb),
        reply,
    })
    .await
    .unwrap()
    .unwrap();
    ask(interfaces, "InterfaceSupervisor", |reply| {
        InterfacesMsg::Attach {
            program_id: info.id.clone(),
            interface: interface.to_string(),
            mode: None,
            force: false,
            reply,
        }
    })
    .await
    .unwrap()
    .unwrap();
    (info.id, u64::from(info.kernel_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_attach_actor_is_restarted_and_its_program_reattached() {
    require_root();
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let veth = LocalVeth::new();
    let dirs = Dirs::new();
    let (loader, interfaces) = tree(&dirs, RestartIntensity::default).await;
    let (id, kernel_id) = load_and_attach(&loader, &interfaces, &veth.name).await;
    assert!(kernel_linked_programs().contains(&kernel_id));

    for round in 1..=2 {
        crash(&interfaces, &veth.name).await;
        let r = settle(&interfaces, round).await;
        assert_eq!(r.restarts, round, "{r:?}");
        assert!(r.problems.is_empty(), "{r:?}");
        assert_eq!(r.attachments, 1, "{r:?}");
        assert!(
            kernel_linked_programs().contains(&kernel_id),
            "after restart {round} the program is attached again"
        );
    }
    let list = ask(&interfaces, "InterfaceSupervisor", |reply| {
        InterfacesMsg::List { reply }
    })
    .await
    .unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].program_id, id);
    assert_eq!(
        list[0].mode,
        AttachMode::Skb,
        "re-attached in the mode it had"
    );
    // The daemon-side actors are all still alive.
    assert!(loader.get_status() == ractor::ActorStatus::Running);
    assert!(interfaces.get_status() == ractor::ActorStatus::Running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_restart_intensity_the_supervisor_gives_up_and_reports_it() {
    require_root();
    let veth = LocalVeth::new();
    let dirs = Dirs::new();
    let (loader, interfaces) =
        tree(&dirs, || RestartIntensity::new(1, Duration::from_secs(60))).await;
    let (_id, kernel_id) = load_and_attach(&loader, &interfaces, &veth.name).await;

    crash(&interfaces, &veth.name).await;
    let r = settle(&interfaces, 1).await;
    assert_eq!(r.restarts, 1);
    assert!(kernel_linked_programs().contains(&kernel_id));

    crash(&interfaces, &veth.name).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = report(&interfaces).await;
        if r.problems.values().any(|why| why.contains("gave up")) || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let why = r
        .problems
        .get(&veth.name)
        .expect("the given-up interface is reported");
    assert!(why.contains("gave up"), "{why}");
    assert_eq!(r.attachments, 0);
    // The kernel frees a link from a workqueue once its last reference is dropped, so it may
    // be listed a moment after the detach.
    let deadline = Instant::now() + Duration::from_secs(5);
    while kernel_linked_programs().contains(&kernel_id) {
        assert!(Instant::now() < deadline, "its link is gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        interfaces.get_status() == ractor::ActorStatus::Running,
        "the supervisor itself lives on"
    );
}

/// rest_for_one at the root: when the LoaderActor dies its programs are gone, so the
/// InterfaceSupervisor after it is restarted too, and the startup plan runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_loader_restarts_the_tree_after_it_and_reruns_the_startup_plan() {
    use supervisor::root::{INTERFACES, LOADER, RootMsg, RootSupervisor, StartupPlan};
    require_root();
    let veth = LocalVeth::new();
    let dirs = Dirs::new();
    let plan = StartupPlan {
        programs_dir: std::env::temp_dir(),
        state_dir: dirs.state.path().to_path_buf(),
        pin_root: dirs.pins.clone(),
        fallback: true,
        tcp_probe: false,
        flow_poll_interval: Duration::from_secs(2),
        fallback_probe_interval: Duration::from_secs(60),
        fallback_abort_rate: 0.0,
        flow_idle_timeout: Duration::from_secs(120),
        firewall: Default::default(),
        auto_attach: Some((veth.name.clone(), AttachMode::Skb)),
    };
    let (root, _) = Actor::spawn(None, RootSupervisor, plan).await.unwrap();

    let attached_program = || async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(loader) = ActorRef::<LoaderMsg>::where_is(LOADER)
                && let Some(interfaces) = ActorRef::<InterfacesMsg>::where_is(INTERFACES)
                && let Ok(list) = ask(&interfaces, "i", |reply| InterfacesMsg::List { reply }).await
                && let Some(a) = list.first()
                && let Ok(programs) = ask(&loader, "l", |reply| LoaderMsg::List { reply }).await
                && let Some(p) = programs.iter().find(|p| p.id == a.program_id)
            {
                return (loader, interfaces, u64::from(p.kernel_id));
            }
            assert!(
                Instant::now() < deadline,
                "the startup plan did not attach the firewall"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (loader, interfaces, first_kernel_id) = attached_program().await;
    assert!(kernel_linked_programs().contains(&first_kernel_id));

    loader.cast(LoaderMsg::Crash).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ask(&root, "root", |reply| RootMsg::Report { reply })
        .await
        .unwrap()
        .restarts()
        < 1
    {
        assert!(
            Instant::now() < deadline,
            "the root did not restart the loader"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (new_loader, new_interfaces, second_kernel_id) = loop {
        let found = attached_program().await;
        if found.2 != first_kernel_id {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(new_loader.get_id(), loader.get_id(), "a new LoaderActor");
    assert_ne!(
        new_interfaces.get_id(),
        interfaces.get_id(),
        "rest_for_one: a new InterfaceSupervisor too"
    );
    assert!(
        kernel_linked_programs().contains(&second_kernel_id),
        "the plan attached the firewall again"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while kernel_linked_programs().contains(&first_kernel_id) {
        assert!(
            Instant::now() < deadline,
            "the dead loader's program is still attached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = ask(&root, "root", |reply| RootMsg::Report { reply })
        .await
        .unwrap();
    assert_eq!(report.restarts(), 1);
    assert!(report.gave_up.is_none());
    root.stop(None);
}
