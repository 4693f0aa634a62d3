//! FlowActor: reads the flow table of every loaded firewall in batches, every `interval` and
//! whenever a `flows` query arrives; keeps per-flow rates between reads; ages out flows idle
//! longer than `idle_timeout`.
//!
//! All of the work on the flows (the read, the rates, the filtering and sorting of answers)
//! runs on a blocking thread, which replies to the queries itself: neither this actor nor the
//! tokio workers the other actors run on wait for a table of a million flows.
//!
//! A query for flows is answered by the first read that *starts after it arrives*, so what
//! it shows includes every packet counted before it was asked; queries that arrive while a
//! read is under way share the next one. `Tables`, the bookkeeping alone (the alerts and the
//! MAPE-K loop ask it every monitoring interval), is answered from the last timed read while
//! that is younger than `interval`, so they do not each read a table of a million flows again.

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
    /// The tables' bookkeeping (no flows) as of a read at most `interval` old.
    Tables { reply: RpcReplyPort<FlowList> },
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
    /// Packets and bytes at `base_ns`, what the rates are measured from. The base moves once
    /// it is an interval old, so a rate always spans one to two intervals, never the few
    /// milliseconds between a timed read and a query's.
    base_packets: u64,
    base_bytes: u64,
    base_ns: u64,
}

/// The rates of a flow now (`value` at `now_ns`) from its base, and the base to keep.
fn rates(value: &FlowValue, old: Option<&Flow>, now_ns: u64, interval: Duration) -> Flow {
    // A new flow counts from zero, from its first packet.
    let (p0, b0, base_ns) = old.map_or((0, 0, value.first_seen_ns), |f| {
        (f.base_packets, f.base_bytes, f.base_ns)
    });
    let elapsed = now_ns.saturating_sub(base_ns);
    let secs = elapsed as f64 / 1e9;
    let (packets_per_second, bytes_per_second) = if secs >= 0.1 {
        (
            value.packets.saturating_sub(p0) as f64 / secs,
            value.bytes.saturating_sub(b0) as f64 / secs,
        )
    } else {
        old.map_or((0.0, 0.0), |f| (f.packets_per_second, f.bytes_per_second))
    };
    let moves = elapsed >= interval.as_nanos() as u64;
    Flow {
        value: *value,
        packets_per_second,
        bytes_per_second,
        base_packets: if moves { value.packets } else { p0 },
        base_bytes: if moves { value.bytes } else { b0 },
        base_ns: if moves { now_ns } else { base_ns },
    }
}

struct Table {
    flows: FastMap<FlowKey, Flow>,
    /// The table's bookkeeping at that read.
    table: FlowTable,
}

/// What the last read found; moved to the reading thread and back.
#[derive(Default)]
pub struct Snapshot {
    enabled: bool,
    tables: BTreeMap<String, Table>,
    clock: Option<MonotonicToWall>,
    /// When the read behind it started.
    read_at: Option<Instant>,
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
            FlowMsg::Tables { reply } => {
                let tables_only = FlowQuery {
                    limit: Some(0),
                    ..FlowQuery::default()
                };
                let interval = state.args.interval;
                match state.snapshot.as_mut() {
                    Some(s) if s.read_at.is_some_and(|at| at.elapsed() < interval) => {
                        let _ = reply.send(s.answer(&tables_only));
                    }
                    _ => {
                        state.waiting.push((tables_only, reply));
                        state.start_read(&myself).await;
                    }
                }
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
        let sources = match ActorRef::<LoaderMsg>::where_is(self.args.loader.clone()) {
            Some(loader) => ask(&loader, "LoaderActor", |reply| LoaderMsg::FlowSources {
                reply,
            })
            .await
            .unwrap_or_default(),
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
            interval: self.args.interval,
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
    /// The timed read's interval: rates span one to two of these.
    interval: Duration,
    enabled: bool,
    queries: Vec<(FlowQuery, RpcReplyPort<FlowList>)>,
    age_out: Option<RpcReplyPort<u64>>,
}

impl Read {
    fn run(self, mut before: Snapshot) -> Box<Snapshot> {
        let started = Instant::now();
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
                        aged_out += removed.flows;
                        scan.removed += removed.from_table;
                        scan.table_entries = scan.table_entries.saturating_sub(removed.from_table);
                        scan.aged_out += removed.flows;
                        scan.flows.retain(|(_, v)| v.last_seen_ns >= cutoff);
                    }
                    Err(e) => warn!(program_id = %id, error = %e, "ageing out idle flows failed"),
                }
            }
            let old = before.tables.remove(id);
            let mut flows = FastMap::with_capacity_and_hasher(scan.flows.len(), Default::default());
            for (key, value) in &scan.flows {
                let before = old.as_ref().and_then(|o| o.flows.get(key));
                flows.insert(*key, rates(value, before, now_ns, self.interval));
            }
            tables.insert(
                id.clone(),
                Table {
                    table: scan.table(id),
                    flows,
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
            read_at: Some(started),
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
        if query.limit == Some(0) {
            return list;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn value(packets: u64, first_seen_ns: u64) -> FlowValue {
        FlowValue {
            packets,
            bytes: packets * 100,
            first_seen_ns,
            ..FlowValue::default()
        }
    }

    #[test]
    fn rates_span_at_least_an_interval_not_the_gap_between_two_reads() {
        let interval = Duration::from_secs(1);
        // New at 10 s; read at 12 s with 200 packets: 100 pps since its first packet.
        let f = rates(&value(200, 10 * S), None, 12 * S, interval);
        assert_eq!(f.packets_per_second, 100.0);
        assert_eq!((f.base_packets, f.base_ns), (200, 12 * S), "the base moved");
        // A query's read 5 ms later, 3 packets more (a burst): still measured from the base,
        // which stays.
        let g = rates(&value(203, 10 * S), Some(&f), 12 * S + 5_000_000, interval);
        assert_eq!(
            g.packets_per_second, f.packets_per_second,
            "too short to measure"
        );
        assert_eq!(g.base_ns, 12 * S);
        // Half a second on, 50 more: 100 pps over the half second, base still there.
        let h = rates(&value(250, 10 * S), Some(&g), 12 * S + S / 2, interval);
        assert_eq!(h.packets_per_second, 100.0);
        assert_eq!(h.base_ns, 12 * S);
        // A flow younger than 0.1 s has no rate yet.
        assert_eq!(
            rates(&value(5, 20 * S), None, 20 * S + 1_000, interval).packets_per_second,
            0.0
        );
    }
}
