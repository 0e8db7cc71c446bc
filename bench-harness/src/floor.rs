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
//! Plain blocking system calls on pinned threads: no runtime, no io_uring, no log format.
//! The files are written full of zeros first, so every measured write overwrites (as into
//! ringmq's pre-zeroed segments), and are then written round and round.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;

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
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
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
        let block = &self.storage[self.aligned..self.aligned + BLOCK];
        self.file.write_all_at(block, self.position)?;
        self.position = (self.position + BLOCK as u64) % FILE_BYTES;
        self.file.sync_data()
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
}
