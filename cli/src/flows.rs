//! `x0tta6bl4-ebpf flows`: the flows the firewall has seen, filtered like `hubble observe`.

use actors::api::{Cidr, FlowList, FlowQuery, FlowSort, FlowVerdict, Protocol};
use clap::{Args, ValueEnum};
use comfy_table::{Table, presets::NOTHING};

use crate::render::endpoint;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VerdictArg {
    Forwarded,
    Dropped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortArg {
    Packets,
    Bytes,
    LastSeen,
}

#[derive(Args, Debug)]
pub struct FlowArgs {
    /// Keep printing flows as they appear or change (every second) until Ctrl-C.
    #[arg(long, short)]
    pub follow: bool,
    /// Source address or CIDR.
    #[arg(long)]
    source: Option<Cidr>,
    /// Destination address or CIDR.
    #[arg(long)]
    dest: Option<Cidr>,
    #[arg(long)]
    protocol: Option<Protocol>,
    /// Source or destination port.
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    sport: Option<u16>,
    #[arg(long)]
    dport: Option<u16>,
    #[arg(long)]
    min_packets: Option<u64>,
    #[arg(long, value_enum)]
    verdict: Option<VerdictArg>,
    #[arg(long)]
    interface: Option<String>,
    #[arg(long, value_enum, default_value = "packets")]
    sort: SortArg,
    #[arg(long)]
    limit: Option<usize>,
}

impl FlowArgs {
    pub fn query(&self) -> FlowQuery {
        FlowQuery {
            source: self.source,
            dest: self.dest,
            protocol: self.protocol,
            port: self.port,
            source_port: self.sport,
            dest_port: self.dport,
            min_packets: self.min_packets,
            verdict: self.verdict.map(|v| match v {
                VerdictArg::Forwarded => FlowVerdict::Forwarded,
                VerdictArg::Dropped => FlowVerdict::Dropped,
            }),
            interface: self.interface.clone(),
            sort: match self.sort {
                SortArg::Packets => FlowSort::Packets,
                SortArg::Bytes => FlowSort::Bytes,
                SortArg::LastSeen => FlowSort::LastSeen,
            },
            limit: self.limit,
        }
    }
}

/// `flows --follow`: asks the daemon every second and prints the flows that are new or saw
/// packets since the last look (as JSON lines with `--json`), until Ctrl-C or a lost daemon.
pub fn follow(
    socket: &std::path::Path,
    timeout: std::time::Duration,
    query: FlowQuery,
    as_json: bool,
) -> Result<(), String> {
    use std::collections::HashMap;
    use std::io::Write as _;
    let query = FlowQuery {
        limit: None,
        ..query
    };
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut out = std::io::stdout();
    loop {
        let list =
            match crate::client::call(socket, timeout, &actors::api::Request::Flows(query.clone()))
            {
                Ok(actors::api::Response::Flows(list)) => list,
                Ok(actors::api::Response::Error(e)) => return Err(e.message),
                Ok(_) => return Err("unexpected answer to flows".into()),
                Err(
                    crate::client::ClientError::Unreachable(m)
                    | crate::client::ClientError::Exchange(m),
                ) => return Err(m),
            };
        if !list.enabled {
            return Err(
                "flow accounting is off (enable_flow_observability = false in the daemon's config)"
                    .into(),
            );
        }
        let mut changed: Vec<_> = list
            .flows
            .into_iter()
            .filter(|f| {
                let key = format!(
                    "{}|{}|{}|{}|{}|{}",
                    f.source,
                    f.source_port,
                    f.destination,
                    f.destination_port,
                    f.protocol,
                    f.interface
                );
                seen.insert(key, f.packets) != Some(f.packets)
            })
            .collect();
        changed.sort_by(|a, b| a.last_seen.cmp(&b.last_seen));
        for f in &changed {
            let line = if as_json {
                serde_json::to_string(f).expect("flows serialize")
            } else {
                format!(
                    "{}  {}:{} -> {}:{}  {}  {} packets  {} bytes  {:?}  {}",
                    f.last_seen,
                    f.source,
                    f.source_port,
                    f.destination,
                    f.destination_port,
                    f.protocol,
                    f.packets,
                    f.bytes,
                    f.verdict,
                    f.interface
                )
                .to_lowercase()
            };
            if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
                return Ok(()); // the reader went away (a closed pipe)
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

pub fn render(list: &FlowList) -> String {
    if !list.enabled {
        return "flow accounting is off (enable_flow_observability = false in the daemon's config)\n".into();
    }
    let mut out = String::new();
    if list.flows.is_empty() {
        out.push_str("no flows match\n");
    } else {
        let mut t = Table::new();
        t.load_preset(NOTHING);
        t.set_header([
            "SOURCE",
            "DESTINATION",
            "PROTO",
            "PACKETS",
            "BYTES",
            "PPS",
            "VERDICT",
            "FLAGS",
            "INTERFACE",
            "LAST SEEN",
        ]);
        for f in &list.flows {
            t.add_row(vec![
                endpoint(&f.source, f.source_port),
                endpoint(&f.destination, f.destination_port),
                f.protocol.clone(),
                f.packets.to_string(),
                f.bytes.to_string(),
                format!("{:.0}", f.packets_per_second),
                f.verdict.to_string(),
                if f.tcp_flags.is_empty() {
                    "-".into()
                } else {
                    f.tcp_flags.clone()
                },
                f.interface.clone(),
                f.last_seen.clone(),
            ]);
        }
        out.push_str(&format!("{t}\n"));
    }
    for table in &list.tables {
        if table.evicted > 0 || table.insert_failures > 0 {
            out.push_str(&format!(
                "{}: the flow table ({} entries) pushed out {} flows and failed {} inserts; raise flow_table_size\n",
                table.program_id, table.capacity, table.evicted, table.insert_failures
            ));
        }
    }
    out
}
