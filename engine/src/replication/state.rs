//! The replication state machine of one partition, without I/O: what the leader knows of
//! its followers, the in-sync set, the high watermarks and when an acknowledgement holds;
//! and how a follower finds where its log diverges from the leader's.
//!
//! Everything here is a plain function of its inputs (offsets, times in µs from the
//! caller's clock), so the same code runs in the broker and in the seeded single-threaded
//! simulation, and is unit tested without an executor.

use std::collections::VecDeque;

use protocol::Acks;

use crate::log::epochs::EpochCache;

/// Bounds after which a follower leaves the in-sync set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LagBounds {
    /// A follower that has not caught up with the leader's end for this long leaves.
    pub time_us: u64,
    /// A follower more than this many bytes of batches behind the leader's end leaves.
    pub bytes: u64,
}

/// The leader's own offsets, read from its log when needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaderOffsets {
    pub next: u64,
    pub written: u64,
    pub synced: u64,
    /// False once the leader's log failed: it then counts for nothing.
    pub healthy: bool,
}

/// Whether the leader counts a follower at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Following,
    /// Its log failed (fail-stop) or it could not take an `Append`: out of the in-sync set,
    /// its reports ignored, until it answers a probe `Ready` again (it reopened its log).
    Failed,
    /// Refused by the leader for the rest of the term: ahead of the leader after a probe,
    /// or behind the leader's log start. A `Ready` answer does not change that.
    Refused,
}

/// What the leader knows of one follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerView {
    pub shard: u16,
    /// Offsets the follower reported (its log's end, completed writes, durable point).
    pub next: u64,
    pub written: u64,
    pub synced: u64,
    /// Holds the high watermarks back (it is waited for). At a term's start every follower
    /// does, until it joins or leaves.
    pub in_sync: bool,
    /// Answered a probe of this term: its reports count (before, they may describe a log a
    /// truncation is about to cut).
    pub answered: bool,
    /// Answered a probe of this term holding everything below the high watermarks: it
    /// counts toward `min_insync` and may take over. Only then is it in the in-sync set.
    pub joined: bool,
    pub standing: Standing,
    /// Last time (µs) its written offset reached the leader's end as of its previous report.
    pub caught_up_at_us: u64,
    /// The leader's end when the previous report arrived: the mark the next report must reach.
    target: u64,
}

impl FollowerView {
    /// In the in-sync set: in sync and joined in this term.
    pub fn in_isr(&self) -> bool {
        self.in_sync && self.joined
    }

    /// Failed or refused: the leader does not count it.
    pub fn failed(&self) -> bool {
        self.standing != Standing::Following
    }
}

/// Why the in-sync set changed, for the log and for tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsrChange {
    Joined(u16),
    LeftLagTime(u16),
    LeftLagBytes(u16),
    LeftFailed(u16),
    /// A probe's answer showed it no longer holds everything below the watermarks.
    LeftBehind(u16),
}

/// The leader's replication state of one partition.
///
/// Owner: the leader's shard. Invariants: `hw_synced <= hw`; both only grow; `hw` never
/// exceeds what the leader and every in-sync follower have written (`hw_synced`: synced),
/// except that both keep values reached before a follower left or the set shrank.
#[derive(Debug, Clone)]
pub struct LeaderState {
    pub epoch: u32,
    pub min_insync: u16,
    pub bounds: LagBounds,
    followers: Vec<FollowerView>,
    hw: u64,
    hw_synced: u64,
    /// `(next offset after a batch, bytes appended up to it)` for the batches appended since
    /// the slowest in-sync follower's written offset: the byte lag of a follower.
    bytes_at: VecDeque<(u64, u64)>,
    bytes_appended: u64,
}

impl LeaderState {
    /// A new leader term. Every follower starts pending: it holds the high watermarks back
    /// (offsets 0) but is not in the in-sync set (counts for no `min_insync`, is no failover
    /// candidate) until it answered a probe of this term with everything below them; one that
    /// stays silent past the lag time stops holding them. `hw` is what this replica knew of
    /// the previous term's.
    pub fn new(
        epoch: u32,
        min_insync: u16,
        bounds: LagBounds,
        followers: &[u16],
        hw: u64,
        now_us: u64,
    ) -> LeaderState {
        LeaderState {
            epoch,
            min_insync,
            bounds,
            followers: followers
                .iter()
                .map(|&shard| FollowerView {
                    shard,
                    next: 0,
                    written: 0,
                    synced: 0,
                    in_sync: true,
                    answered: false,
                    joined: false,
                    standing: Standing::Following,
                    caught_up_at_us: now_us,
                    target: 0,
                })
                .collect(),
            hw,
            hw_synced: hw,
            bytes_at: VecDeque::new(),
            bytes_appended: 0,
        }
    }

    /// Lowers the durable watermark to `synced`: a promoted replica knows the previous term's
    /// watermark but may not have synced that far itself.
    pub fn with_hw_synced_at_most(mut self, synced: u64) -> LeaderState {
        self.hw_synced = self.hw_synced.min(synced);
        self
    }

    pub fn followers(&self) -> &[FollowerView] {
        &self.followers
    }

    pub fn follower(&self, shard: u16) -> Option<&FollowerView> {
        self.followers.iter().find(|f| f.shard == shard)
    }

    /// Consumers read below this.
    pub fn hw(&self) -> u64 {
        self.hw
    }

    /// Every in-sync replica has synced below this.
    pub fn hw_synced(&self) -> u64 {
        self.hw_synced
    }

    /// In-sync replicas, the leader included while its log is healthy.
    pub fn isr(&self, leader: &LeaderOffsets, leader_shard: u16) -> Vec<u16> {
        let mut isr = Vec::with_capacity(self.followers.len() + 1);
        if leader.healthy {
            isr.push(leader_shard);
        }
        isr.extend(
            self.followers
                .iter()
                .filter(|f| f.in_isr())
                .map(|f| f.shard),
        );
        isr
    }

    pub fn isr_len(&self, leader: &LeaderOffsets) -> usize {
        usize::from(leader.healthy) + self.followers.iter().filter(|f| f.in_isr()).count()
    }

    /// Whether a produce with `acks` may be appended now: `all` needs `min_insync` in-sync
    /// replicas (NotEnoughReplicas otherwise, never a silent downgrade).
    pub fn admits(&self, acks: Acks, leader: &LeaderOffsets) -> bool {
        match acks {
            Acks::All | Acks::AllFsync => self.isr_len(leader) >= usize::from(self.min_insync),
            Acks::None | Acks::Leader | Acks::LeaderFsync => true,
        }
    }

    /// Whether the batch ending at `next` may be acknowledged with `acks` (`all`: every
    /// in-sync replica wrote it and they are at least `min_insync`).
    pub fn acked(&self, acks: Acks, next: u64, leader: &LeaderOffsets) -> bool {
        let enough = self.isr_len(leader) >= usize::from(self.min_insync);
        match acks {
            Acks::None => true,
            Acks::Leader => leader.written >= next,
            Acks::LeaderFsync => leader.synced >= next,
            Acks::All => enough && leader.healthy && self.hw >= next,
            Acks::AllFsync => enough && leader.healthy && self.hw_synced >= next,
        }
    }

    /// The leader appended a batch of `bytes` ending at `next`.
    pub fn on_append(&mut self, next: u64, bytes: u64) {
        if self.followers.is_empty() {
            return; // nobody can lag
        }
        self.bytes_appended += bytes;
        self.bytes_at.push_back((next, self.bytes_appended));
        // Bounded: entries a follower can no longer need (past the byte bound) go.
        while self
            .bytes_at
            .front()
            .is_some_and(|(_, b)| self.bytes_appended - b > self.bounds.bytes.saturating_mul(2))
        {
            self.bytes_at.pop_front();
        }
    }

    /// Bytes of batches the leader has beyond `offset`.
    pub fn bytes_beyond(&self, offset: u64) -> u64 {
        let at = self.bytes_at.iter().rev().find(|(next, _)| *next <= offset);
        match at {
            Some((_, bytes)) => self.bytes_appended - bytes,
            // Older than everything remembered: at least all of it.
            None if self.bytes_at.front().is_some_and(|(n, _)| *n > offset) => {
                self.bytes_appended
                    - self
                        .bytes_at
                        .front()
                        .map_or(self.bytes_appended, |(_, b)| *b)
                    + 1
            }
            None => 0,
        }
    }

    /// A follower answered a probe of this term: its offsets are exactly these (after any
    /// truncation), whatever it reported before. Returns the change of the in-sync set.
    pub fn on_probe_answer(
        &mut self,
        shard: u16,
        next: u64,
        written: u64,
        synced: u64,
        leader: &LeaderOffsets,
        now_us: u64,
    ) -> Option<IsrChange> {
        let follower = self.followers.iter_mut().find(|f| f.shard == shard)?;
        if follower.standing == Standing::Refused {
            return None;
        }
        // Ready to a probe of this term: a follower whose log had failed reopened it and
        // follows again, from the offsets it gives here; it rejoins once caught up.
        follower.standing = Standing::Following;
        follower.next = next.max(written);
        follower.written = written;
        follower.synced = synced.min(written);
        follower.answered = true;
        let mut left = None;
        if follower.written < self.hw || follower.synced < self.hw_synced {
            // Lost records below the watermarks (cannot happen within a term to a healthy
            // replica): it no longer holds what it must to be in the in-sync set.
            if follower.in_isr() {
                left = Some(IsrChange::LeftBehind(shard));
            }
            follower.in_sync = false;
            follower.joined = false;
        }
        self.on_progress(shard, next, written, synced, leader, now_us)
            .or(left)
    }

    /// A follower reported its offsets in the session of a probe it answered. Returns the
    /// change of the in-sync set, if any.
    pub fn on_progress(
        &mut self,
        shard: u16,
        next: u64,
        written: u64,
        synced: u64,
        leader: &LeaderOffsets,
        now_us: u64,
    ) -> Option<IsrChange> {
        let follower = self.followers.iter_mut().find(|f| f.shard == shard)?;
        if follower.failed() || !follower.answered {
            return None;
        }
        follower.next = next.max(written);
        follower.written = follower.written.max(written);
        follower.synced = follower.synced.max(synced);
        if follower.written >= follower.target || follower.written >= leader.next {
            follower.caught_up_at_us = now_us;
        }
        follower.target = leader.next;
        // A pending follower holds the watermarks: with its report they may move (not
        // past it), and it joins once it holds everything below them.
        self.advance(leader);
        let (hw, hw_synced) = (self.hw, self.hw_synced);
        let follower = self.followers.iter_mut().find(|f| f.shard == shard)?;
        let mut change = None;
        if !follower.in_isr() && follower.written >= hw && follower.synced >= hw_synced {
            follower.in_sync = true;
            follower.joined = true;
            follower.caught_up_at_us = now_us;
            change = Some(IsrChange::Joined(shard));
        }
        self.advance(leader);
        change
    }

    /// The leader cannot stream to a follower in this term: it leaves the in-sync set for
    /// the rest of the term (`Standing::Refused`).
    pub fn on_refused(&mut self, shard: u16, leader: &LeaderOffsets) -> Option<IsrChange> {
        self.leave(shard, Standing::Refused, leader)
    }

    /// A follower's log failed or it could not take an `Append`: it leaves the in-sync set
    /// until it answers a probe `Ready` (`Standing::Failed`).
    pub fn on_failed(&mut self, shard: u16, leader: &LeaderOffsets) -> Option<IsrChange> {
        self.leave(shard, Standing::Failed, leader)
    }

    fn leave(
        &mut self,
        shard: u16,
        standing: Standing,
        leader: &LeaderOffsets,
    ) -> Option<IsrChange> {
        let follower = self.followers.iter_mut().find(|f| f.shard == shard)?;
        let was = follower.in_isr();
        if follower.standing != Standing::Refused {
            follower.standing = standing;
        }
        follower.in_sync = false;
        follower.joined = false;
        self.advance(leader);
        was.then_some(IsrChange::LeftFailed(shard))
    }

    /// Time passed: followers lagging past a bound leave the in-sync set.
    pub fn tick(&mut self, leader: &LeaderOffsets, now_us: u64) -> Vec<IsrChange> {
        let mut changes = Vec::new();
        let mut any = false;
        let bytes_beyond: Vec<u64> = self
            .followers
            .iter()
            .map(|f| self.bytes_beyond(f.written))
            .collect();
        for (follower, beyond) in self.followers.iter_mut().zip(bytes_beyond) {
            if !follower.in_sync {
                continue;
            }
            if follower.written >= leader.next {
                follower.caught_up_at_us = now_us;
                continue;
            }
            let left = if now_us.saturating_sub(follower.caught_up_at_us) > self.bounds.time_us {
                IsrChange::LeftLagTime(follower.shard)
            } else if beyond > self.bounds.bytes {
                IsrChange::LeftLagBytes(follower.shard)
            } else {
                continue;
            };
            if follower.joined {
                changes.push(left);
            }
            follower.in_sync = false;
            follower.joined = false;
            // Pending and dropped: the watermarks stop waiting for it all the same.
            any = true;
        }
        if any {
            self.advance(leader);
        }
        changes
    }

    /// Recomputes the high watermarks from the in-sync replicas. They never go back.
    pub fn advance(&mut self, leader: &LeaderOffsets) {
        if !leader.healthy {
            return;
        }
        let in_sync = self.followers.iter().filter(|f| f.in_sync);
        let written = in_sync
            .clone()
            .map(|f| f.written)
            .fold(leader.written, u64::min);
        let synced = in_sync.map(|f| f.synced).fold(leader.synced, u64::min);
        self.hw = self.hw.max(written);
        self.hw_synced = self.hw_synced.max(synced).min(self.hw);
        self.trim_bytes_at();
    }

    /// Forgets the byte positions no in-sync follower can need any more: those below the
    /// slowest one's written offset (the last entry at or below it stays, to measure from).
    /// Followers out of the set are not measured in bytes.
    fn trim_bytes_at(&mut self) {
        let floor = self
            .followers
            .iter()
            .filter(|f| f.in_sync)
            .map(|f| f.written)
            .min()
            .unwrap_or(u64::MAX);
        while self.bytes_at.len() > 1 && self.bytes_at.get(1).is_some_and(|(n, _)| *n <= floor) {
            self.bytes_at.pop_front();
        }
    }
}

/// Where a follower's log stops matching the leader's: the follower keeps `[0, point)` and
/// truncates the rest. Kafka's rule (KIP-101/279), computed with both epoch caches at once:
/// for the epoch `e` of the follower's last record, the leader's largest epoch `E <= e`
/// ends at `end_l(E)`. If `E == e`, the records match up to `min(follower end, end_l)`.
/// Otherwise the follower's records of epochs above `E` never came from this lineage: cut at
/// `min(end_l(E), end_f(E))` and look again.
pub fn divergence(
    leader: &EpochCache,
    leader_next: u64,
    follower: &EpochCache,
    follower_next: u64,
) -> u64 {
    let mut point = follower_next;
    // Each round lowers `point` below the start of at least one follower epoch: bounded.
    for _ in 0..=follower.entries().len() {
        let Some(epoch) = follower.epoch_before(point) else {
            // Records without a known epoch (or none at all): only a prefix both hold for
            // sure is safe, and that is nothing.
            return point.min(
                follower
                    .entries()
                    .first()
                    .map_or(0, |(_, start)| *start)
                    .min(point),
            );
        };
        let Some((found, leader_end)) = leader.end_of(epoch, leader_next) else {
            // The leader has no epoch this old: nothing of the follower's can be trusted.
            return 0;
        };
        if found == epoch {
            return point.min(leader_end);
        }
        let follower_end = follower.end_of(found, point).map_or(0, |(_, end)| end);
        let next = point.min(leader_end).min(follower_end);
        if next >= point {
            return point;
        }
        point = next;
    }
    point
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const BOUNDS: LagBounds = LagBounds {
        time_us: 1_000_000,
        bytes: 1 << 20,
    };

    fn leader(next: u64, written: u64, synced: u64) -> LeaderOffsets {
        LeaderOffsets {
            next,
            written,
            synced,
            healthy: true,
        }
    }

    #[test]
    fn hw_is_the_least_written_offset_of_the_in_sync_replicas() {
        let mut state = LeaderState::new(1, 2, BOUNDS, &[1, 2], 0, 0);
        let l = leader(10, 10, 4);
        state.on_probe_answer(1, 8, 8, 2, &l, 1);
        assert_eq!(state.hw(), 0, "follower 2 has not reported");
        state.on_probe_answer(2, 6, 6, 6, &l, 2);
        assert_eq!(state.hw(), 6);
        assert_eq!(state.hw_synced(), 2);
        assert!(state.acked(Acks::All, 6, &l));
        assert!(!state.acked(Acks::All, 7, &l));
        assert!(state.acked(Acks::AllFsync, 2, &l));
        assert!(!state.acked(Acks::AllFsync, 3, &l));
        assert!(state.acked(Acks::LeaderFsync, 4, &l));
    }

    #[test]
    fn a_silent_follower_leaves_after_the_lag_time_and_rejoins_once_caught_up() {
        let mut state = LeaderState::new(1, 2, BOUNDS, &[1], 0, 0);
        let l = leader(10, 10, 10);
        assert!(
            !state.admits(Acks::All, &l),
            "not in the in-sync set before it answered a probe of this term"
        );
        state.on_probe_answer(1, 0, 0, 0, &l, 0);
        assert!(state.admits(Acks::All, &l));
        assert!(state.tick(&l, 500_000).is_empty());
        assert_eq!(state.tick(&l, 1_000_001), vec![IsrChange::LeftLagTime(1)]);
        assert_eq!(state.hw(), 10, "the leader alone is the in-sync set");
        assert!(
            !state.admits(Acks::All, &l),
            "min_insync 2: NotEnoughReplicas"
        );
        assert!(!state.acked(Acks::All, 10, &l), "never a silent downgrade");
        assert!(state.admits(Acks::Leader, &l));
        assert_eq!(state.on_progress(1, 5, 5, 5, &l, 1_100_000), None);
        assert_eq!(
            state.on_progress(1, 10, 10, 10, &l, 1_200_000),
            Some(IsrChange::Joined(1))
        );
        assert!(state.acked(Acks::All, 10, &l));
    }

    #[test]
    fn a_follower_far_behind_in_bytes_leaves() {
        let mut state = LeaderState::new(1, 1, BOUNDS, &[1], 0, 0);
        for i in 1..=3 {
            state.on_append(i * 100, 1 << 20);
        }
        let l = leader(300, 300, 300);
        state.on_probe_answer(1, 100, 100, 100, &l, 10);
        assert_eq!(state.tick(&l, 20), vec![IsrChange::LeftLagBytes(1)]);
    }

    #[test]
    fn a_failed_follower_leaves_until_it_answers_a_probe_and_hw_never_goes_back() {
        let mut state = LeaderState::new(1, 1, BOUNDS, &[1], 0, 0);
        let l = leader(10, 10, 10);
        state.on_probe_answer(1, 7, 7, 7, &l, 1);
        assert_eq!(state.hw(), 7);
        assert_eq!(state.on_failed(1, &l), Some(IsrChange::LeftFailed(1)));
        assert_eq!(state.hw(), 10);
        assert_eq!(state.on_progress(1, 10, 10, 10, &l, 2), None);
        assert!(!state.followers()[0].in_sync);
        let failed_leader = LeaderOffsets {
            healthy: false,
            ..l
        };
        assert!(!state.acked(Acks::All, 10, &failed_leader));
        assert_eq!(state.isr(&l, 0), vec![0]);
        // It reopened its log and answers the next probe from where its log ends: it counts
        // again and rejoins once it holds everything below the watermarks.
        assert_eq!(state.on_probe_answer(1, 8, 8, 8, &l, 3), None);
        assert!(!state.followers()[0].failed());
        assert_eq!(state.hw(), 10, "a rejoining follower never moves hw back");
        assert_eq!(
            state.on_progress(1, 10, 10, 10, &l, 4),
            Some(IsrChange::Joined(1))
        );
        assert_eq!(state.isr(&l, 0), vec![0, 1]);
    }

    #[test]
    fn a_follower_the_leader_refused_stays_failed_for_the_term() {
        let mut state = LeaderState::new(1, 1, BOUNDS, &[1], 0, 0);
        let l = leader(10, 10, 10);
        state.on_probe_answer(1, 10, 10, 10, &l, 1);
        assert_eq!(state.on_refused(1, &l), Some(IsrChange::LeftFailed(1)));
        assert_eq!(state.on_probe_answer(1, 10, 10, 10, &l, 2), None);
        assert!(state.followers()[0].failed());
        assert_eq!(state.isr(&l, 0), vec![0]);
    }

    #[test]
    fn followers_join_a_term_only_by_answering_a_probe_and_the_answer_sets_their_offsets() {
        let mut state = LeaderState::new(2, 2, BOUNDS, &[1, 2], 0, 0);
        let l = leader(10, 10, 10);
        assert_eq!(
            state.isr(&l, 0),
            vec![0],
            "pending followers are not in the set"
        );
        // Reports before a probe answer (a previous session's) count for nothing.
        assert_eq!(state.on_progress(1, 10, 10, 10, &l, 1), None);
        assert_eq!(state.hw(), 0, "pending followers hold the watermark");
        assert_eq!(
            state.on_probe_answer(1, 10, 10, 10, &l, 2),
            Some(IsrChange::Joined(1))
        );
        assert_eq!(state.isr(&l, 0), vec![0, 1]);
        // A later answer (after a truncation) is what the follower holds: set, not max.
        state.on_probe_answer(1, 4, 4, 4, &l, 3);
        assert_eq!(state.follower(1).unwrap().written, 4);
        // A silent follower stops holding the watermark after the lag time.
        state.on_probe_answer(1, 10, 10, 10, &l, 4);
        assert_eq!(state.hw(), 0, "follower 2 pending");
        state.tick(&l, 1_000_002);
        assert_eq!(state.hw(), 10);
        assert_eq!(state.isr(&l, 0), vec![0, 1]);
    }

    #[test]
    fn byte_positions_are_kept_only_beyond_the_slowest_in_sync_follower() {
        let mut state = LeaderState::new(1, 2, BOUNDS, &[1], 0, 0);
        let l = leader(1000, 1000, 1000);
        state.on_probe_answer(1, 0, 0, 0, &l, 0);
        for i in 1..=1000 {
            state.on_append(i, 100);
        }
        assert_eq!(state.bytes_at.len(), 1000);
        state.on_progress(1, 990, 990, 990, &l, 1);
        assert_eq!(state.bytes_at.len(), 11, "[990, 1000]");
        assert_eq!(state.bytes_beyond(990), 1000);
        assert_eq!(state.bytes_beyond(995), 500);
    }

    fn cache(entries: &[(u32, u64)]) -> EpochCache {
        EpochCache::from_entries(entries.to_vec()).unwrap()
    }

    #[test]
    fn divergence_keeps_the_matching_prefix() {
        // Same lineage, follower behind or ahead within the leader's last epoch.
        let l = cache(&[(1, 0), (3, 100)]);
        assert_eq!(divergence(&l, 150, &cache(&[(1, 0)]), 80), 80);
        assert_eq!(divergence(&l, 150, &cache(&[(1, 0), (3, 100)]), 140), 140);
        // The follower has more of epoch 3 than the leader: cut at the leader's end.
        assert_eq!(divergence(&l, 150, &cache(&[(1, 0), (3, 100)]), 170), 150);
        // The follower wrote epoch 1 past where the leader's epoch 1 ended.
        assert_eq!(divergence(&l, 150, &cache(&[(1, 0)]), 120), 100);
        // The follower led epoch 2 (the leader never saw it) from 50.
        assert_eq!(divergence(&l, 150, &cache(&[(1, 0), (2, 50)]), 80), 50);
        // Nothing known about the leader's lineage that old.
        assert_eq!(divergence(&cache(&[(4, 0)]), 10, &cache(&[(1, 0)]), 5), 0);
        // Empty follower.
        assert_eq!(divergence(&l, 150, &EpochCache::default(), 0), 0);
    }
}
