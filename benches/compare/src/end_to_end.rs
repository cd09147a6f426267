//! The end-to-end scenarios: a paced or unpaced producer thread and a consumer on the calling
//! thread, with publish-to-ack latency.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::workload::{
    histogram, nanos_at, now_nanos, payload, record_nanos, Measurement, Scenario, Stamp, WARM_UP,
};
use crate::Result;

/// The schedule of one producer: unpaced, or message `i` due `i / rate` seconds after the
/// pacer was created.
struct Pacer {
    start: Instant,
    rate: Option<u64>,
}

impl Pacer {
    /// Starts the schedule now. `None` sends every message at once.
    fn new(rate: Option<u64>) -> Pacer {
        Pacer {
            start: Instant::now(),
            rate,
        }
    }

    /// Sleeps until message `index` is due and returns the timestamp to put in its payload:
    /// the scheduled time when paced, the current time otherwise.
    ///
    /// NOTE: `thread::sleep` wakes late by tens of microseconds on Linux, and that delay
    /// counts as latency in paced scenarios, the same for every system.
    fn wait(&self, index: u64) -> u64 {
        let Some(rate) = self.rate else {
            return now_nanos();
        };
        let due = self.start + Duration::from_nanos(index.saturating_mul(1_000_000_000) / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        nanos_at(due)
    }
}

/// A latency histogram that skips the first messages of a scenario.
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
    skip_below_index: u64,
}

impl LatencyRecorder {
    /// Records messages whose index is `skip_below_index` or higher.
    pub fn new(skip_below_index: u64) -> LatencyRecorder {
        LatencyRecorder {
            histogram: histogram(),
            skip_below_index,
        }
    }

    /// Records the time from the message's timestamp to now.
    pub fn record(&mut self, stamp: Stamp) {
        if stamp.index >= self.skip_below_index {
            record_nanos(
                &mut self.histogram,
                now_nanos().saturating_sub(stamp.sent_ns),
            );
        }
    }

    /// Returns the histogram.
    pub fn finish(self) -> Histogram<u64> {
        self.histogram
    }
}

/// Returns the producer's rate and the number of warm-up messages for an end-to-end scenario.
fn end_to_end_pacing(scenario: Scenario) -> (Option<u64>, u64) {
    match scenario {
        Scenario::EndToEndPaced(rate) => {
            let warm_up = (rate as f64 * WARM_UP.as_secs_f64()) as u64;
            (Some(rate), warm_up)
        }
        _ => (None, 0),
    }
}

/// Runs an end-to-end scenario of `count` messages.
///
/// `setup_producer` runs on a new thread and returns the function that sends one payload, so
/// that the producer's runtime and connection live on that thread. `consume` runs on the
/// calling thread, must receive and ack `count` messages, and records each one's [`Stamp`].
/// The producer starts its schedule once both sides are set up.
pub fn run<SendOne, Setup, Consume>(
    scenario: Scenario,
    count: u64,
    setup_producer: Setup,
    consume: Consume,
) -> Result<Measurement>
where
    SendOne: FnMut(Vec<u8>) -> Result<()>,
    Setup: FnOnce() -> Result<SendOne> + Send + 'static,
    Consume: FnOnce(&mut LatencyRecorder) -> Result<()>,
{
    let (rate, warm_up) = end_to_end_pacing(scenario);
    let ready = Arc::new(Barrier::new(2));
    let producer_ready = Arc::clone(&ready);
    let producer = thread::spawn(move || -> Result<()> {
        let setup = setup_producer();
        // The consumer waits here too, so the producer reaches the barrier even when its
        // setup failed.
        producer_ready.wait();
        let mut send = setup?;
        let pacer = Pacer::new(rate);
        for index in 0..count {
            let sent = pacer.wait(index);
            send(payload(sent, index))?;
        }
        Ok(())
    });
    ready.wait();

    let start = Instant::now();
    let mut latency = LatencyRecorder::new(warm_up);
    let consumed = consume(&mut latency);
    let elapsed = start.elapsed();
    let produced = producer
        .join()
        .map_err(|_| "the producer thread panicked")?;
    // A producer error explains a consumer timeout, so it is reported first.
    produced?;
    consumed?;
    Ok(Measurement::new(count, elapsed, Some(latency.finish())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_skips_warm_up() {
        let mut recorder = LatencyRecorder::new(2);
        for index in 0..5 {
            recorder.record(Stamp { sent_ns: 0, index });
        }
        assert_eq!(recorder.finish().len(), 3);
    }
}
