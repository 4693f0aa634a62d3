//! The testbed the integration tests (and, later, the chaos scenarios) stand on: network
//! namespaces joined by veth pairs, the real daemon started inside one of them, and the real
//! CLI. Every piece is an RAII guard, so a failing test still removes what it created.
//!
//! Tests that need root fail loudly through [`require_root`]; they never skip.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd as _;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Panics with a clear message unless this process can load BPF programs and create netns.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test needs root (BPF, network namespaces, veth): run it as root, e.g. \
             `sudo -E cargo xtask test`; it does not skip"
        );
    }
}

/// Runs `cmd`, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (is it installed? `cargo xtask setup` installs it)")
    });
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "x0t{}{}{}",
        tag,
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = unique(tag);
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs inside this namespace. `nsenter` rather than `ip netns exec`:
    /// the latter remounts /sys, which hides bpffs.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        cmd
    }

    pub fn exec(&self, argv: &[&str]) -> Output {
        run(self.command(argv[0]).args(&argv[1..]))
    }

    /// Runs `f` on a thread that has entered this namespace (for sockets made in-process).
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.path()).expect("open netns file");
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("setns into the test namespace");
                f()
            })
            .join()
            .expect("thread inside the test namespace panicked")
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two hosts joined by a veth pair: `a` (where the daemon runs) and `b` (the traffic source).
/// IPv6 is off and neighbours are static, so the only packets on the wire are the test's own
/// and counters can be compared exactly.
pub struct TwoHosts {
    pub a: NetNs,
    pub b: NetNs,
    /// Interface in `a`.
    pub if_a: String,
    /// Interface in `b`.
    pub if_b: String,
    pub ip_a: Ipv4Addr,
    /// `b`'s addresses: the first is allowed by the test configs, the second is denied.
    pub ips_b: [Ipv4Addr; 2],
}

impl TwoHosts {
    pub fn new() -> TwoHosts {
        require_root();
        let a = NetNs::new("a");
        let b = NetNs::new("b");
        let if_a = unique("va");
        let if_b = unique("vb");
        run(Command::new("ip").args([
            "link", "add", &if_a, "netns", &a.name, "type", "veth", "peer", "name", &if_b, "netns",
            &b.name,
        ]));
        let ip_a = Ipv4Addr::new(10, 77, 0, 1);
        let ips_b = [Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(10, 77, 0, 3)];
        for (ns, ifname) in [(&a, &if_a), (&b, &if_b)] {
            ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"]);
            ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"]);
            ns.exec(&[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv6.conf.{ifname}.disable_ipv6=1"),
            ]);
        }
        a.exec(&["ip", "addr", "add", &format!("{ip_a}/24"), "dev", &if_a]);
        for ip in ips_b {
            b.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", &if_b]);
        }
        a.exec(&["ip", "link", "set", &if_a, "up"]);
        b.exec(&["ip", "link", "set", &if_b, "up"]);
        let mac = |ns: &NetNs, ifname: &str| {
            // Not /sys/class/net: nsenter keeps the root namespace's /sys.
            let out = ns.exec(&["ip", "-j", "link", "show", "dev", ifname]);
            let link: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("ip -j output");
            link[0]["address"]
                .as_str()
                .expect("interface has a MAC")
                .to_string()
        };
        let mac_a = mac(&a, &if_a);
        let mac_b = mac(&b, &if_b);
        b.exec(&[
            "ip",
            "neigh",
            "replace",
            &ip_a.to_string(),
            "lladdr",
            &mac_a,
            "dev",
            &if_b,
            "nud",
            "permanent",
        ]);
        for ip in ips_b {
            a.exec(&[
                "ip",
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                &mac_b,
                "dev",
                &if_a,
                "nud",
                "permanent",
            ]);
        }
        TwoHosts {
            a,
            b,
            if_a,
            if_b,
            ip_a,
            ips_b,
        }
    }

    /// Sends `count` UDP datagrams of `payload` bytes from `b` (bound to `from`, any source
    /// port) to `a`.
    pub fn send_udp(&self, from: Ipv4Addr, port: u16, count: usize, payload: usize) {
        self.send_udp_from_port(from, 0, port, count, payload);
    }

    /// Like `send_udp` from a fixed source port, so that successive calls are one flow.
    pub fn send_udp_from_port(
        &self,
        from: Ipv4Addr,
        source_port: u16,
        port: u16,
        count: usize,
        payload: usize,
    ) {
        let to = SocketAddrV4::new(self.ip_a, port);
        self.b.within(|| {
            let socket =
                UdpSocket::bind(SocketAddrV4::new(from, source_port)).expect("bind UDP sender");
            let data = vec![0x5au8; payload];
            for _ in 0..count {
                socket.send_to(&data, to).expect("send UDP datagram");
            }
        });
    }

    /// Pings `a` from `b` (bound to `from`); returns how many replies came back.
    pub fn ping(&self, from: Ipv4Addr, count: u32) -> u32 {
        ping(&self.b, self.ip_a, Some(from), count)
    }
}

impl Default for TwoHosts {
    fn default() -> Self {
        Self::new()
    }
}

/// `count` pings from `ns` to `to` (from the address `from` when given), 10 ms apart, each
/// waited for up to 1 s; returns how many replies came back.
pub fn ping(ns: &NetNs, to: Ipv4Addr, from: Option<Ipv4Addr>, count: u32) -> u32 {
    let mut cmd = ns.command("ping");
    cmd.args([
        "-n",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.01",
        "-W",
        "1",
    ]);
    if let Some(from) = from {
        cmd.arg("-I").arg(from.to_string());
    }
    let out = cmd
        .arg(to.to_string())
        .output()
        .expect("run ping (package iputils-ping; `cargo xtask setup` installs it)");
    ping_replies(&out)
}

/// The replies `ping -q` reports in its summary.
pub fn ping_replies(out: &Output) -> u32 {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split(", ").find_map(|p| p.strip_suffix(" received")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("cannot read ping's summary: {text}"))
}

/// An iperf3 server in a namespace, killed when dropped.
pub struct Iperf3Server(std::process::Child);

impl Iperf3Server {
    pub fn start(ns: &NetNs, bind: Ipv4Addr) -> Iperf3Server {
        let child = ns
            .command("iperf3")
            .args(["-s", "-B", &bind.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start iperf3 (package iperf3; `cargo xtask setup` installs it)");
        std::thread::sleep(Duration::from_millis(300));
        Iperf3Server(child)
    }
}

impl Drop for Iperf3Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs an iperf3 TCP client in `ns` to `to` for `seconds` (the first second, slow start,
/// left out) while pinging `to` every 20 ms; returns iperf3's received rate (bit/s) and the
/// ping RTTs (ms).
pub fn iperf3_with_ping(ns: &NetNs, to: Ipv4Addr, seconds: u32) -> (f64, Vec<f64>) {
    let to = to.to_string();
    let ping = ns
        .command("ping")
        .args(["-n", "-i", "0.02", "-w", &(seconds + 1).to_string(), &to])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start ping");
    let out = ns
        .command("iperf3")
        .args(["-c", &to, "-t", &seconds.to_string(), "-O", "1", "-J"])
        .output()
        .expect("run iperf3");
    assert!(
        out.status.success(),
        "iperf3 failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 -J");
    let rate = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("iperf3 reports the received rate");
    let ping = ping.wait_with_output().expect("ping ends");
    let rtts = String::from_utf8_lossy(&ping.stdout)
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect();
    (rate, rtts)
}

/// Three hosts in a row, A — B — C, each pair joined by a veth: A is 10.61.1.2 (on `a_if`),
/// B is 10.61.1.1 (on `b_to_a`) and 10.61.3.1 (on `b_to_c`), C is 10.61.3.2 (on `c_if`). A
/// and C route everything through B; B's kernel does not forward (forwarding is off in a new
/// namespace), so A reaches C only when something else on B forwards.
pub struct Chain {
    pub a: NetNs,
    pub b: NetNs,
    pub c: NetNs,
    pub a_if: String,
    pub b_to_a: String,
    pub b_to_c: String,
    pub c_if: String,
}

impl Chain {
    pub const A: Ipv4Addr = Ipv4Addr::new(10, 61, 1, 2);
    pub const B_A: Ipv4Addr = Ipv4Addr::new(10, 61, 1, 1);
    pub const B_C: Ipv4Addr = Ipv4Addr::new(10, 61, 3, 1);
    pub const C: Ipv4Addr = Ipv4Addr::new(10, 61, 3, 2);

    pub fn new() -> Chain {
        require_root();
        let (a, b, c) = (NetNs::new("ca"), NetNs::new("cb"), NetNs::new("cc"));
        let (a_if, b_to_a, b_to_c, c_if) =
            (unique("ra"), unique("rba"), unique("rbc"), unique("rc"));
        for (x, xi, y, yi) in [(&a, &a_if, &b, &b_to_a), (&c, &c_if, &b, &b_to_c)] {
            run(Command::new("ip").args([
                "link", "add", xi, "netns", &x.name, "type", "veth", "peer", "name", yi, "netns",
                &y.name,
            ]));
        }
        for (ns, ifname, address) in [
            (&a, &a_if, "10.61.1.2/24"),
            (&b, &b_to_a, "10.61.1.1/24"),
            (&b, &b_to_c, "10.61.3.1/24"),
            (&c, &c_if, "10.61.3.2/24"),
        ] {
            ns.exec(&[
                "sysctl",
                "-q",
                "-w",
                &format!("net.ipv6.conf.{ifname}.disable_ipv6=1"),
            ]);
            ns.exec(&["ip", "addr", "add", address, "dev", ifname]);
            ns.exec(&["ip", "link", "set", ifname, "up"]);
        }
        a.exec(&["ip", "route", "add", "default", "via", "10.61.1.1"]);
        c.exec(&["ip", "route", "add", "default", "via", "10.61.3.1"]);
        b.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]);
        Chain {
            a,
            b,
            c,
            a_if,
            b_to_a,
            b_to_c,
            c_if,
        }
    }

    /// The MAC of `ifname` in `ns`.
    pub fn mac(ns: &NetNs, ifname: &str) -> String {
        let out = ns.exec(&["ip", "-j", "link", "show", "dev", ifname]);
        let link: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
        link[0]["address"].as_str().expect("a MAC").to_string()
    }

    /// Pings `to` from A; returns the replies.
    pub fn ping_from_a(&self, to: Ipv4Addr, count: u32) -> u32 {
        ping(&self.a, to, None, count)
    }

    /// The routes file B needs to forward between A and C.
    pub fn routes_json(&self) -> String {
        serde_json::json!([
            {"prefix": "10.61.3.0/24", "interface": self.b_to_c, "next_hop_mac": Chain::mac(&self.c, &self.c_if)},
            {"prefix": "10.61.1.0/24", "interface": self.b_to_a, "next_hop_mac": Chain::mac(&self.a, &self.a_if)},
        ])
        .to_string()
    }
}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

/// A veth pair in the namespace of the calling process (for in-process actor tests, whose
/// threads live there), deleted on drop.
pub struct LocalVeth {
    pub name: String,
    pub peer: String,
}

impl LocalVeth {
    pub fn new() -> LocalVeth {
        require_root();
        let name = unique("lv");
        let peer = unique("lp");
        run(Command::new("ip").args(["link", "add", &name, "type", "veth", "peer", "name", &peer]));
        let veth = LocalVeth { name, peer };
        run(Command::new("ip").args(["link", "set", &veth.name, "up"]));
        run(Command::new("ip").args(["link", "set", &veth.peer, "up"]));
        veth
    }
}

impl Default for LocalVeth {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for LocalVeth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}

/// The directory holding the workspace's built binaries (`target/debug` or `target/release`),
/// found from the running executable: a test (`target/<profile>/deps/<test>`) or a binary
/// such as xtask (`target/<profile>/xtask`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable has a directory");
    if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "{} is not built; build the binaries first (`cargo build --bins`, which `cargo xtask test` does)",
            path.display()
        );
    }
    path
}

/// A running `x0tta6bl4-ebpfd` inside a namespace, with its own socket, pins, state and log.
/// Dropping it sends SIGTERM (then SIGKILL) and removes its files.
pub struct Daemon {
    child: Option<Child>,
    /// Extra command-line flags and environment, kept for restarts.
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub pin_root: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts the daemon in `ns` with `extra_config` appended to a config that sets every path.
    pub fn start(ns: &NetNs, extra_config: &str) -> Daemon {
        Daemon::start_with_flags(ns, extra_config, &[])
    }

    /// As `start`, with extra command-line flags (e.g. `--enable-fault-injection`).
    pub fn start_with_flags(ns: &NetNs, extra_config: &str, flags: &[&str]) -> Daemon {
        Daemon::start_with(ns, extra_config, flags, &[])
    }

    /// As `start`, with extra flags and environment variables.
    pub fn start_with(
        ns: &NetNs,
        extra_config: &str,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("x0t-daemon")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("ebpf.sock");
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/{}", unique("pins")));
        let log = dir.path().join("daemon.log");
        // The TCP probe is global (every namespace's connections): only the tests about it
        // turn it on.
        let tcp_probe = if extra_config.contains("enable_tcp_probe") {
            ""
        } else {
            "enable_tcp_probe = false\n"
        };
        // The XDP_ABORTED watch loads a program of its own (`xdp_exceptions`): only the tests
        // about it turn it on, so that `programs` shows what each test loaded.
        let abort_watch = if extra_config.contains("fallback_abort_rate") {
            ""
        } else {
            "fallback_abort_rate = 0\n"
        };
        std::fs::write(
            dir.path().join("ebpf.toml"),
            format!(
                "socket_path = \"{}\"\npin_root = \"{}\"\nstate_dir = \"{}\"\nlog_file = \"{}\"\nprograms_dir = \"{}\"\n{tcp_probe}{abort_watch}{extra_config}\n",
                socket.display(),
                pin_root.display(),
                dir.path().join("state").display(),
                // A directory that does not exist yet: the daemon creates it.
                dir.path().join("log/x0tta6bl4/ebpf.log").display(),
                dir.path().join("programs").display(),
            ),
        )
        .expect("write daemon config");
        std::fs::create_dir_all(dir.path().join("programs")).unwrap();
        let mut daemon = Daemon {
            child: None,
            args: flags.iter().map(|f| f.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
            socket,
            pin_root,
            log,
        };
        daemon.spawn(ns);
        daemon
    }

    /// Stops the daemon (SIGTERM) and starts it again in `ns` with the same config and state.
    pub fn restart(&mut self, ns: &NetNs) {
        if self.child.is_some() {
            assert!(
                self.stop().success(),
                "the daemon stops cleanly:\n{}",
                self.log_text()
            );
        }
        self.spawn(ns);
    }

    fn spawn(&mut self, ns: &NetNs) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let child = ns
            .command(binary("x0tta6bl4-ebpfd").to_str().unwrap())
            .arg("--config")
            .arg(self.dir.path().join("ebpf.toml"))
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn x0tta6bl4-ebpfd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "x0tta6bl4-ebpfd exited at start ({status}):\n{}",
                    self.log_text()
                );
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "x0tta6bl4-ebpfd did not open its socket within 20s:\n{}",
            self.log_text()
        );
    }

    /// The daemon's `log_file` (its stderr is `log_text`).
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("log/x0tta6bl4/ebpf.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the real CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(binary("x0tta6bl4-ebpf"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run x0tta6bl4-ebpf")
    }

    /// `shaper set INTERFACE --rate RATE --latency LATENCY`; returns `shaper show`'s answer.
    pub fn shaper_set(&self, interface: &str, rate: &str, latency: &str) -> serde_json::Value {
        self.cli_json(&[
            "shaper",
            "set",
            interface,
            "--rate",
            rate,
            "--latency",
            latency,
        ])
    }

    /// Runs the real CLI, which must fail with `expected` in what it prints; returns that.
    pub fn cli_fails(&self, args: &[&str], expected: &str) -> String {
        let out = self.cli(args);
        let err = stderr(&out);
        assert!(
            !out.status.success() && err.contains(expected),
            "x0tta6bl4-ebpf {args:?} should fail saying {expected:?}; it said: {err}"
        );
        err
    }

    /// Waits (up to 10 s) until some program is attached, e.g. by the startup plan; returns
    /// `programs --json`.
    pub fn wait_attached(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let programs = self.cli_json(&["programs"]);
            let attached = programs.as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["attachments"].as_array().is_some_and(|a| !a.is_empty()))
            });
            if attached {
                return programs;
            }
            assert!(
                Instant::now() < deadline,
                "nothing was attached within 10s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the CLI, asserts success, and parses its `--json` output.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "x0tta6bl4-ebpf {args:?} failed:\n{}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        serde_json::from_slice(&out.stdout).expect("CLI --json output is JSON")
    }

    /// The samples of metric `name` (from `metrics --json`) whose labels include every pair
    /// of `labels`, summed; `None` when there is none.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let snapshot = self.cli_json(&["metrics"]);
        let values: Vec<f64> = snapshot["samples"]
            .as_array()
            .expect("metrics --json has samples")
            .iter()
            .filter(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][*k] == *v))
            .filter_map(|s| s["value"].as_f64())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }

    /// The ids of the active alerts.
    pub fn alert_ids(&self) -> Vec<String> {
        self.cli_json(&["alerts"])
            .as_array()
            .expect("alerts --json is a list")
            .iter()
            .filter_map(|a| a["id"].as_str().map(String::from))
            .collect()
    }

    /// The daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: the daemon dies on the spot, as in a crash or an OOM kill.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("daemon already stopped");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits for the daemon to exit by itself; `None` if it still runs after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("daemon not running");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon again after `kill` or `stop`, with the same config and state.
    pub fn start_again(&mut self, ns: &NetNs) {
        assert!(self.child.is_none(), "the daemon is still running");
        self.spawn(ns);
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        // The child is nsenter, which exec()s the daemon: the pid is the daemon's.
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().expect("wait for killed daemon");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        // Whatever a failed test left pinned goes too.
        let _ = std::fs::remove_dir_all(&self.pin_root);
    }
}

/// Attaches `object`'s XDP program to `interface` in `ns` the way other tools do (netlink,
/// generic mode), as a program this daemon does not manage: loaded and attached with bpftool
/// through a temporary pin, which is removed (the attachment holds the program). Returns the
/// program's kernel id. (iproute2's `ip link … obj` would do too, but leaves its pinning
/// directories in bpffs.)
pub fn attach_foreign_xdp(ns: &NetNs, interface: &str, object: &[u8]) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("foreign.o");
    std::fs::write(&file, object).expect("write the object");
    let pin = PathBuf::from(format!("/sys/fs/bpf/{}", unique("foreign")));
    run(Command::new("bpftool").args([
        "prog",
        "load",
        file.to_str().unwrap(),
        pin.to_str().unwrap(),
        "type",
        "xdp",
    ]));
    let attached = ns
        .command("bpftool")
        .args([
            "net",
            "attach",
            "xdpgeneric",
            "pinned",
            pin.to_str().unwrap(),
            "dev",
            interface,
        ])
        .output()
        .expect("run bpftool");
    let shown = run(Command::new("bpftool").args([
        "--json",
        "prog",
        "show",
        "pinned",
        pin.to_str().unwrap(),
    ]));
    let _ = std::fs::remove_file(&pin);
    assert!(
        attached.status.success(),
        "bpftool net attach: {}",
        String::from_utf8_lossy(&attached.stderr)
    );
    let prog: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("bpftool --json");
    prog["id"].as_u64().expect("a program id")
}

/// Whether the kernel still has a program with this id (`bpftool prog show`).
/// What a command wrote to stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn kernel_has_program(id: u64) -> bool {
    bpftool_ids(&["prog", "show"], "id").contains(&id)
}

/// What bpftool says each map of program `kernel_id` costs: (`name`, `bytes_memlock`) for each
/// of the program's `map_ids`.
pub fn kernel_map_memlock_of(kernel_id: u64) -> Vec<(String, u64)> {
    let json = |args: &[&str]| -> serde_json::Value {
        let out = run(Command::new("bpftool").arg("--json").args(args));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "bpftool {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let id = kernel_id.to_string();
    let prog = json(&["prog", "show", "id", &id]);
    prog["map_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("bpftool shows no map_ids for program {kernel_id}: {prog}"))
        .iter()
        .map(|m| {
            let map_id = m.as_u64().unwrap().to_string();
            let map = json(&["map", "show", "id", &map_id]);
            let bytes = map["bytes_memlock"]
                .as_u64()
                .unwrap_or_else(|| panic!("bpftool shows no bytes_memlock for map {map_id}"));
            (map["name"].as_str().unwrap_or_default().to_string(), bytes)
        })
        .collect()
}

/// Ids of the bpf_links that point at program `kernel_id`.
pub fn kernel_links_of(kernel_id: u64) -> Vec<u64> {
    kernel_link_details_of(kernel_id)
        .iter()
        .filter_map(|l| l["id"].as_u64())
        .collect()
}

/// `bpftool link show`'s entries for the bpf_links that point at program `kernel_id`.
pub fn kernel_link_details_of(kernel_id: u64) -> Vec<serde_json::Value> {
    bpftool_list(&["link", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["prog_id"].as_u64() == Some(kernel_id))
        .cloned()
        .collect()
}

/// Program ids that some bpf_link in the kernel points at (`bpftool link show`).
pub fn kernel_linked_programs() -> Vec<u64> {
    bpftool_ids(&["link", "show"], "prog_id")
}

fn bpftool_ids(args: &[&str], field: &str) -> Vec<u64> {
    bpftool_list(args)
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p[field].as_u64())
        .collect()
}

/// `bpftool --json ARGS` for a listing (`prog show`, `link show`, …).
fn bpftool_list(args: &[&str]) -> serde_json::Value {
    // bpftool walks ids and then opens each; one torn down in between makes it fail with
    // EAGAIN ("can't get link by id"). Ask again: the answer after the teardown is the one
    // the test wants.
    let mut attempt = 0;
    let out = loop {
        let out = Command::new("bpftool")
            .arg("--json")
            .args(args)
            .output()
            .expect("run bpftool (`cargo xtask setup` installs it)");
        attempt += 1;
        if out.status.success() {
            break out;
        }
        if attempt == 20 {
            panic!(
                "bpftool {args:?} keeps failing: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    serde_json::from_slice(&out.stdout).expect("bpftool --json output")
}
