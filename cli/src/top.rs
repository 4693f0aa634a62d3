//! `x0tta6bl4-ebpf top`: a live view of the daemon, refreshed every second: throughput and
//! drop rate (with a minute of history), attachments and their modes, active alerts, and the
//! busiest flows. `q`, Esc or Ctrl-C quits. A daemon that goes away is shown, and retried.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use actors::api::{Alert, FlowQuery, FlowRecord, FlowSort, Request, Response, Status};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table};

use crate::client::{self, ClientError};
use crate::render::{endpoint, mode};

const REFRESH: Duration = Duration::from_secs(1);
const HISTORY: usize = 120;

struct View {
    status: Option<Status>,
    alerts: Vec<Alert>,
    flows: Vec<FlowRecord>,
    problem: Option<String>,
    pps: f64,
    drop_rate: f64,
    history: VecDeque<u64>,
}

fn ask(socket: &Path, timeout: Duration, request: Request) -> Result<Response, String> {
    match client::call(socket, timeout, &request) {
        Ok(Response::Error(e)) => Err(e.message),
        Ok(r) => Ok(r),
        Err(ClientError::Unreachable(m) | ClientError::Exchange(m)) => Err(m),
    }
}

fn refresh(
    socket: &Path,
    timeout: Duration,
    view: &mut View,
    last: &mut Option<(Instant, u64, u64)>,
) {
    let status = match ask(socket, timeout, Request::Status) {
        Ok(Response::Status(s)) => s,
        Ok(_) => return,
        Err(m) => {
            view.problem = Some(m);
            return;
        }
    };
    view.problem = None;
    let now = Instant::now();
    if let Some((then, processed, dropped)) = *last {
        let secs = now.duration_since(then).as_secs_f64().max(0.001);
        let dp = status.processed_packets.saturating_sub(processed);
        let dd = status.blocked_packets.saturating_sub(dropped);
        view.pps = dp as f64 / secs;
        view.drop_rate = if dp == 0 { 0.0 } else { dd as f64 / dp as f64 };
        view.history.push_back(view.pps as u64);
        while view.history.len() > HISTORY {
            view.history.pop_front();
        }
    }
    *last = Some((now, status.processed_packets, status.blocked_packets));
    view.status = Some(status);
    if let Ok(Response::Alerts(a)) = ask(socket, timeout, Request::Alerts) {
        view.alerts = a;
    }
    let top = FlowQuery {
        sort: FlowSort::Bytes,
        limit: Some(15),
        ..FlowQuery::default()
    };
    if let Ok(Response::Flows(f)) = ask(socket, timeout, Request::Flows(top)) {
        view.flows = f.flows;
    }
}

fn draw(frame: &mut ratatui::Frame, view: &View) {
    let [header, spark, middle, flows, help] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Min(5),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let headline = match (&view.status, &view.problem) {
        (_, Some(problem)) => Line::from(Span::styled(
            problem.clone(),
            Style::default().fg(Color::Red),
        )),
        (Some(s), None) => Line::from(vec![
            Span::styled(format!("x0tta6bl4-ebpfd {}", s.version), bold),
            Span::raw(format!(
                "  up {}s  programs {}  ",
                s.uptime_seconds, s.programs_loaded
            )),
            Span::styled(format!("{:.0} pps", view.pps), bold),
            Span::raw("  drop rate "),
            Span::styled(
                format!("{:.1}%", view.drop_rate * 100.0),
                if view.drop_rate > 0.05 {
                    Style::default().fg(Color::Yellow)
                } else {
                    Style::default()
                },
            ),
            Span::raw(format!(
                "  processed {}  blocked {}",
                s.processed_packets, s.blocked_packets
            )),
        ]),
        (None, None) => Line::from("connecting…"),
    };
    frame.render_widget(
        Paragraph::new(headline).block(
            Block::default()
                .borders(Borders::ALL)
                .title(" x0tta6bl4 top "),
        ),
        header,
    );
    let history: Vec<u64> = view.history.iter().copied().collect();
    frame.render_widget(
        Sparkline::default()
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" packets per second "),
            )
            .data(&history)
            .style(Style::default().fg(Color::Green)),
        spark,
    );
    let [attachments, alerts] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(middle);
    let rows: Vec<Row> = view
        .status
        .iter()
        .flat_map(|s| s.attachments.iter())
        .map(|a| {
            Row::new(vec![
                Cell::from(a.program_id.clone()),
                Cell::from(a.interface.clone()),
                Cell::from(mode(a)),
            ])
        })
        .collect();
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Percentage(35),
                Constraint::Percentage(30),
                Constraint::Percentage(35),
            ],
        )
        .header(Row::new(vec!["PROGRAM", "INTERFACE", "MODE"]).style(bold))
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" attachments "),
        ),
        attachments,
    );
    let alert_lines: Vec<Line> = if view.alerts.is_empty() {
        vec![Line::from("no active alerts")]
    } else {
        view.alerts
            .iter()
            .map(|a| {
                Line::from(vec![
                    Span::styled(format!("{} ", a.id), Style::default().fg(Color::Red)),
                    Span::raw(a.message.clone()),
                ])
            })
            .collect()
    };
    frame.render_widget(
        Paragraph::new(alert_lines).block(Block::default().borders(Borders::ALL).title(" alerts ")),
        alerts,
    );
    let rows: Vec<Row> = view
        .flows
        .iter()
        .map(|f| {
            Row::new(vec![
                endpoint(&f.source, f.source_port),
                endpoint(&f.destination, f.destination_port),
                f.protocol.clone(),
                f.packets.to_string(),
                f.bytes.to_string(),
                f.verdict.to_string(),
            ])
        })
        .collect();
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Percentage(25),
                Constraint::Percentage(25),
                Constraint::Percentage(8),
                Constraint::Percentage(14),
                Constraint::Percentage(14),
                Constraint::Percentage(14),
            ],
        )
        .header(
            Row::new(vec![
                "SOURCE",
                "DESTINATION",
                "PROTO",
                "PACKETS",
                "BYTES",
                "VERDICT",
            ])
            .style(bold),
        )
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" top flows (by bytes) "),
        ),
        flows,
    );
    frame.render_widget(Paragraph::new("q quit"), help);
}

pub fn run(socket: &Path, timeout: Duration) -> Result<(), String> {
    let mut terminal = ratatui::init();
    let result = (|| -> std::io::Result<()> {
        let mut view = View {
            status: None,
            alerts: Vec::new(),
            flows: Vec::new(),
            problem: None,
            pps: 0.0,
            drop_rate: 0.0,
            history: VecDeque::new(),
        };
        let mut last = None;
        loop {
            refresh(socket, timeout, &mut view, &mut last);
            terminal.draw(|f| draw(f, &view))?;
            let deadline = Instant::now() + REFRESH;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if !event::poll(left)? {
                    break;
                }
                if let Event::Key(k) = event::read()? {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result.map_err(|e| format!("the terminal failed: {e}"))
}
