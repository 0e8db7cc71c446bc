//! What every target's workers share for one run: the clock, the measured window, the stop
//! flag, live counters and the totals that tell consumers when they have everything.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::rate::{Clock, Nanos, RunClock};
use crate::stats::Live;
use crate::workload::Workload;

/// Longest the run waits after the last send for outstanding acks and deliveries, counted
/// from the last time anything arrived.
pub const DRAIN_QUIET: Duration = Duration::from_secs(3);

/// Longest a sender keeps sending messages intended before the window's end once the end
/// has passed. A target that cannot keep up leaves the rest unsent (and `sent` below the
/// offered count shows it) rather than stretching the run without bound.
pub const LATE_SEND_MAX: Duration = Duration::from_secs(5);

/// Longest the whole drain may take.
pub const DRAIN_MAX: Duration = Duration::from_secs(30);

/// The run's timeline on the run clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First intended send time.
    pub start_ns: Nanos,
    /// Messages intended from here on are measured (start plus warm-up).
    pub measure_from_ns: Nanos,
    /// No message is intended at or after this.
    pub end_ns: Nanos,
}

impl Window {
    /// Whether a message with this intended send time is counted and recorded.
    pub fn measures(&self, intended_ns: Nanos) -> bool {
        intended_ns >= self.measure_from_ns && intended_ns < self.end_ns
    }

    /// Whether an ack or delivery at `now` counts towards throughput: it arrived while the
    /// window measured, whatever its message's intended time. A target that falls behind
    /// then shows the rate it really delivered, neither zero (its backlog outlasting the
    /// window) nor the catch-up after the window.
    pub fn completes_in(&self, now: Nanos) -> bool {
        now >= self.measure_from_ns && now < self.end_ns
    }

    /// Seconds measured.
    pub fn measured_seconds(&self) -> f64 {
        (self.end_ns.saturating_sub(self.measure_from_ns)) as f64 / 1e9
    }
}

/// Shared by every worker of one run. Counters here are whole-run totals (warm-up included),
/// used only to decide when consumers have received everything.
#[derive(Debug)]
pub struct Plan {
    pub workload: Workload,
    pub clock: RunClock,
    /// Set by Ctrl-C: stop sending, drain, report what ran.
    pub stop: Arc<AtomicBool>,
    pub live: Arc<Live>,
    /// CPUs the workers pin themselves to, in turn (empty: no pinning).
    pub cores: Vec<usize>,
    /// Makes topic, subject and stream names unique to this run.
    pub run_id: String,
    window: OnceLock<Window>,
    /// When sending stopped (the window's end, or earlier on Ctrl-C or a failure).
    sending_ended: OnceLock<Nanos>,
    /// Messages sent per topic.
    sent_total: Vec<AtomicU64>,
    /// Messages the target refused per topic (they will never be delivered).
    lost_total: Vec<AtomicU64>,
    /// Messages received per topic and subscription (`topic * subscriptions + subscription`).
    received_total: Vec<AtomicU64>,
    pub bytes_sent_total: AtomicU64,
    /// Workers whose producers have not finished sending.
    producers_running: AtomicUsize,
    /// Set the first time any connection fails: workers stop at once.
    pub aborted: AtomicBool,
}

impl Plan {
    pub fn new(workload: Workload, stop: Arc<AtomicBool>, cores: Vec<usize>) -> Plan {
        let topics = workload.topics as usize;
        let subscriptions = (workload.topics * workload.subscriptions_per_topic) as usize;
        let run_id = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() % 100_000_000)
        );
        Plan {
            workload,
            clock: RunClock::start(),
            stop,
            live: Arc::new(Live::default()),
            cores,
            run_id,
            window: OnceLock::new(),
            sending_ended: OnceLock::new(),
            sent_total: (0..topics).map(|_| AtomicU64::new(0)).collect(),
            lost_total: (0..topics).map(|_| AtomicU64::new(0)).collect(),
            received_total: (0..subscriptions).map(|_| AtomicU64::new(0)).collect(),
            bytes_sent_total: AtomicU64::new(0),
            producers_running: AtomicUsize::new(0),
            aborted: AtomicBool::new(false),
        }
    }

    /// Fixes the timeline, starting `lead` from now (time for workers to get going). Called
    /// once, after the target is set up; later calls return the same window.
    pub fn begin(&self, lead: Duration) -> Window {
        *self.window.get_or_init(|| {
            let start_ns = self.clock.now_ns() + lead.as_nanos() as Nanos;
            let measure_from_ns = start_ns + self.workload.warmup.as_nanos() as Nanos;
            Window {
                start_ns,
                measure_from_ns,
                end_ns: measure_from_ns + self.workload.duration.as_nanos() as Nanos,
            }
        })
    }

    /// The window, once `begin` ran.
    pub fn window(&self) -> Option<Window> {
        self.window.get().copied()
    }

    /// Whether sending must stop now: Ctrl-C, a failure elsewhere, or `LATE_SEND_MAX` past
    /// the window's end. (Until then the end is the schedules' business: messages intended
    /// before it are sent even if late.)
    pub fn interrupted(&self, now_ns: Nanos, window: &Window) -> bool {
        let over = self.stop.load(Ordering::Relaxed)
            || self.aborted.load(Ordering::Relaxed)
            || now_ns > window.end_ns + LATE_SEND_MAX.as_nanos() as Nanos;
        if over {
            self.sending_ended.get_or_init(|| now_ns.min(window.end_ns));
        }
        over
    }

    /// When sending stopped, once it has.
    pub fn sending_ended_ns(&self) -> Option<Nanos> {
        self.sending_ended.get().copied()
    }

    pub fn producer_started(&self) {
        self.producers_running.fetch_add(1, Ordering::SeqCst);
    }

    pub fn producer_finished(&self) {
        self.producers_running.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn producers_running(&self) -> usize {
        self.producers_running.load(Ordering::SeqCst)
    }

    pub fn add_sent(&self, topic: usize, messages: u64, bytes: u64) {
        if let Some(counter) = self.sent_total.get(topic) {
            counter.fetch_add(messages, Ordering::Relaxed);
        }
        self.bytes_sent_total.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn add_lost(&self, topic: usize, messages: u64) {
        if let Some(counter) = self.lost_total.get(topic) {
            counter.fetch_add(messages, Ordering::Relaxed);
        }
    }

    pub fn add_received(&self, topic: usize, subscription: usize, messages: u64) {
        let index = topic * self.workload.subscriptions_per_topic as usize + subscription;
        if let Some(counter) = self.received_total.get(index) {
            counter.fetch_add(messages, Ordering::Relaxed);
        }
    }

    /// Whether one subscription of a topic has every message producers got through, once
    /// all producers finished.
    pub fn subscription_complete(&self, topic: usize, subscription: usize) -> bool {
        if self.producers_running() > 0 {
            return false;
        }
        let index = topic * self.workload.subscriptions_per_topic as usize + subscription;
        let load = |v: &Vec<AtomicU64>, i: usize| v.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
        let expected = load(&self.sent_total, topic).saturating_sub(load(&self.lost_total, topic));
        load(&self.received_total, index) >= expected
    }

    /// Whether consumers may start: the backlog the workload asks for has been produced (or
    /// producers are done).
    pub fn backlog_reached(&self) -> bool {
        self.workload.backlog_bytes == 0
            || self.bytes_sent_total.load(Ordering::Relaxed) >= self.workload.backlog_bytes
            || self.producers_running() == 0
    }

    /// Pins the calling thread to the `index`-th of the run's cores (in turn).
    pub fn pin(&self, index: usize) {
        if self.cores.is_empty() {
            return;
        }
        let core = self.cores.get(index % self.cores.len()).copied();
        if let (Some(core), Some(ids)) = (core, core_affinity::get_core_ids())
            && let Some(id) = ids.into_iter().find(|id| id.id == core)
        {
            core_affinity::set_for_current(id);
        }
    }
}

/// Per-topic names used on every target.
pub fn topic_name(run_id: &str, topic: usize) -> String {
    format!("loadgen-{run_id}-{topic}")
}

#[cfg(test)]
mod tests {
    use super::Window;

    #[test]
    fn completions_count_while_the_window_measures_whatever_their_message() {
        let second = 1_000_000_000;
        let window = Window {
            start_ns: 0,
            measure_from_ns: second,
            end_ns: 3 * second,
        };
        // An ack of a warm-up message that arrives in the window counts; a message intended
        // in the window but answered after it does not.
        assert!(!window.measures(second / 2) && window.completes_in(second + 1));
        assert!(window.measures(2 * second) && !window.completes_in(3 * second));
        assert!(!window.completes_in(second - 1));
        assert!(window.completes_in(3 * second - 1));
    }
}
