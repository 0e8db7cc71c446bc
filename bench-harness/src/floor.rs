//! The disk's floor under a durable ack: one 4 KiB O_DIRECT `pwrite` followed by
//! `fdatasync`, timed as a pair, on the cores the broker's shards use.
//!
//! fio reports a write's and a sync's latencies apart, so their p99s only bound the pair's
//! from above. A durable ack needs at least one whole pair after its record arrives (a write
//! covering it, then a flush after that write completed), so the pair's own distribution,
//! measured here, is what a broker's produce-to-ack is measured against. It is not a strict
//! bound: at the latency case's rate the pairs here run about back to back, so the disk is
//! busier than under a broker that lets records share a pair, and such a broker's pairs can
//! be quicker.
//!
//! [`replicated_pairs`] is the same for two replicas on one disk: a thread on the leader's
//! core hands each write to a thread on the follower's core, both write and sync a file of
//! their own, and the pair ends when both have. That is the floor of `acks=all+fsync` with
//! the replicas' data directories on the same disk.
//!
//! [`group_commit`] is the floor under the latency case itself: records arrive open-loop at
//! the case's rate and are made durable the way a log's group commit does it, with no broker
//! and no network in between.
//!
//! Plain blocking system calls on pinned threads: no runtime, no io_uring, no log format.
//! The files are written full of zeros first, so every measured write overwrites (as into
//! ringmq's pre-zeroed segments), and are then written round and round.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::{OpenLoop, least_timer_slack, micros_histogram};

/// O_DIRECT's alignment of buffers, offsets and lengths, and the size of each write.
const BLOCK: usize = 4096;
/// Size of each floor file.
const FILE_BYTES: u64 = 16 << 20;

/// Pairs on the thread's own core, at most `rate` a second (back to back when a pair takes
/// longer than `1/rate`), for `seconds`; microseconds per pair.
pub fn durable_pairs(
    file: &Path,
    core: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Histogram<u64>> {
    let mut file = PairFile::lay_out(file)?;
    on_core(core, move || paced(rate, seconds, || file.pair()))
}

/// Pairs of two replicas: the leader's on `leader_core`, its follower's on `follower_core`
/// started first, as a leader sends before it writes; each timed until both are durable.
pub fn replicated_pairs(
    files: (&Path, &Path),
    (leader_core, follower_core): (usize, usize),
    rate: u64,
    seconds: u64,
) -> anyhow::Result<Histogram<u64>> {
    let mut leader = PairFile::lay_out(files.0)?;
    let mut follower = PairFile::lay_out(files.1)?;
    let (go, turns) = mpsc::channel::<()>();
    let (done, dones) = mpsc::channel::<io::Result<()>>();
    let follower_thread = std::thread::spawn(move || {
        crate::machine::pin(follower_core);
        // Ends when the leader drops its sender.
        for () in turns {
            if done.send(follower.pair()).is_err() {
                return;
            }
        }
    });
    let measured = on_core(leader_core, move || {
        paced(rate, seconds, || {
            go.send(())
                .map_err(|_| io::Error::other("floor follower ended"))?;
            leader.pair()?;
            dones
                .recv()
                .map_err(|_| io::Error::other("floor follower ended"))?
        })
    });
    follower_thread
        .join()
        .map_err(|_| anyhow::anyhow!("floor follower panicked"))?;
    measured
}

/// Arrival to durable, in microseconds, for records that arrive open-loop at `rate` a second
/// for `seconds` (on the latency case's [`OpenLoop`] schedule) and are made durable on every
/// replica of `replicas` (a file and the core its threads run on) by a group commit modelled
/// on ringmq's log:
/// - a writer writes one 4 KiB block for every record that has arrived and not been written,
///   as soon as its previous write completed, so a write runs beside the running sync;
/// - a syncer starts an fdatasync as soon as a write has completed that no sync started
///   covers, so up to `syncs_in_flight` syncs (one thread each) run at once, as in the log
///   (`WritePipeline::syncs_in_flight`; the log also holds a second sync back while a
///   write other than one padded tail block is in flight, so this floor is a little below
///   it);
/// - a record is durable when a sync that started after its write completed has returned on
///   every replica, and its latency ends then. (The log counts a sync only once those
///   started before it have returned too; here whichever returns first counts.)
///
/// Unlike the log, each write goes to a fresh block (the log rewrites its padded tail block
/// until it fills). No network, no request handling, no cross-core hand-off to a follower:
/// whatever a broker adds comes on top. Latency runs from the record's due time, so a
/// writer that wakes late counts, as a broker's does.
pub fn group_commit(
    replicas: &[(&Path, usize)],
    rate: u64,
    seconds: u64,
    syncs_in_flight: usize,
) -> anyhow::Result<Histogram<u64>> {
    let files = replicas
        .iter()
        .map(|&(path, core)| {
            let writer = PairFile::lay_out(path)?;
            // Every handle is opened before any thread starts, so an error leaves none.
            let syncers = (0..syncs_in_flight.max(1))
                .map(|_| writer.file.try_clone())
                .collect::<io::Result<Vec<_>>>()
                .with_context(|| format!("opening {} again", path.display()))?;
            Ok((writer, syncers, core))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let commit = Arc::new(Commit::new(replicas.len(), rate, seconds)?);
    let mut threads = Vec::new();
    for (replica, (mut writer, syncers, core)) in files.into_iter().enumerate() {
        let at_writer = Arc::clone(&commit);
        threads.push(std::thread::spawn(move || {
            crate::machine::pin(core);
            let written = at_writer.write(replica, || writer.write_next());
            at_writer.end_on_error(written);
        }));
        for syncer in syncers {
            let at_syncer = Arc::clone(&commit);
            threads.push(std::thread::spawn(move || {
                crate::machine::pin(core);
                let synced = at_syncer.sync(replica, || syncer.sync_data());
                at_syncer.end_on_error(synced);
            }));
        }
    }
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("floor thread panicked"))?;
    }
    commit.finish()
}

/// What [`group_commit`]'s writers and syncers share.
struct Commit {
    state: Mutex<CommitState>,
    /// Notified when a write completes, a sync returns, or a thread fails.
    changed: Condvar,
    /// When each record arrives.
    arrivals: OpenLoop,
}

/// Per replica, `synced <= started <= written <= arrivals.total`, and `recorded` is the
/// least `synced` once its records are timed: each only grows.
struct CommitState {
    /// Per replica: how many records a completed write covers, a started sync, and a
    /// returned one.
    written: Vec<u64>,
    started: Vec<u64>,
    synced: Vec<u64>,
    /// How many records are durable on every replica and timed.
    recorded: u64,
    histogram: Histogram<u64>,
    /// The first error of any thread; every thread ends when it is set.
    failed: Option<io::Error>,
}

impl Commit {
    /// `rate * seconds` records for `replicas` replicas, the first due in 10 ms.
    fn new(replicas: usize, rate: u64, seconds: u64) -> anyhow::Result<Commit> {
        Ok(Commit {
            state: Mutex::new(CommitState {
                written: vec![0; replicas],
                started: vec![0; replicas],
                synced: vec![0; replicas],
                recorded: 0,
                histogram: micros_histogram()?,
                failed: None,
            }),
            changed: Condvar::new(),
            arrivals: OpenLoop::new(rate, seconds),
        })
    }

    fn due(&self, record: u64) -> Instant {
        self.arrivals.due(record)
    }

    /// A replica's writer: one write for every run of arrived records, until the last.
    fn write(&self, replica: usize, mut write: impl FnMut() -> io::Result<()>) -> io::Result<()> {
        let total = self.arrivals.total;
        least_timer_slack("disk floor");
        let mut issued = 0;
        while issued < total {
            let now = Instant::now();
            if now < self.due(issued) {
                std::thread::sleep(self.due(issued) - now);
                continue;
            }
            // Every record due by now rides this write.
            let mut arrived = issued + 1;
            while arrived < total && self.due(arrived) <= now {
                arrived += 1;
            }
            write()?;
            let mut state = self.lock()?;
            debug_assert!(arrived > state.written[replica]);
            state.written[replica] = arrived;
            self.changed.notify_all();
            issued = arrived;
        }
        Ok(())
    }

    /// One of a replica's syncers: one sync whenever a completed write is not covered by a
    /// sync started, until the last record is durable; the one whose sync makes records
    /// durable on every replica times them.
    fn sync(&self, replica: usize, mut sync: impl FnMut() -> io::Result<()>) -> io::Result<()> {
        let total = self.arrivals.total;
        loop {
            let mut state = self.lock()?;
            while state.written[replica] == state.started[replica] && state.synced[replica] < total
            {
                state = self.changed.wait(state).map_err(|_| poisoned())?;
                if state.failed.is_some() {
                    return Ok(());
                }
            }
            if state.synced[replica] == total {
                return Ok(());
            }
            let target = state.written[replica];
            state.started[replica] = target;
            drop(state);
            sync()?;
            let mut state = self.lock()?;
            // Read after the lock: when another replica's sync returned later but took the
            // lock first, this one ends their records, and must not time them before that.
            let now = Instant::now();
            // Another syncer's later sync may have returned first.
            state.synced[replica] = state.synced[replica].max(target);
            let durable = state.synced.iter().copied().min().unwrap_or(0);
            for i in state.recorded..durable {
                let micros = now.saturating_duration_since(self.due(i)).as_micros();
                state
                    .histogram
                    .record(micros.max(1) as u64)
                    .map_err(io::Error::other)?;
            }
            state.recorded = state.recorded.max(durable);
            self.changed.notify_all();
        }
    }

    /// The state, or an error once any thread has failed.
    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, CommitState>> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        match &state.failed {
            Some(_) => Err(io::Error::other("another floor thread failed")),
            None => Ok(state),
        }
    }

    /// The arrival-to-durable histogram once every thread has ended, or the first error.
    fn finish(&self) -> anyhow::Result<Histogram<u64>> {
        let mut state = self.state.lock().map_err(|_| poisoned())?;
        if let Some(error) = state.failed.take() {
            return Err(error).context("floor write or fdatasync");
        }
        Ok(std::mem::replace(&mut state.histogram, Histogram::new(1)?))
    }

    /// Records a thread's first error, so that every other thread ends too.
    fn end_on_error(&self, result: io::Result<()>) {
        if let Err(error) = result
            && let Ok(mut state) = self.state.lock()
        {
            state.failed.get_or_insert(error);
            self.changed.notify_all();
        }
    }
}

fn poisoned() -> io::Error {
    io::Error::other("a floor thread panicked")
}

/// Runs `work` on a thread pinned to `core` and returns its result.
fn on_core<T: Send + 'static>(
    core: usize,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    std::thread::spawn(move || {
        crate::machine::pin(core);
        work()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("floor thread panicked"))?
}

/// Calls `pair` at most `rate` times a second for `seconds`; the microseconds each took.
fn paced(
    rate: u64,
    seconds: u64,
    mut pair: impl FnMut() -> io::Result<()>,
) -> anyhow::Result<Histogram<u64>> {
    let mut histogram = micros_histogram()?;
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let started = Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut due = started;
    while due < end {
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        }
        let at = Instant::now();
        pair().context("floor write or fdatasync")?;
        histogram.record(at.elapsed().as_micros().max(1) as u64)?;
        // Late pairs do not catch up in a burst: the next one is due an interval after
        // this one started.
        due = (due + interval).max(at);
    }
    Ok(histogram)
}

/// A file written with O_DIRECT from a 4 KiB-aligned buffer, round and round.
struct PairFile {
    file: File,
    /// Holds the aligned block at `aligned..aligned + BLOCK`.
    storage: Vec<u8>,
    aligned: usize,
    position: u64,
}

impl PairFile {
    /// Creates `path` full of zeros, durably, and opens it with O_DIRECT.
    fn lay_out(path: &Path) -> anyhow::Result<PairFile> {
        File::create(path)
            .and_then(|mut file| {
                io::Write::write_all(&mut file, &vec![0u8; FILE_BYTES as usize])?;
                file.sync_all()
            })
            .with_context(|| format!("laying out {}", path.display()))?;
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)
            .with_context(|| format!("opening {} with O_DIRECT", path.display()))?;
        let mut storage = vec![b'x'; 2 * BLOCK];
        let aligned = storage.as_ptr().align_offset(BLOCK);
        storage.truncate(aligned + BLOCK);
        Ok(PairFile {
            file,
            storage,
            aligned,
            position: 0,
        })
    }

    /// One 4 KiB write at the next position, then fdatasync.
    fn pair(&mut self) -> io::Result<()> {
        self.write_next()?;
        self.file.sync_data()
    }

    /// One 4 KiB write at the next position.
    fn write_next(&mut self) -> io::Result<()> {
        let block = &self.storage[self.aligned..self.aligned + BLOCK];
        self.file.write_all_at(block, self.position)?;
        self.position = (self.position + BLOCK as u64) % FILE_BYTES;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::ScratchDir;

    /// The floor measures overwrites of a laid-out file: each pair writes the next block, and
    /// the last block is followed by the first, never by a block past the end.
    #[test]
    fn pairs_overwrite_the_next_block_and_wrap_at_the_end() -> anyhow::Result<()> {
        let scratch = ScratchDir::create_in(Path::new(env!("CARGO_MANIFEST_DIR")), "floor-test")?;
        let path = scratch.path().join("pairs");
        let mut file = PairFile::lay_out(&path)?;
        let block = |bytes: &[u8], i: u64| bytes[(i as usize) * BLOCK..][..BLOCK].to_vec();
        let laid_out = std::fs::read(&path)?;
        assert_eq!(laid_out.len() as u64, FILE_BYTES);
        assert!(laid_out.iter().all(|&b| b == 0));

        file.pair()?;
        file.pair()?;
        let bytes = std::fs::read(&path)?;
        assert_eq!(block(&bytes, 0), vec![b'x'; BLOCK]);
        assert_eq!(block(&bytes, 1), vec![b'x'; BLOCK]);
        assert_eq!(block(&bytes, 2), vec![0; BLOCK]);

        let last = FILE_BYTES / BLOCK as u64 - 1;
        file.position = last * BLOCK as u64;
        file.pair()?;
        assert_eq!(file.position, 0);
        let bytes = std::fs::read(&path)?;
        assert_eq!(bytes.len() as u64, FILE_BYTES);
        assert_eq!(block(&bytes, last), vec![b'x'; BLOCK]);
        assert_eq!(block(&bytes, last - 1), vec![0; BLOCK]);
        Ok(())
    }

    /// Every record is timed once, on real files, and each replica's file is written, with
    /// one sync at a time and with two.
    #[test]
    fn group_commit_times_every_record_once() -> anyhow::Result<()> {
        let scratch =
            ScratchDir::create_in(Path::new(env!("CARGO_MANIFEST_DIR")), "floor-commit-test")?;
        let (leader, follower) = (scratch.path().join("a"), scratch.path().join("b"));
        let core = engine::config::allowed_cores()[0];
        for syncs in [1, 2] {
            let timed = group_commit(&[(&leader, core), (&follower, core)], 2_000, 1, syncs)?;
            assert_eq!(timed.len(), 2_000, "{syncs} syncs in flight");
        }
        for path in [&leader, &follower] {
            let bytes = std::fs::read(path)?;
            assert!(bytes[..BLOCK].iter().all(|&b| b == b'x'));
        }
        Ok(())
    }

    /// A record's time ends only when every replica has synced it: while one replica's
    /// first sync is held, nothing is timed, however many the other replica synced.
    #[test]
    fn a_record_is_durable_only_once_every_replica_synced_it() -> anyhow::Result<()> {
        let commit = Arc::new(Commit::new(2, 1_000, 1)?);
        let (release, held) = mpsc::channel::<()>();
        let mut held = Some(held);
        let mut threads = Vec::new();
        for replica in 0..2 {
            let (writer, syncer) = (Arc::clone(&commit), Arc::clone(&commit));
            // Replica 1's first sync waits for the test.
            let mut first = if replica == 1 { held.take() } else { None };
            threads.push(std::thread::spawn(move || writer.write(replica, || Ok(()))));
            threads.push(std::thread::spawn(move || {
                syncer.sync(replica, || match first.take() {
                    Some(released) => released.recv().map_err(io::Error::other),
                    None => Ok(()),
                })
            }));
        }
        std::thread::sleep(Duration::from_millis(300));
        {
            let state = commit.lock()?;
            assert!(
                state.synced[0] > 100,
                "replica 0 synced {}",
                state.synced[0]
            );
            assert_eq!(state.synced[1], 0);
            assert_eq!(state.recorded, 0);
        }
        release.send(())?;
        for thread in threads {
            thread.join().map_err(|_| anyhow::anyhow!("panicked"))??;
        }
        let timed = commit.finish()?;
        assert_eq!(timed.len(), 1_000);
        // The first records waited for the held sync.
        assert!(timed.max() >= 250_000, "max {} us", timed.max());
        Ok(())
    }
}
