//! The daemon's log file: created with its directory, written as stderr is, rotated by size.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chaos_tests::{Daemon, NetNs};

fn rotated(log_file: &Path, n: u32) -> PathBuf {
    let mut name = log_file.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

#[test]
fn the_log_file_is_rotated_by_size_and_keeps_log_max_files() {
    let ns = NetNs::new("logs");
    let daemon = Daemon::start(
        &ns,
        "auto_load_programs = false\nlog_max_bytes = 4096\nlog_max_files = 2\n",
    );
    let log_file = daemon.log_file();
    assert!(
        log_file.exists(),
        "the daemon creates {} and its directory",
        log_file.display()
    );
    // Every request is a DEBUG line once debug is on: enough of them fill several files.
    daemon.cli_json(&["debug", "--enable", "--log-level", "DEBUG"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rotated(&log_file, 2).exists() || !rotated(&log_file, 1).exists() {
        assert!(
            Instant::now() < deadline,
            "no rotation to .1 and .2 after 30 s of requests:\n{:?}",
            std::fs::read_dir(log_file.parent().unwrap())
                .unwrap()
                .collect::<Vec<_>>()
        );
        for _ in 0..10 {
            daemon.cli_json(&["status"]);
        }
    }
    // A few more rotations: still two kept, none older.
    for _ in 0..60 {
        daemon.cli_json(&["status"]);
    }
    daemon.cli_json(&["debug", "--disable"]);
    // The writer is asynchronous; give it a moment to catch up with the last request.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !rotated(&log_file, 3).exists(),
        "log_max_files = 2 keeps .1 and .2 only"
    );
    for n in [1, 2] {
        let text = std::fs::read_to_string(rotated(&log_file, n)).unwrap();
        // BytesSurpassed: a file is cut after the write that crosses the limit, so whole
        // lines stay together; one log line is far below 4 KiB.
        assert!(
            (4096..4096 + 2048).contains(&text.len()),
            ".{n} holds {} bytes",
            text.len()
        );
        assert!(text.ends_with('\n'), ".{n} ends with a whole line");
        assert!(text.contains("DEBUG"), "{text}");
    }
    let current = std::fs::read_to_string(&log_file).unwrap();
    assert!(current.len() < 4096 + 2048, "{}", current.len());
    assert!(current.contains("log filter changed"), "{current}");
}

#[test]
fn a_log_file_that_cannot_be_written_is_reported_and_the_daemon_runs() {
    let ns = NetNs::new("logs");
    // A regular file where the log directory should be: the directory cannot be created.
    let blocker = tempfile::NamedTempFile::new().unwrap();
    let log_file = blocker.path().join("ebpf.log");
    let daemon = Daemon::start_with(
        &ns,
        "auto_load_programs = false\n",
        &["--log-file", log_file.to_str().unwrap()],
        &[],
    );
    let status = daemon.cli_json(&["status"]);
    assert!(status.get("programs_loaded").is_some(), "{status}");
    let stderr = daemon.log_text();
    assert!(
        stderr.contains("logging to stderr only") && stderr.contains(log_file.to_str().unwrap()),
        "{stderr}"
    );
}
