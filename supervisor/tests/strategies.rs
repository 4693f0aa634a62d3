//! Every supervision strategy and restart type of `supervisor::strategy`, with real ractor
//! actors: which children a death restarts, which it leaves alone, and escalation when the
//! restart intensity is exceeded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use supervisor::strategy::{
    ChildSpec, Restart, Strategy, StrategySupervisor, SupervisorArgs, SupervisorMsg,
};

struct Worker;

enum WorkerMsg {
    Crash,
    Stop,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<WorkerMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Crash => panic!("worker crashed on purpose"),
            WorkerMsg::Stop => myself.stop(None),
        }
        Ok(())
    }
}

/// Names unique per test: the registry is global to the test binary.
fn name(test: &str, child: &str) -> String {
    format!("{test}.{child}")
}

fn spec(test: &str, child: &str, restart: Restart) -> ChildSpec {
    let registered = name(test, child);
    ChildSpec {
        name: child.to_string(),
        restart,
        start: Arc::new(move |sup: ActorCell| {
            let registered = registered.clone();
            Box::pin(async move {
                let (r, _) = Actor::spawn_linked(Some(registered), Worker, (), sup).await?;
                Ok(r.get_cell())
            })
        }),
    }
}

fn id(test: &str, child: &str) -> Option<ActorId> {
    ractor::registry::where_is(name(test, child)).map(|c| c.get_id())
}

fn send(test: &str, child: &str, msg: WorkerMsg) {
    let cell = ractor::registry::where_is(name(test, child)).expect("child running");
    ActorRef::<WorkerMsg>::from(cell).cast(msg).unwrap();
}

async fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn supervise(
    test: &str,
    strategy: Strategy,
    children: &[(&str, Restart)],
    max_restarts: usize,
) -> ActorRef<SupervisorMsg> {
    let (sup, _) = Actor::spawn(
        None,
        StrategySupervisor,
        SupervisorArgs {
            strategy,
            max_restarts,
            window: Duration::from_secs(10),
            children: children.iter().map(|(c, r)| spec(test, c, *r)).collect(),
        },
    )
    .await
    .unwrap();
    sup
}

/// Crashes `child` and returns, once it is back, which of `all` have new ids.
async fn crash_and_see(test: &str, child: &str, all: &[&str]) -> Vec<bool> {
    let before: Vec<Option<ActorId>> = all.iter().map(|c| id(test, c)).collect();
    let old = id(test, child);
    send(test, child, WorkerMsg::Crash);
    wait("the crashed child to come back", || {
        id(test, child).is_some_and(|now| Some(now) != old)
    })
    .await;
    // Give collateral restarts their moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    all.iter()
        .zip(before)
        .map(|(c, b)| id(test, c) != b)
        .collect()
}

const P: Restart = Restart::Permanent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_one_restarts_only_the_dead_child() {
    let t = "one_for_one";
    let sup = supervise(t, Strategy::OneForOne, &[("a", P), ("b", P), ("c", P)], 5).await;
    assert_eq!(
        crash_and_see(t, "b", &["a", "b", "c"]).await,
        [false, true, false]
    );
    let report = ractor::call!(sup, |reply| SupervisorMsg::Children { reply }).unwrap();
    assert_eq!(report[1].restarts, 1);
    assert!(
        report[1]
            .last_failure
            .as_deref()
            .is_some_and(|f| f.contains("worker crashed on purpose")),
        "{report:?}"
    );
    sup.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_for_all_restarts_every_child() {
    let t = "one_for_all";
    let sup = supervise(t, Strategy::OneForAll, &[("a", P), ("b", P), ("c", P)], 5).await;
    assert_eq!(
        crash_and_see(t, "b", &["a", "b", "c"]).await,
        [true, true, true]
    );
    sup.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_for_one_restarts_the_child_and_those_after_it() {
    let t = "rest_for_one";
    let sup = supervise(t, Strategy::RestForOne, &[("a", P), ("b", P), ("c", P)], 5).await;
    assert_eq!(
        crash_and_see(t, "b", &["a", "b", "c"]).await,
        [false, true, true]
    );
    sup.stop(None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_children_come_back_from_failures_only_and_temporary_ones_never() {
    let t = "restart_types";
    let sup = supervise(
        t,
        Strategy::OneForOne,
        &[
            ("transient", Restart::Transient),
            ("temporary", Restart::Temporary),
        ],
        5,
    )
    .await;
    // A transient child that fails is restarted...
    assert_eq!(crash_and_see(t, "transient", &["transient"]).await, [true]);
    // ...one that stops normally is not.
    send(t, "transient", WorkerMsg::Stop);
    wait("the transient child to stop", || {
        id(t, "transient").is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        id(t, "transient"),
        None,
        "not restarted after a normal stop"
    );
    // A temporary child is not restarted even after a failure.
    send(t, "temporary", WorkerMsg::Crash);
    wait("the temporary child to die", || {
        id(t, "temporary").is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(id(t, "temporary"), None, "temporary: never restarted");
    let report = ractor::call!(sup, |reply| SupervisorMsg::Children { reply }).unwrap();
    assert_eq!(
        report
            .iter()
            .map(|c| (c.running, c.restarts))
            .collect::<Vec<_>>(),
        [(false, 1), (false, 0)]
    );
    sup.stop(None);
}

/// Records what happens to the supervisor it starts.
struct Parent;

impl Actor for Parent {
    type Msg = ();
    type State = (Arc<Mutex<Vec<String>>>, Option<ActorRef<SupervisorMsg>>);
    type Arguments = (Arc<Mutex<Vec<String>>>, SupervisorArgs);

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        (seen, args): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (sup, _) =
            Actor::spawn_linked(None, StrategySupervisor, args, myself.get_cell()).await?;
        Ok((seen, Some(sup)))
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, e) = event {
            state.0.lock().push(e.to_string());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_restarts_escalate_to_the_parent() {
    let t = "intensity";
    let seen = Arc::new(Mutex::new(Vec::new()));
    let args = SupervisorArgs {
        strategy: Strategy::OneForOne,
        max_restarts: 2,
        window: Duration::from_secs(10),
        children: vec![spec(t, "a", P), spec(t, "b", P)],
    };
    let (parent, _) = Actor::spawn(None, Parent, (seen.clone(), args))
        .await
        .unwrap();
    wait("the children to start", || {
        id(t, "a").is_some() && id(t, "b").is_some()
    })
    .await;
    for _ in 0..2 {
        crash_and_see(t, "a", &["a"]).await;
    }
    // The third death in the window: the supervisor gives up, stops its children and fails.
    send(t, "a", WorkerMsg::Crash);
    wait("the escalation to reach the parent", || {
        !seen.lock().is_empty()
    })
    .await;
    let why = seen.lock()[0].clone();
    assert!(why.contains("more often than 2 restarts in 10s"), "{why}");
    wait("every child to stop", || {
        id(t, "a").is_none() && id(t, "b").is_none()
    })
    .await;
    parent.stop(None);
}
