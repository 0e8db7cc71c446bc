//! Cross-core replication of one partition: the leader pushes its appended batches to its
//! followers (on other shards, each writing its own log in its own data directory), the
//! followers report what they wrote and synced, and the leader keeps the in-sync set and
//! the high watermarks and acknowledges produces by their policy (DESIGN §6).
//!
//! - [`state`]: the pure state machine (ISR, high watermarks, acks, divergence).
//! - [`Leader`] and [`Follower`]: its I/O edges over a [`Log`], a [`Transport`] (the shard
//!   mailboxes in the broker, in-memory queues in the simulation) and a [`Runtime`] (clock,
//!   sleep, spawn). Generic over the log's `Storage`, so the seeded simulation drives the
//!   same code over `SimStorage` on one thread.
//!
//! A session, leader-driven: the leader sends `Probe` with its epoch cache; the follower
//! truncates whatever diverges (restart, change of leader), answers with its log's end, and
//! the leader streams `Append`s from there, at most [`APPENDS_IN_FLIGHT_MAX`] per follower,
//! each carrying every batch appended since the previous one (up to
//! [`APPEND_BYTES_MAX`]). Each answer names the probe it belongs to, so answers from an
//! older session never count.

pub mod state;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use protocol::api::{ReplicaLag, ReplicaState};
use protocol::{Acks, BatchError, BatchHeader, BatchView};

use crate::log::epochs::EpochCache;
use crate::log::notify::Notify;
use crate::log::storage::Storage;
use crate::log::truncate::truncate_to;
use crate::log::{Appended, Health, Log, LogConfig, LogError};
use state::{IsrChange, LagBounds, LeaderOffsets, LeaderState, Standing, divergence};

/// `Append` messages one follower may have unanswered: the pipeline depth of replication.
/// Each carries every batch appended since the previous one, so under a steady producer they
/// are about one produce batch each, and a follower answers one only once it is written (with
/// `sync`, durable). While this bound holds the stream back, the batches behind it are
/// written and leave the leader's memory, and the next `Append` reads them back from the
/// leader's own disk, one read at a time. So it must not bind before the byte bound under a
/// producer's whole window of batches: with 16, a producer keeping 63 batches of 64 KiB in
/// flight (RF=2 `all+fsync`, 1 KiB records) made the leader read 2.7 GB of its own log back
/// in 5 s and replicate 0.51-0.54M records/s; with 64, 17 reads in the run counted, and
/// 0.81-0.88M records/s. (At 16 batches in flight, 16 was enough.)
pub const APPENDS_IN_FLIGHT_MAX: usize = 64;
/// Bytes of batches one follower may have unanswered, whatever their count: no `Append` goes
/// while this much is, so a slow follower holds at most this plus one `Append`
/// ([`APPEND_BYTES_MAX`]) of the leader's memory in its mailbox and inbox.
pub const APPEND_BYTES_IN_FLIGHT_MAX: u64 = 4 << 20;
/// Most bytes of batches in one `Append` (a message is one mailbox slot; a follower far
/// behind catches up in steps of this).
pub const APPEND_BYTES_MAX: usize = 1 << 20;
/// How long the leader waits for a probe's answer before asking again.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// Pause before probing again a follower that was not ready or failed.
pub const PROBE_RETRY: Duration = Duration::from_millis(100);
/// How often the leader checks followers' lag and its own log's health.
pub const TICK_INTERVAL: Duration = Duration::from_millis(50);
/// How often the leader probes a follower that answered `Failed` (it reopens its log at one
/// of them).
const FAILED_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A follower whose log failed reopens it (recovery, as at a restart) at the first probe
/// at least this long after the first probe that found it failed. The wait doubles with
/// each reopen, up to [`REOPEN_BACKOFF_MAX`], until a reopened log has stayed healthy for a
/// whole wait, so a disk that keeps failing is not reopened once a second forever.
pub const REOPEN_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest wait between reopens of a follower's failed log.
pub const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(60);

// A follower one `Append` behind is not lagging, whatever the profile says.
const _: () = assert!(APPEND_BYTES_MAX as u64 <= crate::config::LAG_BYTES_MIN);

/// Which partition replica a message is for. The topic id tells a re-created topic apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplicaKey {
    pub topic: String,
    pub topic_id: u64,
    pub partition: u32,
}

/// A follower's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerStatus {
    /// Following: the offsets are its log's.
    Ready,
    /// Its log failed (fail-stop), or it could not take an `Append`: it cannot follow now.
    /// A follower whose log failed reopens it at a later probe (see [`REOPEN_BACKOFF_MIN`]).
    Failed,
    /// No replica here yet (the shard is still opening it): probe again later.
    NotReady,
    /// An `Append` did not continue its log: probe again.
    Resync,
}

/// What leader and followers say to each other. Owned (crosses cores).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplMessage {
    Probe {
        key: ReplicaKey,
        epoch: u32,
        from: u16,
        probe: u64,
        leader_epochs: Vec<(u32, u64)>,
        leader_next: u64,
    },
    Append {
        key: ReplicaKey,
        epoch: u32,
        from: u16,
        probe: u64,
        /// Offset of the first batch: the follower's log must end exactly here.
        base: u64,
        /// Whole batches as the leader stored them.
        batches: Vec<u8>,
        hw: u64,
        /// Sync after writing: the leader has a waiter for durability.
        sync: bool,
    },
    Progress {
        key: ReplicaKey,
        epoch: u32,
        from: u16,
        probe: u64,
        status: FollowerStatus,
        next: u64,
        written: u64,
        synced: u64,
    },
}

impl ReplMessage {
    pub fn key(&self) -> &ReplicaKey {
        match self {
            ReplMessage::Probe { key, .. }
            | ReplMessage::Append { key, .. }
            | ReplMessage::Progress { key, .. } => key,
        }
    }
}

/// A boxed shard-local future.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Delivers replication messages to other shards. `send` waits while the mailbox is full
/// and answers false when the target is gone.
pub trait Transport {
    fn send(&self, to: u16, message: ReplMessage) -> LocalFuture<bool>;
}

/// Clock, timers and tasks.
pub trait Runtime {
    /// Microseconds from an arbitrary fixed start.
    fn now_us(&self) -> u64;
    fn sleep(&self, duration: Duration) -> LocalFuture<()>;
    fn spawn(&self, task: LocalFuture<()>);
}

/// Why a produce was not acknowledged (beside the log's own errors).
#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("this replica does not lead the partition (any more)")]
    NotLeader,
    #[error("{isr} in-sync replicas, {min_insync} required")]
    NotEnoughReplicas { isr: usize, min_insync: u16 },
    /// Appended, but whether it will be committed is unknown (timeout, or the leader failed
    /// or stepped down meanwhile): neither a success nor a definite failure.
    #[error("acknowledgement policy not met within {0:?}")]
    InDoubt(Duration),
    /// The produced batch is malformed (checked before anything is appended).
    #[error("batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What a leader does once its log fails: given the in-sync followers, ask for failover.
pub type FailoverCallback = Box<dyn FnOnce(Vec<u16>)>;

/// How a follower starts.
pub struct FollowerInit<S: Storage> {
    pub key: ReplicaKey,
    pub shard: u16,
    pub storage: S,
    /// The configuration `log` was opened with (it is reopened after a truncation).
    pub config: LogConfig,
    pub log: Rc<Log<S>>,
    /// The leader's high watermark as last known (0 when unknown).
    pub known_hw: u64,
}

/// Counters of one leader replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplStats {
    pub appends_sent: u64,
    pub append_bytes_sent: u64,
    pub probes_sent: u64,
    pub isr_shrinks: u64,
    pub isr_expands: u64,
}

/// The leader's view of one follower's session.
#[derive(Debug)]
struct Session {
    shard: u16,
    probe: u64,
    streaming: bool,
    answer: Option<(FollowerStatus, u64)>,
    sent_upto: u64,
    /// End offset and bytes of each `Append` not yet answered with a written offset at or
    /// past its end.
    in_flight: VecDeque<(u64, u64)>,
}

/// What a fetch returns.
#[derive(Debug, Default)]
pub struct Fetched {
    pub records: Vec<u8>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

/// A snapshot of a leader's replication, for Metadata and describe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaStatus {
    pub hw: u64,
    pub hw_synced: u64,
    pub log_start: u64,
    pub log_end: u64,
    pub isr: Vec<u16>,
    pub followers: Vec<ReplicaLag>,
}

/// The leader replica of a partition.
///
/// Owner: one shard (`!Send`); shared by its tasks through `Rc`. Its replicator tasks end
/// once `stop` is called.
pub struct Leader<S: Storage> {
    pub key: ReplicaKey,
    pub shard: u16,
    pub epoch: u32,
    log: Rc<Log<S>>,
    state: RefCell<LeaderState>,
    sessions: RefCell<Vec<Session>>,
    changed: Notify,
    sync_wanted: Cell<u64>,
    epochs: RefCell<EpochCache>,
    stopped: Cell<bool>,
    /// Produces between their admission and the end of their append: appends in this
    /// term's epoch that may still land in the log.
    appending: Cell<usize>,
    failure_reported: Cell<bool>,
    /// Called once when the leader's log fails, with the in-sync followers (failover).
    on_failed: RefCell<Option<FailoverCallback>>,
    next_probe: Cell<u64>,
    rt: Rc<dyn Runtime>,
    transport: Rc<dyn Transport>,
    stats: RefCell<ReplStats>,
}

/// Counts one produce's append in progress while alive (also when its future is dropped).
struct Appending<'a> {
    count: &'a Cell<usize>,
    changed: &'a Notify,
}

impl<'a> Appending<'a> {
    fn new(count: &'a Cell<usize>, changed: &'a Notify) -> Appending<'a> {
        count.set(count.get() + 1);
        Appending { count, changed }
    }
}

impl Drop for Appending<'_> {
    fn drop(&mut self) {
        self.count.set(self.count.get().saturating_sub(1));
        self.changed.notify();
    }
}

/// How a leader term starts.
pub struct LeaderInit<S: Storage> {
    pub key: ReplicaKey,
    pub shard: u16,
    pub epoch: u32,
    pub storage: S,
    pub log: Rc<Log<S>>,
    pub followers: Vec<u16>,
    pub min_insync: u16,
    pub bounds: LagBounds,
    /// The high watermark this replica knew (0 after a restart: followers re-establish it).
    pub hw: u64,
}

impl<S: Storage + 'static> Leader<S> {
    /// Starts a leader term: records the epoch in the replica's epoch cache (durably, before
    /// anything of the epoch is appended) and starts one replicator task per follower.
    pub async fn start(
        init: LeaderInit<S>,
        rt: Rc<dyn Runtime>,
        transport: Rc<dyn Transport>,
    ) -> Result<Rc<Leader<S>>, LogError> {
        let log = init.log;
        let mut epochs = EpochCache::load(&init.storage, log.dir()).await?;
        let next = log.offsets().next;
        let mut changed = epochs.clamp(next);
        changed |= epochs.assign(init.epoch, next);
        if changed {
            epochs.persist(&init.storage, log.dir()).await?;
        }
        let now = rt.now_us();
        let leader = Rc::new(Leader {
            key: init.key,
            shard: init.shard,
            epoch: init.epoch,
            state: RefCell::new(
                LeaderState::new(
                    init.epoch,
                    init.min_insync,
                    init.bounds,
                    &init.followers,
                    init.hw.min(next),
                    now,
                )
                .with_hw_synced_at_most(log.offsets().synced),
            ),
            sessions: RefCell::new(
                init.followers
                    .iter()
                    .map(|&shard| Session {
                        shard,
                        probe: 0,
                        streaming: false,
                        answer: None,
                        sent_upto: 0,
                        in_flight: VecDeque::new(),
                    })
                    .collect(),
            ),
            log,
            changed: Notify::default(),
            sync_wanted: Cell::new(0),
            epochs: RefCell::new(epochs),
            stopped: Cell::new(false),
            appending: Cell::new(0),
            failure_reported: Cell::new(false),
            on_failed: RefCell::new(None),
            next_probe: Cell::new(1),
            rt: Rc::clone(&rt),
            transport,
            stats: RefCell::new(ReplStats::default()),
        });
        leader.refresh();
        for follower in init.followers {
            rt.spawn(Box::pin(Rc::clone(&leader).replicate(follower)));
        }
        if !leader.state.borrow().followers().is_empty() {
            rt.spawn(Box::pin(Rc::clone(&leader).tick_loop()));
        }
        Ok(leader)
    }

    pub fn log(&self) -> &Rc<Log<S>> {
        &self.log
    }

    /// Sets what to do once when this leader's log fails (ask the control plane to move
    /// leadership to an in-sync follower).
    pub fn on_failed(&self, callback: FailoverCallback) {
        *self.on_failed.borrow_mut() = Some(callback);
        if self.log.health() != Health::Healthy {
            self.report_failure();
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    /// Ends the term: replicators stop, waiting produces answer in doubt, fetches wake.
    pub fn stop(&self) {
        self.stopped.set(true);
        self.changed.notify();
    }

    /// Ends the term and returns once no append of it can still land in the log: call
    /// before another role (a follower) takes the log over.
    pub async fn stop_and_join(&self) {
        self.stop();
        loop {
            let seen = self.changed.epoch();
            if self.appending.get() == 0 {
                return;
            }
            self.changed.changed(seen).await;
        }
    }

    pub fn stats(&self) -> ReplStats {
        *self.stats.borrow()
    }

    fn leader_offsets(&self) -> LeaderOffsets {
        let offsets = self.log.offsets();
        LeaderOffsets {
            next: offsets.next,
            written: offsets.written,
            synced: offsets.synced,
            healthy: self.log.health() == Health::Healthy,
        }
    }

    /// Consumers read below this.
    pub fn hw(&self) -> u64 {
        self.state.borrow().hw()
    }

    pub fn status(&self) -> ReplicaStatus {
        let lo = self.leader_offsets();
        let now_us = self.rt.now_us();
        let st = self.state.borrow();
        ReplicaStatus {
            hw: st.hw(),
            hw_synced: st.hw_synced(),
            log_start: self.log.offsets().log_start,
            log_end: lo.next,
            isr: st.isr(&lo, self.shard),
            followers: st
                .followers()
                .iter()
                .map(|f| ReplicaLag {
                    shard: f.shard,
                    state: if f.failed() {
                        ReplicaState::Failed
                    } else if f.in_isr() {
                        ReplicaState::InSync
                    } else {
                        ReplicaState::CatchingUp
                    },
                    records_behind: lo.next.saturating_sub(f.written),
                    records_behind_synced: lo.next.saturating_sub(f.synced),
                    time_behind_ms: if f.written >= lo.next {
                        0
                    } else {
                        now_us.saturating_sub(f.caught_up_at_us) / 1000
                    },
                })
                .collect(),
        }
    }

    /// Re-reads the leader's offsets into the high watermarks; wakes waiters on a change.
    fn refresh(&self) {
        let lo = self.leader_offsets();
        let changed = {
            let mut st = self.state.borrow_mut();
            let before = (st.hw(), st.hw_synced());
            st.advance(&lo);
            before != (st.hw(), st.hw_synced())
        };
        if !lo.healthy {
            self.report_failure();
        }
        if changed {
            self.changed.notify();
        }
    }

    fn report_failure(&self) {
        if self.failure_reported.replace(true) {
            return;
        }
        let lo = self.leader_offsets();
        let in_sync: Vec<u16> = self
            .state
            .borrow()
            .isr(&lo, self.shard)
            .into_iter()
            .filter(|s| *s != self.shard)
            .collect();
        tracing::error!(topic = %self.key.topic, partition = self.key.partition, epoch = self.epoch,
            ?in_sync, "leader log failed; asking to move leadership");
        let callback = self.on_failed.borrow_mut().take();
        match callback {
            Some(callback) => callback(in_sync),
            // Not wired yet: report again once it is.
            None => self.failure_reported.set(false),
        }
    }

    /// Checks `batch` (from a client: lengths, records, crc), appends it in this leader's
    /// epoch and waits until `acks` holds, at most `timeout`. `all` with fewer than
    /// `min_insync` in-sync replicas is refused before the append. Once appended, a failure
    /// to confirm is `InDoubt`, never a definite error: the batch may still be committed.
    /// With `Acks::None` it returns once appended; the commit still runs.
    pub async fn produce(
        self: &Rc<Self>,
        batch: &[u8],
        acks: Acks,
        timeout: Duration,
    ) -> Result<Appended, ReplError> {
        self.produce_view(BatchView::new(batch)?, acks, timeout)
            .await
    }

    /// [`Leader::produce`] for a batch already validated (`BatchView`), as a produce
    /// frame's is in the pass that also checks the frame's crc.
    pub async fn produce_view(
        self: &Rc<Self>,
        batch: BatchView<'_>,
        acks: Acks,
        timeout: Duration,
    ) -> Result<Appended, ReplError> {
        let batch = batch.as_bytes();
        if self.stopped.get() {
            return Err(ReplError::NotLeader);
        }
        let lo = self.leader_offsets();
        if !lo.healthy {
            self.report_failure();
            return Err(if self.replicated() {
                ReplError::NotLeader
            } else {
                ReplError::Log(self.log.health().error().unwrap_or(LogError::Closed))
            });
        }
        {
            let st = self.state.borrow();
            if !st.admits(acks, &lo) {
                return Err(ReplError::NotEnoughReplicas {
                    isr: st.isr_len(&lo),
                    min_insync: st.min_insync,
                });
            }
        }
        let appending = Appending::new(&self.appending, &self.changed);
        let appended = self.log.append(batch, self.epoch).await;
        drop(appending);
        let appended = match appended {
            Ok(appended) => appended,
            Err(error) => {
                self.refresh();
                return Err(error.into());
            }
        };
        let next = appended.next_offset;
        self.state.borrow_mut().on_append(next, batch.len() as u64);
        if acks.needs_fsync() {
            self.sync_wanted.set(self.sync_wanted.get().max(next));
        }
        self.changed.notify();
        if acks == Acks::None {
            // Nobody waits, but the write must still happen, and the watermark follows it
            // (a fetch without a wait reads the watermark as it is).
            let leader = Rc::clone(self);
            self.log.commit_soon(next, move || leader.refresh());
            return Ok(appended);
        }
        let rt = Rc::clone(&self.rt);
        let waited =
            futures_lite::future::or(async { Some(self.wait_acked(acks, next).await) }, async {
                rt.sleep(timeout).await;
                None
            })
            .await;
        match waited {
            Some(Ok(())) => Ok(appended),
            Some(Err(error)) if !self.replicated() => Err(ReplError::Log(error)),
            Some(Err(_)) | None => Err(ReplError::InDoubt(timeout)),
        }
    }

    fn replicated(&self) -> bool {
        !self.state.borrow().followers().is_empty()
    }

    async fn wait_acked(&self, acks: Acks, next: u64) -> Result<(), LogError> {
        // A produce that times out drops this future anywhere: the log runs its writes and
        // syncs in tasks of its own, so a dropped wait loses nothing.
        let written = if acks.needs_fsync() {
            self.log.wait_synced(next).await
        } else {
            self.log.wait_written(next).await
        };
        self.refresh();
        written?;
        loop {
            let seen = self.changed.epoch();
            if self.stopped.get() {
                return Err(LogError::Closed);
            }
            let lo = self.leader_offsets();
            if !lo.healthy {
                return Err(self.log.health().error().unwrap_or(LogError::Closed));
            }
            if self.state.borrow().acked(acks, next, &lo) {
                return Ok(());
            }
            self.changed.changed(seen).await;
        }
    }

    /// Long-poll read: whole batches from the one holding `offset`, below the high watermark,
    /// as soon as any exist or once `max_wait` passed (then empty).
    pub async fn fetch(
        &self,
        offset: u64,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<Fetched, LogError> {
        let offsets = self.log.offsets();
        // Above the high watermark but within the log (appended, not yet committed): wait
        // for it, as for the end. Only past the log's end is out of range.
        if offset < offsets.log_start || offset > offsets.next {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: offsets.log_start,
                end: offsets.next,
            });
        }
        if offset >= self.hw() && !max_wait.is_zero() {
            self.wait_hw_beyond(offset, max_wait).await;
        }
        let high_watermark = self.hw();
        let records = self.log.read(offset, max_bytes, high_watermark).await?;
        Ok(Fetched {
            records,
            high_watermark,
            log_start_offset: self.log.offsets().log_start,
        })
    }

    /// Waits until the high watermark passes `offset`, the term ends, or `max_wait` passes.
    pub async fn wait_hw_beyond(&self, offset: u64, max_wait: Duration) {
        futures_lite::future::or(self.hw_beyond(offset), self.rt.sleep(max_wait)).await;
    }

    /// Waits until the high watermark passes `offset`, the term ends, or the log fails.
    pub async fn hw_beyond(&self, offset: u64) {
        loop {
            let seen = self.changed.epoch();
            if self.stopped.get() || self.hw() > offset {
                return;
            }
            if self.log.health() != Health::Healthy {
                return;
            }
            // The leader's own writes move the watermark too: check them first.
            self.refresh();
            if self.hw() > offset {
                return;
            }
            let log = &self.log;
            futures_lite::future::or(self.changed.changed(seen), async {
                let _ = log.wait_written_beyond(offset).await;
            })
            .await;
            self.refresh();
        }
    }

    /// Handles a follower's answer. Never waits: called from the shard's receive loop.
    pub fn on_message(&self, message: ReplMessage) {
        let ReplMessage::Progress {
            epoch,
            from,
            probe,
            status,
            next,
            written,
            synced,
            ..
        } = message
        else {
            return;
        };
        if epoch != self.epoch {
            return;
        }
        let lo = self.leader_offsets();
        let now = self.rt.now_us();
        let change = {
            let mut sessions = self.sessions.borrow_mut();
            let Some(session) = sessions.iter_mut().find(|s| s.shard == from) else {
                return;
            };
            if session.probe != probe {
                return; // an answer from an older session
            }
            let mut st = self.state.borrow_mut();
            match status {
                // Awaiting this probe's answer: this is it.
                FollowerStatus::Ready if !session.streaming && session.answer.is_none() => {
                    session.answer = Some((status, next));
                    if next > lo.next {
                        None // refused by `probe` (follower ahead)
                    } else {
                        st.on_probe_answer(from, next, written, synced, &lo, now)
                    }
                }
                FollowerStatus::Ready => {
                    while session
                        .in_flight
                        .front()
                        .is_some_and(|(end, _)| *end <= written)
                    {
                        session.in_flight.pop_front();
                    }
                    st.on_progress(from, next, written, synced, &lo, now)
                }
                FollowerStatus::Failed => {
                    session.answer = Some((status, next));
                    session.streaming = false;
                    st.on_failed(from, &lo)
                }
                FollowerStatus::NotReady | FollowerStatus::Resync => {
                    session.answer = Some((status, next));
                    session.streaming = false;
                    None
                }
            }
        };
        self.note(change);
        self.changed.notify();
    }

    fn note(&self, change: Option<IsrChange>) {
        let Some(change) = change else { return };
        let mut stats = self.stats.borrow_mut();
        match change {
            IsrChange::Joined(shard) => {
                stats.isr_expands += 1;
                tracing::info!(topic = %self.key.topic, partition = self.key.partition, follower = shard, "follower joined the in-sync set");
            }
            IsrChange::LeftLagTime(shard)
            | IsrChange::LeftLagBytes(shard)
            | IsrChange::LeftFailed(shard)
            | IsrChange::LeftBehind(shard) => {
                stats.isr_shrinks += 1;
                tracing::warn!(topic = %self.key.topic, partition = self.key.partition, follower = shard, ?change, "follower left the in-sync set");
            }
        }
    }

    async fn tick_loop(self: Rc<Self>) {
        while !self.stopped.get() {
            self.rt.sleep(TICK_INTERVAL).await;
            let lo = self.leader_offsets();
            let changes = self.state.borrow_mut().tick(&lo, self.rt.now_us());
            for change in changes {
                self.note(Some(change));
            }
            self.refresh();
            self.changed.notify();
        }
    }

    fn session<T>(&self, shard: u16, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        self.sessions
            .borrow_mut()
            .iter_mut()
            .find(|s| s.shard == shard)
            .map(f)
    }

    /// Waits for `changed` or `duration`, whichever comes first.
    async fn wait_change(&self, seen: u64, duration: Duration) {
        futures_lite::future::or(self.changed.changed(seen), self.rt.sleep(duration)).await;
    }

    /// One follower's replication: probe, then stream, until the term ends or the leader
    /// refuses the follower (for the rest of the term: nothing to probe or stream).
    async fn replicate(self: Rc<Self>, follower: u16) {
        while !self.stopped.get() {
            let refused = self
                .state
                .borrow()
                .follower(follower)
                .is_some_and(|f| f.standing == Standing::Refused);
            if refused {
                return;
            }
            let Some(start) = self.probe(follower).await else {
                continue;
            };
            self.session(follower, |s| {
                s.streaming = true;
                s.sent_upto = start;
                s.in_flight.clear();
            });
            self.stream(follower).await;
        }
    }

    /// Probes until the follower is ready; returns where to stream from.
    async fn probe(&self, follower: u16) -> Option<u64> {
        let probe = self.next_probe.get();
        self.next_probe.set(probe + 1);
        self.session(follower, |s| {
            s.probe = probe;
            s.streaming = false;
            s.answer = None;
        });
        let message = ReplMessage::Probe {
            key: self.key.clone(),
            epoch: self.epoch,
            from: self.shard,
            probe,
            leader_epochs: self.epochs.borrow().entries().to_vec(),
            leader_next: self.log.offsets().next,
        };
        self.stats.borrow_mut().probes_sent += 1;
        if !self.transport.send(follower, message).await {
            self.rt.sleep(PROBE_RETRY).await;
            return None;
        }
        let deadline = self.rt.now_us() + PROBE_TIMEOUT.as_micros() as u64;
        loop {
            let seen = self.changed.epoch();
            if self.stopped.get() {
                return None;
            }
            let answer = self.session(follower, |s| s.answer).flatten();
            tracing::debug!(topic = %self.key.topic, partition = self.key.partition, follower, probe, ?answer, "probe");
            match answer {
                Some((FollowerStatus::Ready, next)) => {
                    if next > self.log.offsets().next {
                        // Cannot happen after a probe (the follower truncates to our
                        // lineage); treat it as a follower that cannot follow.
                        tracing::error!(topic = %self.key.topic, partition = self.key.partition, follower, next, "follower ahead of the leader after a probe");
                        let lo = self.leader_offsets();
                        let change = self.state.borrow_mut().on_refused(follower, &lo);
                        self.note(change);
                        return None;
                    }
                    return Some(next);
                }
                Some((FollowerStatus::Failed, _)) => {
                    self.rt.sleep(FAILED_PROBE_INTERVAL).await;
                    return None;
                }
                Some(_) => {
                    self.rt.sleep(PROBE_RETRY).await;
                    return None;
                }
                None => {}
            }
            let now = self.rt.now_us();
            if now >= deadline {
                return None;
            }
            self.wait_change(seen, Duration::from_micros(deadline - now))
                .await;
        }
    }

    /// Sends appended batches until the session ends.
    async fn stream(&self, follower: u16) {
        loop {
            let seen = self.changed.epoch();
            if self.stopped.get() {
                return;
            }
            let Some((streaming, sent_upto, in_flight, bytes_in_flight, probe)) =
                self.session(follower, |s| {
                    let bytes = s.in_flight.iter().map(|(_, bytes)| bytes).sum::<u64>();
                    (s.streaming, s.sent_upto, s.in_flight.len(), bytes, s.probe)
                })
            else {
                return;
            };
            if !streaming {
                return;
            }
            let next = self.log.offsets().next;
            tracing::trace!(topic = %self.key.topic, partition = self.key.partition, follower, next, sent_upto, in_flight, "stream");
            if next <= sent_upto
                || in_flight >= APPENDS_IN_FLIGHT_MAX
                || bytes_in_flight >= APPEND_BYTES_IN_FLIGHT_MAX
            {
                self.wait_change(seen, TICK_INTERVAL).await;
                continue;
            }
            let batches = match self.log.read(sent_upto, APPEND_BYTES_MAX, next).await {
                Ok(batches) => batches,
                Err(error) => {
                    tracing::warn!(topic = %self.key.topic, partition = self.key.partition, follower, %error, "reading batches to replicate");
                    if let LogError::OffsetOutOfRange { .. } = error {
                        // Behind the log start (retention): it cannot catch up from us.
                        let lo = self.leader_offsets();
                        let change = self.state.borrow_mut().on_refused(follower, &lo);
                        self.note(change);
                    }
                    self.refresh();
                    self.rt.sleep(PROBE_RETRY).await;
                    return;
                }
            };
            let end = end_offset(&batches).unwrap_or(sent_upto);
            if end <= sent_upto {
                self.wait_change(seen, TICK_INTERVAL).await;
                continue;
            }
            let (in_sync, follower_synced) = self
                .state
                .borrow()
                .follower(follower)
                .map_or((false, 0), |f| (f.in_sync, f.synced));
            let sync = !in_sync || self.sync_wanted.get() > follower_synced;
            let bytes = batches.len() as u64;
            let message = ReplMessage::Append {
                key: self.key.clone(),
                epoch: self.epoch,
                from: self.shard,
                probe,
                base: sent_upto,
                batches,
                hw: self.hw(),
                sync,
            };
            self.session(follower, |s| {
                s.sent_upto = end;
                s.in_flight.push_back((end, bytes));
            });
            {
                let mut stats = self.stats.borrow_mut();
                stats.appends_sent += 1;
                stats.append_bytes_sent += bytes;
            }
            if !self.transport.send(follower, message).await {
                self.session(follower, |s| s.streaming = false);
                self.rt.sleep(PROBE_RETRY).await;
                return;
            }
        }
    }
}

/// The offset after the last of `batches` (whole batches as `Log::read` returns them).
pub(crate) fn end_offset(batches: &[u8]) -> Option<u64> {
    checked_batches(batches)
        .map_while(Result::ok)
        .last()
        .map(|(header, _)| header.next_offset())
}

/// Whole batches that this process has checked already, header by header: as a leader's
/// `Log::read` returns them (checked against their crc where they came from its file, before
/// its `append` where they came from its memory) and an `Append` carries them to a follower
/// on another shard of the same process. So only lengths are checked
/// (`BatchHeader::split_first`), not the crc again: the broker validates a batch once. An
/// error ends the walk.
pub(crate) fn checked_batches(
    batches: &[u8],
) -> impl Iterator<Item = Result<(BatchHeader, &[u8]), BatchError>> {
    let mut rest = batches;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let batch = BatchHeader::split_first(rest);
        rest = match &batch {
            Ok((_, bytes)) => rest.get(bytes.len()..).unwrap_or_default(),
            Err(_) => &[],
        };
        Some(batch)
    })
}

/// When a failed follower log is reopened (see `Follower::reopen`).
#[derive(Debug, Clone, Copy)]
struct Reopening {
    /// When the next reopen may run (runtime µs); `None` until a probe found the log failed.
    due_us: Option<u64>,
    /// When the last reopen ran.
    last_us: u64,
    /// The wait before the next reopen.
    backoff: Duration,
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A follower replica of a partition: appends what its leader sends.
///
/// Owner: one shard (`!Send`). Messages are queued by `deliver` (which never waits) and
/// handled in order by one task, so appends stay in order.
pub struct Follower<S: Storage> {
    pub key: ReplicaKey,
    pub shard: u16,
    storage: S,
    dir: PathBuf,
    config: LogConfig,
    log: RefCell<Rc<Log<S>>>,
    epochs: RefCell<EpochCache>,
    leader: Cell<u16>,
    epoch: Cell<u32>,
    probe: Cell<u64>,
    known_hw: Cell<u64>,
    truncations: Cell<u64>,
    /// Times the failed log was reopened and the replica followed again.
    reopens: Cell<u64>,
    reopening: Cell<Reopening>,
    inbox: RefCell<VecDeque<ReplMessage>>,
    inbox_changed: Notify,
    stopped: Cell<bool>,
    /// The message task ended (after `stop`): nothing of this follower touches the log.
    finished: Cell<bool>,
    rt: Rc<dyn Runtime>,
    transport: Rc<dyn Transport>,
}

/// Which leader session a follower's answer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FollowerSession {
    leader: u16,
    epoch: u32,
    probe: u64,
}

/// Bound on queued messages per follower: the leader keeps at most
/// `APPENDS_IN_FLIGHT_MAX` appends plus a probe outstanding, so more is a confused peer.
const FOLLOWER_INBOX_MAX: usize = 4 * APPENDS_IN_FLIGHT_MAX;

impl<S: Storage + Clone + 'static> Follower<S> {
    /// Starts following with `log` (opened from `dir` with `config`): spawns the task that
    /// handles the leader's messages.
    pub async fn start(
        init: FollowerInit<S>,
        rt: Rc<dyn Runtime>,
        transport: Rc<dyn Transport>,
    ) -> Result<Rc<Follower<S>>, LogError> {
        let FollowerInit {
            key,
            shard,
            storage,
            config,
            log,
            known_hw,
        } = init;
        let mut epochs = EpochCache::load(&storage, log.dir()).await?;
        if epochs.clamp(log.offsets().next) {
            epochs.persist(&storage, log.dir()).await?;
        }
        let follower = Rc::new(Follower {
            key,
            shard,
            storage,
            dir: log.dir().to_path_buf(),
            config,
            log: RefCell::new(log),
            epochs: RefCell::new(epochs),
            leader: Cell::new(u16::MAX),
            epoch: Cell::new(0),
            probe: Cell::new(0),
            known_hw: Cell::new(known_hw),
            truncations: Cell::new(0),
            reopens: Cell::new(0),
            reopening: Cell::new(Reopening {
                due_us: None,
                last_us: 0,
                backoff: REOPEN_BACKOFF_MIN,
            }),
            inbox: RefCell::new(VecDeque::new()),
            inbox_changed: Notify::default(),
            stopped: Cell::new(false),
            finished: Cell::new(false),
            rt: Rc::clone(&rt),
            transport,
        });
        rt.spawn(Box::pin(Rc::clone(&follower).run()));
        Ok(follower)
    }

    pub fn log(&self) -> Rc<Log<S>> {
        Rc::clone(&self.log.borrow())
    }

    /// The leader's high watermark as last heard: where a promoted follower starts its own.
    pub fn known_hw(&self) -> u64 {
        self.known_hw.get()
    }

    /// Divergent tails this replica truncated since it started.
    pub fn truncations(&self) -> u64 {
        self.truncations.get()
    }

    /// Times this replica's failed log was reopened (recovered) so it could follow again.
    pub fn reopens(&self) -> u64 {
        self.reopens.get()
    }

    /// The highest leader epoch this replica has followed.
    pub fn epoch(&self) -> u32 {
        self.epoch.get()
    }

    /// Stops following (the replica is promoted, or its topic is gone).
    pub fn stop(&self) {
        self.stopped.set(true);
        self.inbox_changed.notify();
    }

    /// Stops following and hands the replica's log over to the role that takes it (a
    /// promotion): the follower's own log, or, where a failed truncation or reopen left it
    /// closed, the one in its directory opened again (recovered as at a restart, as
    /// `reopen` does). A failed or damaged log is handed over as it is, for the new role to
    /// report.
    pub async fn hand_over(&self) -> Result<Rc<Log<S>>, LogError> {
        self.stop_and_join().await;
        let log = self.log();
        if log.is_closed() && log.health() == Health::Healthy {
            self.replace_log(log.offsets().synced).await?;
        }
        Ok(self.log())
    }

    /// Stops following and returns once the message task ended: a truncation or append in
    /// progress finished, so `log()` is the replica's log for good and no write of this
    /// follower lands in it any more. Call before another role takes the log over.
    pub async fn stop_and_join(&self) {
        self.stop();
        loop {
            let seen = self.inbox_changed.epoch();
            if self.finished.get() {
                return;
            }
            self.inbox_changed.changed(seen).await;
        }
    }

    /// Queues a message from the leader. Never waits.
    pub fn deliver(&self, message: ReplMessage) {
        let mut inbox = self.inbox.borrow_mut();
        if inbox.len() >= FOLLOWER_INBOX_MAX {
            tracing::warn!(topic = %self.key.topic, partition = self.key.partition, "follower inbox full; dropping a message (the leader resyncs)");
            return;
        }
        inbox.push_back(message);
        drop(inbox);
        self.inbox_changed.notify();
    }

    async fn run(self: Rc<Self>) {
        loop {
            let seen = self.inbox_changed.epoch();
            if self.stopped.get() {
                self.finished.set(true);
                self.inbox_changed.notify();
                return;
            }
            let message = self.inbox.borrow_mut().pop_front();
            match message {
                Some(message) => self.handle(message).await,
                None => self.inbox_changed.changed(seen).await,
            }
        }
    }

    /// The session (leader, epoch, probe) this replica follows now.
    fn session(&self) -> FollowerSession {
        FollowerSession {
            leader: self.leader.get(),
            epoch: self.epoch.get(),
            probe: self.probe.get(),
        }
    }

    /// Answers `session` with `log`'s offsets: an answer names the session and describes the
    /// log it was produced under, never a later one.
    async fn answer_with(&self, session: FollowerSession, log: &Log<S>, status: FollowerStatus) {
        let offsets = log.offsets();
        let message = ReplMessage::Progress {
            key: self.key.clone(),
            epoch: session.epoch,
            from: self.shard,
            probe: session.probe,
            status,
            next: offsets.next,
            written: offsets.written,
            synced: offsets.synced,
        };
        let _ = self.transport.send(session.leader, message).await;
    }

    async fn answer(&self, status: FollowerStatus) {
        let log = self.log();
        self.answer_with(self.session(), &log, status).await;
    }

    async fn handle(self: &Rc<Self>, message: ReplMessage) {
        match message {
            ReplMessage::Probe {
                epoch,
                from,
                probe,
                leader_epochs,
                leader_next,
                ..
            } => {
                if epoch < self.epoch.get() {
                    return; // a deposed leader
                }
                self.epoch.set(epoch);
                self.leader.set(from);
                self.probe.set(probe);
                // A truncation or reopen that failed after closing the log left it closed
                // (healthy as it was): reopened at the backoff, as a failed one is.
                if self.log().writable().is_err() && !self.reopen().await {
                    return self.answer(FollowerStatus::Failed).await;
                }
                let Some(leader_epochs) = EpochCache::from_entries(leader_epochs) else {
                    return self.answer(FollowerStatus::NotReady).await;
                };
                let next = self.log().offsets().next;
                let point = divergence(&leader_epochs, leader_next, &self.epochs.borrow(), next);
                if point < next
                    && let Err(error) = self.truncate(point).await
                {
                    tracing::error!(topic = %self.key.topic, partition = self.key.partition, %error, "truncating a divergent tail failed");
                    return self.answer(FollowerStatus::Failed).await;
                }
                self.answer(FollowerStatus::Ready).await;
            }
            ReplMessage::Append {
                epoch,
                from,
                probe,
                base,
                batches,
                hw,
                sync,
                ..
            } => {
                if epoch != self.epoch.get()
                    || from != self.leader.get()
                    || probe != self.probe.get()
                {
                    if epoch > self.epoch.get() {
                        // A newer leader we were never probed by: it must probe first (our
                        // log may diverge from its lineage). Nothing changes here.
                        let session = FollowerSession {
                            leader: from,
                            epoch,
                            probe,
                        };
                        let log = self.log();
                        self.answer_with(session, &log, FollowerStatus::Resync)
                            .await;
                    }
                    return;
                }
                let log = self.log();
                if log.writable().is_err() {
                    return self.answer(FollowerStatus::Failed).await;
                }
                if base != log.offsets().next {
                    return self.answer(FollowerStatus::Resync).await;
                }
                let mut next = base;
                for batch in checked_batches(&batches) {
                    let Ok((header, bytes)) = batch else {
                        tracing::error!(topic = %self.key.topic, partition = self.key.partition, "invalid batch from the leader");
                        return self.answer(FollowerStatus::Resync).await;
                    };
                    if header.base_offset != next {
                        return self.answer(FollowerStatus::Resync).await;
                    }
                    if self
                        .epochs
                        .borrow()
                        .last_epoch()
                        .is_none_or(|last| header.leader_epoch > last)
                    {
                        let persisted = {
                            let mut epochs = self.epochs.borrow().clone();
                            epochs.assign(header.leader_epoch, next);
                            let persisted = epochs.persist(&self.storage, &self.dir).await;
                            persisted.map(|()| epochs)
                        };
                        match persisted {
                            Ok(epochs) => *self.epochs.borrow_mut() = epochs,
                            Err(error) => {
                                tracing::error!(topic = %self.key.topic, partition = self.key.partition, %error, "persisting the epoch cache failed");
                                return self.answer(FollowerStatus::Failed).await;
                            }
                        }
                    }
                    match log.append(bytes, header.leader_epoch).await {
                        Ok(appended) => next = appended.next_offset,
                        Err(error) => {
                            tracing::error!(topic = %self.key.topic, partition = self.key.partition, %error, "follower append failed");
                            return self.answer(FollowerStatus::Failed).await;
                        }
                    }
                }
                self.known_hw.set(self.known_hw.get().max(hw.min(next)));
                let follower = Rc::clone(self);
                let session = self.session();
                self.rt.spawn(Box::pin(async move {
                    follower.report(session, log, next, sync).await;
                }));
            }
            ReplMessage::Progress { .. } => {}
        }
    }

    /// Waits for the write (with `sync`: write and sync, in one group commit) of everything
    /// below `next` and tells the leader.
    /// The answer is stamped with the session the `Append` came in and built from `log`;
    /// dropped once the session or the log changed (a probe came; a truncation replaced the
    /// log): it would describe offsets the replica no longer has.
    async fn report(&self, session: FollowerSession, log: Rc<Log<S>>, next: u64, sync: bool) {
        let done = if sync {
            log.wait_synced(next).await
        } else {
            log.wait_written(next).await
        };
        if session != self.session() || !Rc::ptr_eq(&log, &self.log()) || self.stopped.get() {
            return;
        }
        match done {
            Ok(()) => self.answer_with(session, &log, FollowerStatus::Ready).await,
            Err(LogError::Closed) => {}
            Err(_) => {
                self.answer_with(session, &log, FollowerStatus::Failed)
                    .await
            }
        }
    }

    /// Closes the failed log (or the one a failed truncation left closed) and opens it
    /// again, which recovers it as a restart would, cut back to what it had synced before
    /// the failure: whatever a failed fdatasync covered is dropped, never reported durable
    /// by a second sync, and the leader streams it again.
    /// The probe this answers then truncates whatever diverges. Returns whether the replica
    /// has a healthy log now.
    ///
    /// The first probe after a failure only sets the time of the reopen, one backoff later;
    /// the backoff doubles with each reopen until a reopened log has stayed healthy that
    /// long. A damaged log (a durable batch is invalid) is never reopened: damage is
    /// reported, not repaired. Nor is one whose writes the disk has not returned yet: one
    /// landing late would overwrite the reopened log's blocks.
    async fn reopen(&self) -> bool {
        let old = self.log();
        if matches!(old.health(), Health::Damaged { .. }) {
            return false;
        }
        let now = self.rt.now_us();
        let mut reopening = self.reopening.get();
        let Some(due) = reopening.due_us else {
            // The first probe since the log failed.
            if now.saturating_sub(reopening.last_us) >= micros(reopening.backoff) {
                reopening.backoff = REOPEN_BACKOFF_MIN;
            }
            reopening.due_us = Some(now.saturating_add(micros(reopening.backoff)));
            self.reopening.set(reopening);
            return false;
        };
        if now < due || old.io_in_flight().is_some() {
            return false;
        }
        reopening.backoff = (reopening.backoff * 2).min(REOPEN_BACKOFF_MAX);
        let synced = old.offsets().synced;
        // A failed log's close only releases it; its error says again why it failed.
        let _ = old.close().await;
        if self.stopped.get() {
            return false; // the replica is being removed or the broker stops
        }
        let replaced = self.replace_log(synced).await;
        match &replaced {
            Ok(()) => {
                tracing::warn!(topic = %self.key.topic, partition = self.key.partition,
                    next = self.log().offsets().next, "failed follower log reopened; following again");
                self.reopens.set(self.reopens.get() + 1);
                reopening.last_us = now;
                reopening.due_us = None;
            }
            Err(error) => {
                tracing::error!(topic = %self.key.topic, partition = self.key.partition, %error,
                    retry_in = ?reopening.backoff, "reopening the failed follower log failed");
                reopening.due_us = Some(now.saturating_add(micros(reopening.backoff)));
            }
        }
        self.reopening.set(reopening);
        replaced.is_ok()
    }

    /// Drops the log's records from `point` on: close, truncate the files, reopen.
    async fn truncate(&self, point: u64) -> Result<(), LogError> {
        let old = self.log();
        tracing::warn!(topic = %self.key.topic, partition = self.key.partition, from = point,
            to = old.offsets().next, "truncating a divergent uncommitted tail");
        old.close().await?;
        self.replace_log(point).await?;
        self.truncations.set(self.truncations.get() + 1);
        Ok(())
    }

    /// Replaces the closed log with the one in its directory cut back to `point` (nothing
    /// when it ends there already) and opened again, recovered as at a restart, with the
    /// epoch cache clamped to its end. A log that opens unhealthy is closed again and its
    /// error returned; the replica keeps the closed log meanwhile.
    async fn replace_log(&self, point: u64) -> Result<(), LogError> {
        truncate_to(&self.storage, &self.dir, &self.config, point).await?;
        let (log, _) = Log::open(self.storage.clone(), &self.dir, self.config).await?;
        let mut epochs = self.epochs.borrow().clone();
        let persisted = match log.health().error() {
            Some(error) => Err(error),
            None if epochs.clamp(log.offsets().next) => {
                epochs.persist(&self.storage, &self.dir).await
            }
            None => Ok(()),
        };
        if let Err(error) = persisted {
            let _ = log.close().await;
            if matches!(log.health(), Health::Damaged { .. }) {
                // Damage is reported, not repaired: the replica keeps the damaged log, so
                // no reopen is tried again (see `reopen`).
                *self.log.borrow_mut() = Rc::new(log);
            }
            return Err(error);
        }
        *self.epochs.borrow_mut() = epochs;
        *self.log.borrow_mut() = Rc::new(log);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use protocol::batch::set_base_offset;
    use protocol::{BatchBuilder, BatchError};

    use super::{checked_batches, end_offset};

    fn batch(base_offset: u64, records: usize) -> Vec<u8> {
        let mut builder = BatchBuilder::new();
        for i in 0..records {
            builder
                .append(1_700_000_000_000, b"", format!("v{i}").as_bytes(), &[])
                .unwrap();
        }
        let mut bytes = builder.seal().unwrap().to_vec();
        set_base_offset(&mut bytes, base_offset).unwrap();
        bytes
    }

    #[test]
    fn checked_batches_walks_whole_batches_and_stops_at_the_first_bad_length() {
        let (a, b) = (batch(0, 3), batch(3, 2));
        let both = [a.clone(), b.clone()].concat();
        let walked: Vec<_> = checked_batches(&both).map(Result::unwrap).collect();
        assert_eq!(walked.len(), 2);
        assert_eq!((walked[0].0.base_offset, walked[0].1), (0, &a[..]));
        assert_eq!((walked[1].0.base_offset, walked[1].1), (3, &b[..]));
        assert_eq!(end_offset(&both), Some(5));
        assert_eq!(checked_batches(&[]).count(), 0);
        assert_eq!(end_offset(&[]), None);

        // A batch cut short: an error, then nothing; the end is the last whole batch's.
        let cut = &both[..both.len() - 1];
        let walked: Vec<_> = checked_batches(cut).collect();
        assert_eq!(walked.len(), 2);
        assert!(matches!(walked[1], Err(BatchError::Truncated { .. })));
        assert_eq!(end_offset(cut), Some(3));

        // A length shorter than a header would not move the walk on: an error, not a loop.
        let mut short = a.clone();
        short[16..20].copy_from_slice(&8u32.to_le_bytes());
        let walked: Vec<_> = checked_batches(&short).collect();
        assert_eq!(walked.len(), 1);
        assert!(matches!(walked[0], Err(BatchError::BadLength { len: 8 })));
    }
}
