//! `x0tta6bl4-ebpf top` in a real terminal (tmux): it shows the daemon's attachment and the
//! flows of real traffic, refreshes, and quits on `q`.

use std::process::Command;
use std::time::{Duration, Instant};

use chaos_tests::{Daemon, TwoHosts};

/// A detached tmux session, killed on drop.
struct Tmux(String);

impl Tmux {
    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn alive(&self) -> bool {
        Command::new("tmux")
            .args(["has-session", "-t", &self.0])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

#[test]
fn top_shows_attachments_and_flows_live_and_quits_on_q() {
    let hosts = TwoHosts::new();
    let config = format!(
        "interface = \"{}\"\n[programs.xdp_firewall]\nattach_mode = \"skb\"\n",
        hosts.if_a
    );
    let daemon = Daemon::start(&hosts.a, &config);
    daemon.wait_attached();
    let session = Tmux(format!("x0t-top-{}", std::process::id()));
    let command = format!(
        "{} --socket {} top",
        chaos_tests::binary("x0tta6bl4-ebpf").display(),
        daemon.socket.display()
    );
    chaos_tests::run(Command::new("tmux").args([
        "new-session",
        "-d",
        "-s",
        &session.0,
        "-x",
        "120",
        "-y",
        "40",
        &command,
    ]));
    let wait_for = |what: &str, needles: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = session.screen();
            if needles.iter().all(|n| screen.contains(n)) {
                return screen;
            }
            assert!(Instant::now() < deadline, "{what}; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for(
        "top should show the daemon and its attachment",
        &["x0tta6bl4-ebpfd", "pps", "xdp_firewall-1", &hosts.if_a],
    );
    assert_eq!(hosts.ping(hosts.ips_b[0], 3), 3);
    wait_for(
        "top should show the ping's flow",
        &[&hosts.ips_b[0].to_string(), "icmp", "forwarded"],
    );
    Command::new("tmux")
        .args(["send-keys", "-t", &session.0, "q"])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while session.alive() {
        assert!(Instant::now() < deadline, "top did not quit on q");
        std::thread::sleep(Duration::from_millis(50));
    }
}
