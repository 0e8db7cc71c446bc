//! Open-loop rate control: every message has an intended send time fixed in advance.
//!
//! Message `i` of a schedule is due at `start + i / rate`, whatever happened to message
//! `i - 1`. A sender that falls behind (a stalled broker, a full socket) does not move the
//! schedule: it sends the overdue messages as soon as it can, and their latency is measured
//! from the intended time, so a stall counts against every message it delayed (no
//! coordinated omission). The gap between intended and actual send is reported as well.

/// Nanoseconds on the run's monotonic clock (since [`RunClock`]'s epoch).
pub type Nanos = u64;

/// A clock in nanoseconds since a fixed epoch. Every worker shares one epoch, so an intended
/// time stamped into a payload by a producer is comparable with a consumer's clock.
pub trait Clock {
    fn now_ns(&self) -> Nanos;
}

/// The real clock: `Instant` since the run started. Copy it to every worker.
#[derive(Debug, Clone, Copy)]
pub struct RunClock {
    epoch: std::time::Instant,
}

impl RunClock {
    pub fn start() -> RunClock {
        RunClock {
            epoch: std::time::Instant::now(),
        }
    }
}

impl Clock for RunClock {
    fn now_ns(&self) -> Nanos {
        self.epoch.elapsed().as_nanos() as Nanos
    }
}

/// The send schedule of one producer.
///
/// Owner: one worker thread. Invariant: `issued` messages have been handed out, in order,
/// each with intended time `intended_ns(index)`.
#[derive(Debug, Clone)]
pub struct Schedule {
    start_ns: Nanos,
    /// `None`: closed loop, every message is due the moment it is asked for.
    rate_per_s: Option<f64>,
    issued: u64,
}

impl Schedule {
    /// An open-loop schedule of `rate_per_s` messages per second from `start_ns`.
    pub fn open(start_ns: Nanos, rate_per_s: f64) -> Schedule {
        assert!(rate_per_s > 0.0 && rate_per_s.is_finite());
        Schedule {
            start_ns,
            rate_per_s: Some(rate_per_s),
            issued: 0,
        }
    }

    /// A closed-loop schedule: a message's intended time is the moment it is taken.
    pub fn closed(start_ns: Nanos) -> Schedule {
        Schedule {
            start_ns,
            rate_per_s: None,
            issued: 0,
        }
    }

    pub fn is_open_loop(&self) -> bool {
        self.rate_per_s.is_some()
    }

    /// Intended send time of message `index` (open loop).
    pub fn intended_ns(&self, index: u64) -> Nanos {
        match self.rate_per_s {
            // f64 keeps the schedule exact to well under a nanosecond per message for any
            // run shorter than a day at any rate loadgen accepts.
            Some(rate) => self.start_ns + (index as f64 * 1e9 / rate) as Nanos,
            None => self.start_ns,
        }
    }

    /// The intended time of the next message if it is due at `now_ns` (and marks it
    /// issued), else `None`. Closed loop: always due, intended now.
    pub fn next_due(&mut self, now_ns: Nanos) -> Option<Nanos> {
        let intended = self.due(now_ns)?;
        self.issued += 1;
        Some(intended)
    }

    /// Like [`next_due`](Self::next_due), but never hands out a message intended at or after
    /// `end_ns`: the schedule ends there, and messages intended before it are still sent even
    /// when the sender is behind.
    pub fn next_due_before(&mut self, now_ns: Nanos, end_ns: Nanos) -> Option<Nanos> {
        let intended = self.due_before(now_ns, end_ns)?;
        self.issued += 1;
        Some(intended)
    }

    /// What [`next_due_before`](Self::next_due_before) would hand out, without issuing it;
    /// [`issue`](Self::issue) takes it.
    pub fn due_before(&self, now_ns: Nanos, end_ns: Nanos) -> Option<Nanos> {
        if self.exhausted(now_ns, end_ns) {
            return None;
        }
        self.due(now_ns)
    }

    /// Marks the message that [`due_before`](Self::due_before) just returned as issued.
    pub fn issue(&mut self) {
        self.issued += 1;
    }

    fn due(&self, now_ns: Nanos) -> Option<Nanos> {
        let intended = match self.rate_per_s {
            Some(_) => self.intended_ns(self.issued),
            None => now_ns.max(self.start_ns),
        };
        (intended <= now_ns).then_some(intended)
    }

    /// Whether no message remains before `end_ns` (closed loop: once `now_ns` reaches it).
    pub fn exhausted(&self, now_ns: Nanos, end_ns: Nanos) -> bool {
        match self.rate_per_s {
            Some(_) => self.intended_ns(self.issued) >= end_ns,
            None => now_ns >= end_ns,
        }
    }

    /// When the next message falls due (`None` for closed loop: whenever asked).
    pub fn next_due_ns(&self) -> Option<Nanos> {
        self.rate_per_s.map(|_| self.intended_ns(self.issued))
    }

    /// Messages handed out so far.
    pub fn issued(&self) -> u64 {
        self.issued
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use rand::{Rng, SeedableRng};

    /// A clock that moves only when told to.
    struct FakeClock {
        now_ns: Nanos,
    }

    impl Clock for FakeClock {
        fn now_ns(&self) -> Nanos {
            self.now_ns
        }
    }

    /// Drives a schedule the way a worker does: wake at irregular times (jitter and stalls
    /// up to `stall_max_ns`), send everything due. Returns sends per second-long window.
    fn drive(rate: f64, seconds: u64, stall_max_ns: u64, seed: u64) -> (Vec<u64>, Schedule) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut clock = FakeClock { now_ns: 0 };
        let mut schedule = Schedule::open(clock.now_ns(), rate);
        let mut per_second = vec![0u64; seconds as usize];
        let end = seconds * 1_000_000_000;
        while clock.now_ns() < end {
            while let Some(intended) = schedule.next_due(clock.now_ns()) {
                assert!(intended <= clock.now_ns());
                if let Some(slot) = per_second.get_mut((intended / 1_000_000_000) as usize) {
                    *slot += 1;
                }
            }
            clock.now_ns += 1 + rng.random_range(0..stall_max_ns);
        }
        (per_second, schedule)
    }

    #[test]
    fn rate_is_held_within_one_percent_over_seconds() {
        for (rate, seed) in [(1_000.0, 1), (50_000.0, 2), (333_333.0, 3), (75.5, 4)] {
            let (per_second, schedule) = drive(rate, 5, 200_000, seed);
            let total: u64 = per_second.iter().sum();
            let expected = rate * 5.0;
            let error = (total as f64 - expected).abs() / expected;
            assert!(error < 0.01, "rate {rate}: {total} sends vs {expected}");
            assert_eq!(total, schedule.issued());
            if rate >= 1000.0 {
                for (second, sends) in per_second.iter().enumerate() {
                    let error = (*sends as f64 - rate).abs() / rate;
                    assert!(error < 0.01, "rate {rate}, second {second}: {sends}");
                }
            }
        }
    }

    #[test]
    fn a_stall_does_not_move_intended_times() {
        let mut schedule = Schedule::open(0, 1000.0); // one per ms
        assert_eq!(schedule.next_due(0), Some(0));
        assert_eq!(schedule.next_due(0), None);
        // The sender stalls for 50 ms: the 50 overdue messages keep their own times.
        let mut overdue = Vec::new();
        while let Some(intended) = schedule.next_due(50_000_000) {
            overdue.push(intended);
        }
        assert_eq!(overdue.len(), 50);
        assert_eq!(overdue[0], 1_000_000);
        assert_eq!(overdue[49], 50_000_000);
        assert_eq!(schedule.next_due_ns(), Some(51_000_000));
    }

    #[test]
    fn a_late_sender_still_sends_everything_intended_before_the_end() {
        let mut schedule = Schedule::open(0, 1000.0);
        let end = 100_000_000; // 100 messages
        // The sender wakes up only after the end: all 100 are still due, none after.
        let mut count = 0;
        while schedule.next_due_before(500_000_000, end).is_some() {
            count += 1;
        }
        assert_eq!(count, 100);
        assert!(schedule.exhausted(500_000_000, end));
        let mut closed = Schedule::closed(0);
        assert!(closed.next_due_before(99, 100).is_some());
        assert!(closed.next_due_before(100, 100).is_none());
    }

    #[test]
    fn due_before_looks_without_issuing() {
        let mut schedule = Schedule::open(0, 1000.0);
        assert_eq!(schedule.due_before(0, 10_000_000), Some(0));
        assert_eq!(schedule.due_before(0, 10_000_000), Some(0));
        assert_eq!(schedule.issued(), 0);
        schedule.issue();
        assert_eq!(schedule.due_before(999_999, 10_000_000), None);
        assert_eq!(schedule.due_before(1_000_000, 10_000_000), Some(1_000_000));
        assert_eq!(
            schedule.next_due_before(1_000_000, 10_000_000),
            Some(1_000_000)
        );
        assert_eq!(
            schedule.due_before(1_999_999, 10_000_000),
            None,
            "not due yet"
        );
        assert_eq!(
            schedule.due_before(5_000_000, 1_000_000),
            None,
            "past the end"
        );
        assert_eq!(schedule.issued(), 2);
    }

    #[test]
    fn closed_loop_is_always_due_at_now() {
        let mut schedule = Schedule::closed(10);
        assert_eq!(schedule.next_due(5), None, "nothing before the start");
        assert_eq!(schedule.next_due(10), Some(10));
        assert_eq!(schedule.next_due(99), Some(99));
        assert_eq!(schedule.next_due_ns(), None);
        assert!(!schedule.is_open_loop());
    }
}
