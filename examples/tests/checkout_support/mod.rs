//! Helpers shared by the checkout tests: the data slice, quiet runs, and child processes that
//! run the checkout and die by SIGKILL or `abort`.
//!
//! A recovery test runs its own binary again (`current_exe() --exact child_process`) with the
//! role and database directory in environment variables. The `child_process` test reads them
//! and plays the child. Children print reports as lines starting with `CHILD `.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use aqueduct_examples::checkout::{self, Config, Invoice, Summary};

const ROLE_VAR: &str = "AQUEDUCT_CHECKOUT_TEST_ROLE";
const DB_VAR: &str = "AQUEDUCT_CHECKOUT_TEST_DB";
const PREFIX: &str = "CHILD ";

/// Returns the order data shipped with the examples.
pub fn data_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/online-retail/online_retail.csv")
}

/// Returns the first `count` invoices of the shipped data.
pub fn slice(count: usize) -> Vec<Invoice> {
    let mut invoices = checkout::load(&data_path()).expect("load the order data");
    invoices.truncate(count);
    invoices
}

/// Runs the checkout without progress output.
pub fn run(invoices: &[Invoice], config: &Config) -> Summary {
    checkout::run(invoices, config, &|_| {}).expect("checkout run")
}

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

/// A child process and the report lines it printed.
pub struct Child {
    process: std::process::Child,
    lines: Receiver<String>,
}

/// Starts test `test` of this binary as a child in `role` on database `db`.
pub fn spawn(test: &str, role: &str, db: &Path) -> Child {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut process = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, role)
        .env(DB_VAR, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the child process");
    let stdout = process.stdout.take().expect("child stdout");
    let (sender, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest prints `test NAME ... ` without a newline before the first report.
            if let Some(start) = line.find(PREFIX) {
                if sender
                    .send(line[start + PREFIX.len()..].to_string())
                    .is_err()
                {
                    break;
                }
            }
        }
    });
    Child { process, lines }
}

impl Child {
    /// Waits up to 60 s for a report for which `accept` returns true.
    pub fn wait_for(&mut self, accept: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if accept(&line) => return,
                Ok(_) => {}
                Err(_) => panic!("the child did not report in time"),
            }
        }
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill(mut self) {
        self.process.kill().expect("send SIGKILL");
        self.process.wait().expect("reap the child");
    }

    /// Waits up to 60 s for the child to exit by itself.
    pub fn wait(mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.process.try_wait().expect("poll the child") {
                return status;
            }
            if Instant::now() > deadline {
                self.process.kill().expect("send SIGKILL");
                panic!("the child did not exit within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
