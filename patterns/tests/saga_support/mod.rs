//! Helpers shared by the saga tests: brokers on a manual clock, local step closures that log
//! what they do, a request service with an inbox, and child processes killed with SIGKILL.
//!
//! A crash test runs its own binary again (`current_exe() --exact TEST --nocapture`) with the
//! role and database directory in environment variables. The same test function reads them
//! and plays the child. Children print reports as lines starting with `CHILD `.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aqueduct::{Broker, BrokerConfig, Consumer, ManualClock, TopicConfig};
use aqueduct_patterns::{
    Action, Inbox, InboxError, Processed, RetryPolicy, Saga, SagaConfig, SagaOrchestrator,
    SagaRequest, SagaState, Step, StepError, StepKind,
};

/// Start time of every manual clock, in milliseconds since the Unix epoch.
pub const START_MS: u64 = 1_700_000_000_000;

const ROLE_VAR: &str = "AQUEDUCT_SAGA_TEST_ROLE";
const DB_VAR: &str = "AQUEDUCT_SAGA_TEST_DB";
const PREFIX: &str = "CHILD ";

/// Opens a broker on `dir` whose clock is `clock`.
pub fn open_broker(dir: &Path, clock: &Arc<ManualClock>) -> Broker {
    let config = BrokerConfig::default().clock(clock.clone());
    Broker::open_with(dir, config).expect("open broker")
}

/// Orchestrator settings on `clock`.
pub fn saga_config(clock: &Arc<ManualClock>) -> SagaConfig {
    SagaConfig::default().clock(clock.clone())
}

/// An ordered log of what step closures did, shared between closures and the test.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, entry: impl Into<String>) {
        self.0.lock().expect("log lock").push(entry.into());
    }

    pub fn entries(&self) -> Vec<String> {
        self.0.lock().expect("log lock").clone()
    }
}

/// Names of the steps of the test sagas.
pub fn step_name(index: usize) -> String {
    format!("s{index}")
}

/// Builds a saga of `steps` local steps whose step `fail_at` fails permanently. Actions log
/// `do sN` and compensations `undo sN`.
pub fn local_saga(steps: usize, fail_at: Option<usize>, log: &Log) -> Saga {
    let mut saga = Saga::new("local");
    for index in 0..steps {
        let name = step_name(index);
        let action_log = log.clone();
        let action_name = name.clone();
        let action = Action::local(move |_| {
            action_log.push(format!("do {action_name}"));
            if Some(index) == fail_at {
                return Err(StepError::fail(format!("{action_name} is out of stock")));
            }
            Ok(format!("{action_name} done").into_bytes())
        });
        let undo_log = log.clone();
        let undo_name = name.clone();
        let compensation = Action::local(move |_| {
            undo_log.push(format!("undo {undo_name}"));
            Ok(Vec::new())
        });
        saga = saga.step(Step::new(name, action).compensation(compensation));
    }
    saga
}

/// Polls until saga `id` is final or waits for an operator, at most `max` times.
pub fn poll_until_settled(orchestrator: &SagaOrchestrator, id: &str, max: usize) -> SagaState {
    for _ in 0..max {
        orchestrator.poll().expect("poll");
        let state = orchestrator.status(id).expect("status").state;
        if state.is_final() || state == SagaState::NeedsOperator {
            return state;
        }
    }
    orchestrator.status(id).expect("status").state
}

/// Request topic of step `index` of a remote saga.
pub fn request_topic(index: usize) -> String {
    format!("service.s{index}")
}

/// Creates the request topics of a remote saga with `steps` steps.
pub fn create_request_topics(broker: &Broker, steps: usize) {
    for index in 0..steps {
        broker
            .create_topic(&request_topic(index), TopicConfig::default())
            .expect("create request topic");
    }
}

/// Builds a saga of `steps` remote steps. Step N sends its action and compensation to topic
/// `service.sN`.
pub fn remote_saga(steps: usize, timeout: Duration, retry: RetryPolicy) -> Saga {
    let mut saga = Saga::new("remote");
    for index in 0..steps {
        let topic = request_topic(index);
        let action = Action::request(topic.clone(), |ctx| Ok(ctx.input().to_vec()));
        let compensation = Action::request(topic, |ctx| Ok(ctx.input().to_vec()));
        saga = saga.step(
            Step::new(step_name(index), action)
                .compensation(compensation)
                .timeout(timeout)
                .retry(retry)
                .compensation_retry(retry),
        );
    }
    saga
}

/// The function that decides the reply of a [`Service`] to a request.
pub type Behaviour = dyn Fn(&SagaRequest) -> Result<Vec<u8>, StepError> + Send + Sync;

/// A service for every step of a remote saga: one consumer per request topic, an inbox that
/// makes each side of each step take effect once, and a tree that counts effects per
/// idempotency key.
pub struct Service {
    broker: Broker,
    consumers: Vec<Consumer>,
    inbox: Inbox,
    effects: sled::Tree,
    behaviour: Box<Behaviour>,
    /// Every request handled, as `KIND sN attempt A`, in order.
    pub handled: Vec<String>,
}

impl Service {
    pub fn new(broker: &Broker, steps: usize, behaviour: Box<Behaviour>) -> Self {
        let consumers = (0..steps)
            .map(|index| {
                broker
                    .subscribe(&request_topic(index), "service")
                    .expect("subscribe service")
            })
            .collect();
        Service {
            broker: broker.clone(),
            consumers,
            inbox: Inbox::open(broker, "service").expect("open inbox"),
            effects: broker.tree("effects").expect("effects tree"),
            behaviour,
            handled: Vec::new(),
        }
    }

    /// Handles every request available now; returns how many.
    pub fn serve_available(&mut self) -> usize {
        let mut served = 0;
        for index in 0..self.consumers.len() {
            while let Some(delivery) = self.consumers[index].try_recv().expect("receive request") {
                let request = SagaRequest::parse(&delivery).expect("a saga request");
                let reply = self.handle(&request);
                request.reply(&self.broker, reply).expect("reply");
                delivery.ack().expect("ack request");
                served += 1;
            }
        }
        served
    }

    /// Handles one request: the behaviour decides, and a success records its effect once.
    pub fn handle(&mut self, request: &SagaRequest) -> Result<Vec<u8>, StepError> {
        self.handled.push(format!(
            "{} {} attempt {}",
            request.kind(),
            request.step_name(),
            request.attempt()
        ));
        let output = (self.behaviour)(request)?;
        record_effect(&self.inbox, &self.effects, request.idempotency_key());
        Ok(output)
    }
}

/// Counts one effect for `key` in `effects`, unless the inbox has seen `key`.
pub fn record_effect(inbox: &Inbox, effects: &sled::Tree, key: &str) -> bool {
    let outcome = inbox
        .process_key::<_, InboxError, _>(key, std::slice::from_ref(effects), |trees| {
            let count = trees[0].get(key)?.map_or(0, |value| {
                u64::from_be_bytes(value.as_ref().try_into().expect("an 8-byte counter"))
            });
            trees[0].insert(key, &(count + 1).to_be_bytes())?;
            Ok(())
        })
        .expect("record effect");
    !matches!(outcome, Processed::Duplicate)
}

/// Returns how often the effect with idempotency key `key` took place.
pub fn effect_count(effects: &sled::Tree, key: &str) -> u64 {
    effects.get(key).expect("read effects").map_or(0, |value| {
        u64::from_be_bytes(value.as_ref().try_into().expect("an 8-byte counter"))
    })
}

/// Returns the idempotency key of one side of one step.
pub fn key(orchestrator: &str, saga_id: &str, step: usize, kind: StepKind) -> String {
    format!("{orchestrator}/{saga_id}/s{step}/{}", kind.as_str())
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

/// Blocks forever, for a child that waits to be killed.
pub fn hang() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
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
        .stderr(Stdio::inherit())
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
    /// Waits up to 60 s for the report `expected`; panics if the child exits or stays silent.
    pub fn wait_for(&mut self, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == expected => return,
                Ok(_) => {}
                Err(_) => panic!("child did not report {expected:?} in time"),
            }
        }
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill(mut self) {
        self.process.kill().expect("send SIGKILL");
        self.process.wait().expect("reap the child");
    }
}
