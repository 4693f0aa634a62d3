//! `x0tta6bl4-ebpf flows`: the flows the firewall has seen, filtered like `hubble observe`.

use actors::api::{Cidr, FlowList, FlowQuery, FlowSort, FlowVerdict, Protocol};
use clap::{Args, ValueEnum};
use comfy_table::{Table, presets::NOTHING};

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
            "VERDICT",
            "FLAGS",
            "INTERFACE",
            "LAST SEEN",
        ]);
        for f in &list.flows {
            let endpoint = |ip: &std::net::IpAddr, port: u16| {
                let host = if ip.is_ipv6() {
                    format!("[{ip}]")
                } else {
                    ip.to_string()
                };
                if port == 0 {
                    host
                } else {
                    format!("{host}:{port}")
                }
            };
            t.add_row(vec![
                endpoint(&f.source, f.source_port),
                endpoint(&f.destination, f.destination_port),
                f.protocol.clone(),
                f.packets.to_string(),
                f.bytes.to_string(),
                match f.verdict {
                    FlowVerdict::Forwarded => "forwarded".into(),
                    FlowVerdict::Dropped => "dropped".into(),
                },
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
