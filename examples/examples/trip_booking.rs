//! Trip booking as an orchestrated saga: book a flight, a hotel and a car, each through its own
//! service on a request topic. The car service has no cars in Reykjavik, so that trip fails at
//! its last step and the hotel and flight bookings are cancelled in reverse order.
//!
//! Run with `cargo run --release --example trip_booking`. It uses a temporary database and
//! prints each saga's status and history. Set `RUST_LOG=info` to see the orchestrator's log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use aqueduct::{Broker, TopicConfig};
use aqueduct_patterns::{
    Action, Inbox, InboxError, Processed, Saga, SagaOrchestrator, SagaRequest, SagaStatus, Step,
    StepError, StepKind,
};

/// The services: request topic, booking prefix, and the destinations they cannot serve.
const SERVICES: [(&str, &str, &[&str]); 3] = [
    ("flights", "FL", &[]),
    ("hotels", "HT", &[]),
    ("cars", "CR", &["Reykjavik"]),
];

const TRIPS: [&str; 3] = ["Lisbon", "Reykjavik", "Kyoto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .init();
    let broker = Broker::temporary()?;
    for (topic, _, _) in SERVICES {
        broker.create_topic(topic, TopicConfig::default())?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut services = Vec::new();
    for (topic, prefix, unserved) in SERVICES {
        services.push(spawn_service(&broker, topic, prefix, unserved, &stop)?);
    }

    let orchestrator = SagaOrchestrator::open(&broker, "travel", vec![trip_saga()])?;
    let runner = orchestrator.spawn()?;
    for destination in TRIPS {
        let id = format!("trip-{}", destination.to_lowercase());
        orchestrator.start("trip", &id, destination.as_bytes().to_vec())?;
    }

    for destination in TRIPS {
        let id = format!("trip-{}", destination.to_lowercase());
        match orchestrator.wait_until_finished(&id, Duration::from_secs(30))? {
            Some(status) => print_status(&status),
            None => println!("{id}: not finished after 30 s"),
        }
    }

    runner.stop();
    stop.store(true, Ordering::SeqCst);
    for service in services {
        if service.join().is_err() {
            eprintln!("a service thread panicked");
        }
    }
    Ok(())
}

/// Builds the saga: each step sends the destination to a service, and each compensation
/// requests a cancellation from the same service.
fn trip_saga() -> Saga {
    let mut saga = Saga::new("trip");
    for (topic, _, _) in SERVICES {
        let name = format!("book-{}", topic.trim_end_matches('s'));
        let book = Action::request(topic, |ctx| Ok(ctx.input().to_vec()));
        let cancel = Action::request(topic, |ctx| Ok(ctx.input().to_vec()));
        saga = saga.step(
            Step::new(name, book)
                .compensation(cancel)
                .timeout(Duration::from_secs(5)),
        );
    }
    saga
}

/// Runs a booking service: books or cancels once per idempotency key, with its inbox, and
/// replies to the orchestrator.
fn spawn_service(
    broker: &Broker,
    topic: &'static str,
    prefix: &'static str,
    unserved: &'static [&'static str],
    stop: &Arc<AtomicBool>,
) -> Result<JoinHandle<()>, Box<dyn std::error::Error>> {
    let mut consumer = broker.subscribe(topic, topic)?;
    let inbox = Inbox::open(broker, topic)?;
    let bookings = broker.tree(&format!("bookings.{topic}"))?;
    let broker = broker.clone();
    let stop = Arc::clone(stop);
    Ok(std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let delivery = match consumer.recv_timeout(Duration::from_millis(50)) {
                Ok(Some(delivery)) => delivery,
                Ok(None) => continue,
                Err(error) => {
                    eprintln!("{topic} service: {error}");
                    return;
                }
            };
            let result = SagaRequest::parse(&delivery).map(|request| {
                let reply = serve(&request, &inbox, &bookings, prefix, unserved);
                request.reply(&broker, reply)
            });
            match result {
                Ok(Ok(_)) => {
                    if let Err(error) = delivery.ack() {
                        eprintln!("{topic} service: {error}");
                    }
                }
                Ok(Err(error)) | Err(error) => eprintln!("{topic} service: {error}"),
            }
        }
    }))
}

/// Books or cancels for one request. The inbox makes a retried request a duplicate, and a
/// cancellation marks the booking's key, so a late booking request after it does nothing.
fn serve(
    request: &SagaRequest,
    inbox: &Inbox,
    bookings: &sled::Tree,
    prefix: &str,
    unserved: &[&str],
) -> Result<Vec<u8>, StepError> {
    let destination = String::from_utf8_lossy(request.payload()).into_owned();
    let booking_key = request.action_key();
    let reference = format!("{prefix}-{}", request.saga_id());
    let trees = [bookings.clone()];
    let outcome = match request.kind() {
        StepKind::Action => {
            if unserved.contains(&destination.as_str()) {
                return Err(StepError::fail(format!(
                    "nothing available in {destination}"
                )));
            }
            inbox.process_key::<_, InboxError, _>(&booking_key, &trees, |views| {
                views[0].insert(booking_key.as_bytes(), reference.as_bytes())?;
                Ok(())
            })
        }
        StepKind::Compensation => {
            let cancel_key = request.idempotency_key().to_string();
            inbox
                .process_key::<_, InboxError, _>(&cancel_key, &trees, |views| {
                    views[0].remove(booking_key.as_bytes())?;
                    Ok(())
                })
                // Mark the booking as handled, so that a booking request still queued is
                // ignored.
                .and_then(|_| inbox.process_key::<_, InboxError, _>(&booking_key, &[], |_| Ok(())))
        }
    };
    match outcome {
        Ok(Processed::Applied(())) | Ok(Processed::Duplicate) => Ok(reference.into_bytes()),
        Err(error) => Err(StepError::retry(error.to_string())),
    }
}

fn print_status(status: &SagaStatus) {
    println!("{} ({}): {}", status.id, status.saga, status.state);
    if let Some(reason) = &status.reason {
        println!("  reason: {reason}");
    }
    println!("  completed steps: {}", status.completed_steps.join(", "));
    if !status.compensated_steps.is_empty() {
        println!(
            "  compensated steps: {}",
            status.compensated_steps.join(", ")
        );
    }
    println!("  history:");
    for entry in &status.history {
        let elapsed = entry.at_ms.saturating_sub(status.created_ms);
        println!("    +{elapsed:>4} ms  {}", entry.event);
    }
    println!();
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"))
}
