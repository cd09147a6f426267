//! Runs a test's own binary as a child process in a given role, reads the lines it prints and
//! kills it with SIGKILL.
//!
//! The parent runs `current_exe() --exact TEST --nocapture` with the role and the database
//! directory in environment variables; the same test function reads them and plays the child.
//! Children print their reports as lines starting with `CHILD `.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

const ROLE_VAR: &str = "AQUEDUCT_PATTERNS_TEST_ROLE";
const DB_VAR: &str = "AQUEDUCT_PATTERNS_TEST_DB";
const PREFIX: &str = "CHILD ";

/// Returns the role and database directory when this process is a child.
pub fn child_role() -> Option<(String, PathBuf)> {
    let role = std::env::var(ROLE_VAR).ok()?;
    let db = std::env::var_os(DB_VAR)?;
    Some((role, PathBuf::from(db)))
}

/// Prints a report line for the parent.
pub fn report(line: &str) {
    println!("{PREFIX}{line}");
}

/// A child process and the report lines it printed so far.
pub struct Child {
    process: std::process::Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

/// Starts test `test` of this binary as a child in `role` on database `db`.
pub fn spawn(test: &str, role: &str, db: &Path) -> Child {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut process = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, role)
        .env(DB_VAR, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child process");
    let stdout = process.stdout.take().expect("child stdout");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // The harness prints `test NAME ... ` without a newline before the first report.
            if let Some(start) = line.find(PREFIX) {
                let report = &line[start + PREFIX.len()..];
                if sender.send(report.to_string()).is_err() {
                    break;
                }
            }
        }
    });
    Child {
        process,
        lines,
        seen: Vec::new(),
    }
}

impl Child {
    /// Waits up to `timeout` for a report line that satisfies `wanted`; returns it.
    pub fn wait_for(&mut self, timeout: Duration, wanted: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if wanted(&line) {
                return Some(line);
            }
        }
    }

    /// Kills the child with SIGKILL, waits for it, and returns every report line it printed.
    pub fn kill(mut self) -> Vec<String> {
        self.process.kill().expect("SIGKILL the child");
        self.process.wait().expect("reap the child");
        // The reader thread ends when the pipe closes, after the last line.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        self.seen
    }
}
