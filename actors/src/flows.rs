//! FlowActor: reads the flow table of every loaded firewall in batches, every `interval` and
//! whenever a `flows` query arrives, on a blocking thread so that no other actor waits for it;
//! keeps per-flow rates between reads; ages out flows idle longer than `idle_timeout`.
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
use crate::flowtable::{
    FlowMaps, FlowScan, InterfaceNames, MonotonicToWall, flow_record, flow_verdict,
};
use crate::loader::{FlowSources, LoaderMsg};
use crate::rpc::ask;

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
    /// A read finished.
    Scanned(Box<ReadOutcome>),
    /// Remove flows idle longer than `idle` now (not only after `idle_timeout`); answers how
    /// many were removed. For the MAPE-K loop, when a table nears capacity.
    AgeOut {
        idle: Duration,
        reply: RpcReplyPort<u64>,
    },
    /// Fault injection (`debug crash flows`).
    Crash,
}

/// What one read of every table found.
pub struct ReadOutcome {
    started: Instant,
    clock: MonotonicToWall,
    enabled: bool,
    tables: Vec<(String, Result<FlowScan, String>)>,
    aged_out: u64,
}

/// A flow as last read, with its rates since the read before.
struct Flow {
    value: FlowValue,
    packets_per_second: f64,
    bytes_per_second: f64,
}

struct Table {
    flows: HashMap<FlowKey, Flow>,
    /// The table's bookkeeping at that read.
    table: FlowTable,
    read_at_ns: u64,
}

pub struct FlowState {
    args: FlowArgs,
    enabled: bool,
    tables: BTreeMap<String, Table>,
    /// Handles on the pinned maps, by program id, shared with the reading thread.
    maps: HashMap<String, (PathBuf, Arc<Mutex<FlowMaps>>)>,
    /// When the read under way started.
    reading: Option<Instant>,
    /// Queries waiting for a read that started after they arrived.
    waiting: Vec<(Instant, FlowQuery, RpcReplyPort<FlowList>)>,
    /// An `AgeOut` waiting for the next read, with its threshold.
    age_out: Option<(Duration, RpcReplyPort<u64>)>,
    names: InterfaceNames,
    clock: Option<MonotonicToWall>,
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
            enabled: false,
            tables: BTreeMap::new(),
            maps: HashMap::new(),
            reading: None,
            waiting: Vec::new(),
            age_out: None,
            names: InterfaceNames::default(),
            clock: None,
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
                state.waiting.push((Instant::now(), query, reply));
                state.start_read(&myself).await;
            }
            FlowMsg::AgeOut { idle, reply } => {
                if let Some((_, earlier)) = state.age_out.replace((idle, reply)) {
                    let _ = earlier.send(0);
                }
                state.start_read(&myself).await;
            }
            FlowMsg::Scanned(outcome) => {
                state.finish_read(*outcome);
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
    async fn start_read(&mut self, myself: &ActorRef<FlowMsg>) {
        if self.reading.is_some() {
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
        self.maps
            .retain(|id, (pins, _)| sources.tables.iter().any(|(i, p)| i == id && p == pins));
        let mut failed = Vec::new();
        for (id, pins) in &sources.tables {
            if self.maps.contains_key(id) {
                continue;
            }
            match FlowMaps::open(pins) {
                Ok(m) => {
                    self.maps
                        .insert(id.clone(), (pins.clone(), Arc::new(Mutex::new(m))));
                }
                Err(e) => failed.push((id.clone(), Err(e.to_string()))),
            }
        }
        let handles: Vec<(String, Arc<Mutex<FlowMaps>>)> = self
            .maps
            .iter()
            .map(|(id, (_, m))| (id.clone(), m.clone()))
            .collect();
        let idle = match &self.age_out {
            Some((idle, _)) => (*idle).min(self.args.idle_timeout),
            None => self.args.idle_timeout,
        };
        let started = Instant::now();
        self.reading = Some(started);
        let enabled = sources.enabled;
        let me = myself.clone();
        tokio::spawn(async move {
            let read = tokio::task::spawn_blocking(move || read_tables(handles, idle)).await;
            let mut outcome = read.unwrap_or_else(|e| ReadOutcome {
                tables: vec![("*".to_string(), Err(format!("the read panicked: {e}")))],
                aged_out: 0,
                clock: MonotonicToWall::now(),
                started,
                enabled,
            });
            outcome.tables.extend(failed);
            outcome.started = started;
            outcome.enabled = enabled;
            let _ = me.cast(FlowMsg::Scanned(Box::new(outcome)));
        });
    }

    fn finish_read(&mut self, outcome: ReadOutcome) {
        self.reading = None;
        self.enabled = outcome.enabled;
        let now_ns = outcome.clock.mono_ns();
        let mut tables = BTreeMap::new();
        for (id, scan) in outcome.tables {
            let scan = match scan {
                Ok(s) => s,
                Err(e) => {
                    warn!(program_id = %id, error = %e, "reading the flow table failed");
                    continue;
                }
            };
            let before = self.tables.remove(&id);
            let mut flows = HashMap::with_capacity(scan.flows.len());
            for (key, value) in &scan.flows {
                let (packets_per_second, bytes_per_second) = match &before {
                    Some(b) => {
                        let (p0, b0) = b
                            .flows
                            .get(key)
                            .map_or((0, 0), |f| (f.value.packets, f.value.bytes));
                        // A flow new since the last read counts from its first packet.
                        let since = if b.flows.contains_key(key) {
                            b.read_at_ns
                        } else {
                            b.read_at_ns.max(value.first_seen_ns)
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
                    }
                    None => (0.0, 0.0),
                };
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
                    flows,
                    table: scan.table(&id),
                    read_at_ns: now_ns,
                },
            );
        }
        self.tables = tables;
        if outcome.aged_out > 0 {
            info!(
                flows = outcome.aged_out,
                "idle flows aged out of the kernel table"
            );
        }
        if let Some((_, reply)) = self.age_out.take() {
            let _ = reply.send(outcome.aged_out);
        }
        self.clock = Some(outcome.clock);
        let started = outcome.started;
        let (answer, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(arrived, _, _)| *arrived <= started);
        self.waiting = wait;
        for (_, query, reply) in answer {
            let _ = reply.send(self.answer(&query));
        }
        debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "flow tables read"
        );
    }

    fn answer(&mut self, query: &FlowQuery) -> FlowList {
        let Some(clock) = &self.clock else {
            return FlowList {
                enabled: self.enabled,
                flows: Vec::new(),
                tables: Vec::new(),
            };
        };
        let mut hits: Vec<(&str, &FlowKey, &Flow)> = Vec::new();
        let names = &mut self.names;
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
        match query.sort {
            FlowSort::Packets => hits.sort_by_key(|h| std::cmp::Reverse(h.2.value.packets)),
            FlowSort::Bytes => hits.sort_by_key(|h| std::cmp::Reverse(h.2.value.bytes)),
            FlowSort::LastSeen => hits.sort_by_key(|h| std::cmp::Reverse(h.2.value.last_seen_ns)),
        }
        if let Some(n) = query.limit {
            hits.truncate(n);
        }
        let flows = hits
            .into_iter()
            .map(|(id, key, flow)| {
                let mut record = flow_record(key, &flow.value, id, names.get(key.ifindex), clock);
                record.packets_per_second = flow.packets_per_second;
                record.bytes_per_second = flow.bytes_per_second;
                record
            })
            .collect();
        FlowList {
            enabled: self.enabled,
            flows,
            tables: self.tables.values().map(|t| t.table.clone()).collect(),
        }
    }
}

/// Reads every table and removes its flows idle for longer than `idle` (the kernel stamps
/// flows with CLOCK_MONOTONIC). Runs on a blocking thread; the caller fills in `started` and
/// `enabled`.
fn read_tables(handles: Vec<(String, Arc<Mutex<FlowMaps>>)>, idle: Duration) -> ReadOutcome {
    let clock = MonotonicToWall::now();
    let cutoff = clock.mono_ns().saturating_sub(idle.as_nanos() as u64);
    let mut aged_out = 0;
    let tables = handles
        .into_iter()
        .map(|(id, maps)| {
            let mut maps = maps.lock();
            let result = maps.scan().and_then(|mut scan| {
                let idle: Vec<FlowKey> = scan
                    .flows
                    .iter()
                    .filter(|(_, v)| v.last_seen_ns < cutoff)
                    .map(|(k, _)| *k)
                    .collect();
                if !idle.is_empty() {
                    let removed = maps.remove(&idle)?;
                    aged_out += removed;
                    scan.removed += removed;
                    scan.flows.retain(|(_, v)| v.last_seen_ns >= cutoff);
                }
                Ok(scan)
            });
            (id, result.map_err(|e| e.to_string()))
        })
        .collect();
    ReadOutcome {
        started: Instant::now(),
        clock,
        enabled: true,
        tables,
        aged_out,
    }
}
