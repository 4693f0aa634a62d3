//! FlowActor: reads the flow table of every loaded firewall in batches, every `interval` and
//! whenever a `flows` query arrives; keeps per-flow rates between reads; ages out flows idle
//! longer than `idle_timeout`.
//!
//! All of the work on the flows (the read, the rates, the filtering and sorting of answers)
//! runs on a blocking thread, which replies to the queries itself: neither this actor nor the
//! tokio workers the other actors run on wait for a table of a million flows.
//!
//! A query is answered by the first read that *starts after it arrives*, so what it shows
//! includes every packet counted before it was asked; queries that arrive while a read is
//! under way share the next one.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ebpf_shared::{FlowKey, FlowValue};
use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{debug, info, warn};

use crate::api::{FlowFacts, FlowList, FlowQuery, FlowSort, FlowTable};
use crate::flowtable::{FlowMaps, InterfaceNames, MonotonicToWall, flow_record, flow_verdict};
use crate::loader::{FlowSources, LoaderMsg};
use crate::rpc::ask;

/// A fast hash for flow keys: the tables hold up to millions of them, and the keys come from
/// the kernel's own table, not from whoever sends packets' choice of collisions alone.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

pub struct FlowArgs {
    /// Registry name of the LoaderActor, looked up at every read (it may have restarted).
    pub loader: String,
    pub interval: Duration,
    pub idle_timeout: Duration,
}

pub enum FlowMsg {
    /// Read the tables (sent by the timer).
    Tick,
    /// Flows matching `query`, from a read that starts after this message arrives.
    Query {
        query: FlowQuery,
        reply: RpcReplyPort<FlowList>,
    },
    /// A read finished; the snapshot comes back to the actor.
    Read(Box<Snapshot>),
    /// Remove flows idle longer than `idle` at the next read (not only after `idle_timeout`);
    /// answers how many were removed. For the MAPE-K loop, when a table nears capacity.
    AgeOut {
        idle: Duration,
        reply: RpcReplyPort<u64>,
    },
    /// Fault injection (`debug crash flows`).
    Crash,
}

/// A flow as last read, with its rates since the read before.
struct Flow {
    value: FlowValue,
    packets_per_second: f64,
    bytes_per_second: f64,
}

struct Table {
    flows: FastMap<FlowKey, Flow>,
    /// The table's bookkeeping at that read.
    table: FlowTable,
    read_at_ns: u64,
}

/// What the last read found; moved to the reading thread and back.
#[derive(Default)]
pub struct Snapshot {
    enabled: bool,
    tables: BTreeMap<String, Table>,
    clock: Option<MonotonicToWall>,
    names: InterfaceNames,
}

pub struct FlowState {
    args: FlowArgs,
    /// `None` while a read has it.
    snapshot: Option<Box<Snapshot>>,
    /// Handles on the pinned maps, by program id, shared with the reading thread.
    maps: HashMap<String, (PathBuf, Arc<Mutex<FlowMaps>>)>,
    /// Queries for the next read.
    waiting: Vec<(FlowQuery, RpcReplyPort<FlowList>)>,
    age_out: Option<(Duration, RpcReplyPort<u64>)>,
}

pub struct FlowActor;

impl Actor for FlowActor {
    type Msg = FlowMsg;
    type State = FlowState;
    type Arguments = FlowArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<FlowMsg>,
        args: FlowArgs,
    ) -> Result<FlowState, ActorProcessingErr> {
        myself.send_interval(args.interval, || FlowMsg::Tick);
        Ok(FlowState {
            args,
            snapshot: Some(Box::default()),
            maps: HashMap::new(),
            waiting: Vec::new(),
            age_out: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<FlowMsg>,
        msg: FlowMsg,
        state: &mut FlowState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FlowMsg::Tick => state.start_read(&myself).await,
            FlowMsg::Query { query, reply } => {
                state.waiting.push((query, reply));
                state.start_read(&myself).await;
            }
            FlowMsg::AgeOut { idle, reply } => {
                if let Some((_, earlier)) = state.age_out.replace((idle, reply)) {
                    let _ = earlier.send(0);
                }
                state.start_read(&myself).await;
            }
            FlowMsg::Read(snapshot) => {
                state.snapshot = Some(snapshot);
                if !state.waiting.is_empty() || state.age_out.is_some() {
                    state.start_read(&myself).await;
                }
            }
            FlowMsg::Crash => panic!("fault injection: debug crash flows"),
        }
        Ok(())
    }
}

impl FlowState {
    /// Starts a read unless one is under way (then the waiting queries get the next one).
    async fn start_read(&mut self, myself: &ActorRef<FlowMsg>) {
        if self.snapshot.is_none() {
            return;
        }
        let sources = match ractor::registry::where_is(self.args.loader.clone()) {
            Some(cell) => {
                let loader: ActorRef<LoaderMsg> = cell.into();
                ask(&loader, "LoaderActor", |reply| LoaderMsg::FlowSources {
                    reply,
                })
                .await
                .unwrap_or_default()
            }
            None => FlowSources::default(),
        };
        // Asking the loader yielded: a read may have started meanwhile.
        let Some(snapshot) = self.snapshot.take() else {
            return;
        };
        self.maps
            .retain(|id, (pins, _)| sources.tables.iter().any(|(i, p)| i == id && p == pins));
        for (id, pins) in &sources.tables {
            if self.maps.contains_key(id) {
                continue;
            }
            match FlowMaps::open(pins) {
                Ok(m) => {
                    self.maps
                        .insert(id.clone(), (pins.clone(), Arc::new(Mutex::new(m))));
                }
                Err(e) => warn!(program_id = %id, error = %e, "cannot open the flow table"),
            }
        }
        let read = Read {
            maps: self
                .maps
                .iter()
                .map(|(id, (_, m))| (id.clone(), m.clone()))
                .collect(),
            idle: match &self.age_out {
                Some((idle, _)) => (*idle).min(self.args.idle_timeout),
                None => self.args.idle_timeout,
            },
            enabled: sources.enabled,
            queries: std::mem::take(&mut self.waiting),
            age_out: self.age_out.take().map(|(_, reply)| reply),
        };
        let me = myself.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let snapshot = read.run(*snapshot);
            debug!(
                took_ms = started.elapsed().as_millis() as u64,
                "flow tables read"
            );
            let _ = me.cast(FlowMsg::Read(snapshot));
        });
    }
}

/// One read, as the blocking thread does it.
struct Read {
    maps: Vec<(String, Arc<Mutex<FlowMaps>>)>,
    idle: Duration,
    enabled: bool,
    queries: Vec<(FlowQuery, RpcReplyPort<FlowList>)>,
    age_out: Option<RpcReplyPort<u64>>,
}

impl Read {
    fn run(self, mut before: Snapshot) -> Box<Snapshot> {
        let clock = MonotonicToWall::now();
        let now_ns = clock.mono_ns();
        let cutoff = now_ns.saturating_sub(self.idle.as_nanos() as u64);
        let mut aged_out = 0;
        let mut tables = BTreeMap::new();
        for (id, maps) in &self.maps {
            let mut maps = maps.lock();
            let mut scan = match maps.scan() {
                Ok(s) => s,
                Err(e) => {
                    warn!(program_id = %id, error = %e, "reading the flow table failed");
                    continue;
                }
            };
            let idle: Vec<FlowKey> = scan
                .flows
                .iter()
                .filter(|(_, v)| v.last_seen_ns < cutoff)
                .map(|(k, _)| *k)
                .collect();
            if !idle.is_empty() {
                match maps.remove(&idle) {
                    Ok(removed) => {
                        aged_out += removed;
                        scan.removed += removed;
                        scan.flows.retain(|(_, v)| v.last_seen_ns >= cutoff);
                    }
                    Err(e) => warn!(program_id = %id, error = %e, "ageing out idle flows failed"),
                }
            }
            let old = before.tables.remove(id);
            let mut flows = FastMap::with_capacity_and_hasher(scan.flows.len(), Default::default());
            for (key, value) in &scan.flows {
                let rates = old.as_ref().map(|o| {
                    // A flow new since the last read counts from zero, from its first packet.
                    let (since, p0, b0) = match o.flows.get(key) {
                        Some(f) => (o.read_at_ns, f.value.packets, f.value.bytes),
                        None => (o.read_at_ns.max(value.first_seen_ns), 0, 0),
                    };
                    let secs = now_ns.saturating_sub(since) as f64 / 1e9;
                    if secs > 0.0 {
                        (
                            value.packets.saturating_sub(p0) as f64 / secs,
                            value.bytes.saturating_sub(b0) as f64 / secs,
                        )
                    } else {
                        (0.0, 0.0)
                    }
                });
                let (packets_per_second, bytes_per_second) = rates.unwrap_or((0.0, 0.0));
                flows.insert(
                    *key,
                    Flow {
                        value: *value,
                        packets_per_second,
                        bytes_per_second,
                    },
                );
            }
            tables.insert(
                id.clone(),
                Table {
                    table: scan.table(id),
                    flows,
                    read_at_ns: now_ns,
                },
            );
        }
        if aged_out > 0 {
            info!(flows = aged_out, "idle flows aged out of the kernel table");
        }
        if let Some(reply) = self.age_out {
            let _ = reply.send(aged_out);
        }
        let mut snapshot = Box::new(Snapshot {
            enabled: self.enabled,
            tables,
            clock: Some(clock),
            names: std::mem::take(&mut before.names),
        });
        for (query, reply) in self.queries {
            let _ = reply.send(snapshot.answer(&query));
        }
        snapshot
    }
}

impl Snapshot {
    fn answer(&mut self, query: &FlowQuery) -> FlowList {
        let mut list = FlowList {
            enabled: self.enabled,
            flows: Vec::new(),
            tables: self.tables.values().map(|t| t.table.clone()).collect(),
        };
        let Some(clock) = &self.clock else {
            return list;
        };
        let names = &mut self.names;
        let mut hits: Vec<(&str, &FlowKey, &Flow)> = Vec::new();
        for (id, table) in &self.tables {
            for (key, flow) in &table.flows {
                let facts = FlowFacts {
                    source: crate::sys::address_from_words(&key.src, key.family == 6),
                    destination: crate::sys::address_from_words(&key.dst, key.family == 6),
                    protocol: key.protocol,
                    source_port: key.source_port,
                    destination_port: key.dest_port,
                    packets: flow.value.packets,
                    verdict: flow_verdict(&flow.value),
                    interface: names.get(key.ifindex),
                };
                if query.matches(&facts) {
                    hits.push((id, key, flow));
                }
            }
        }
        let order = |h: &(&str, &FlowKey, &Flow)| {
            std::cmp::Reverse(match query.sort {
                FlowSort::Packets => h.2.value.packets,
                FlowSort::Bytes => h.2.value.bytes,
                FlowSort::LastSeen => h.2.value.last_seen_ns,
            })
        };
        // Only the first `limit` need sorting.
        if let Some(n) = query.limit
            && n < hits.len()
        {
            if n > 0 {
                hits.select_nth_unstable_by_key(n - 1, order);
            }
            hits.truncate(n);
        }
        hits.sort_by_key(order);
        list.flows = hits
            .into_iter()
            .map(|(id, key, flow)| {
                let mut record = flow_record(key, &flow.value, id, names.get(key.ifindex), clock);
                record.packets_per_second = flow.packets_per_second;
                record.bytes_per_second = flow.bytes_per_second;
                record
            })
            .collect();
        list
    }
}
