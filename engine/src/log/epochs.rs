//! The leader-epoch checkpoint of one replica: for each leader epoch whose batches this log
//! holds, the first offset written in it (Kafka's `leader-epoch-checkpoint`).
//!
//! Replicas reconcile with it after a restart or a change of leader: a follower keeps the
//! prefix of its log that matches the leader's lineage and truncates the rest (see
//! `replication::state::divergence`).
//!
//! Durability: an entry is persisted (temp file, fdatasync, rename, directory fsync) before
//! the first batch of its epoch is appended, so the file never misses an epoch the log holds.
//! It may name an epoch whose batches a crash lost; such an entry starts at or beyond the
//! log's end and `EpochCache::clamp` drops it.

use std::path::Path;

use super::LogError;
use super::recovery::{read_small_file, write_small_file};
use super::storage::Storage;

/// File name in the partition directory.
pub const EPOCHS_FILE: &str = "leader-epochs";
const EPOCHS_TMP: &str = "leader-epochs.tmp";
const MAGIC: &[u8; 4] = b"RMQE";
/// Most entries kept: older ones are merged away (the oldest is kept as the lineage root).
/// A leader change is rare (a failed disk); 1024 of them outlive any realistic log.
pub const EPOCH_ENTRIES_MAX: usize = 1024;

/// `(leader epoch, first offset)` pairs, epochs and offsets strictly increasing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<(u32, u64)>,
}

impl EpochCache {
    pub fn from_entries(entries: Vec<(u32, u64)>) -> Option<EpochCache> {
        let increasing = entries
            .windows(2)
            .all(|w| matches!(w, [(e0, s0), (e1, s1)] if e0 < e1 && s0 <= s1));
        increasing.then_some(EpochCache { entries })
    }

    pub fn entries(&self) -> &[(u32, u64)] {
        &self.entries
    }

    pub fn last_epoch(&self) -> Option<u32> {
        self.entries.last().map(|(e, _)| *e)
    }

    /// Records that epoch `epoch` starts at `start`. Returns whether the cache changed (and
    /// must be persisted). An epoch at or below the last one is ignored: epochs only grow.
    /// An earlier entry starting at `start` (an epoch that wrote nothing) is replaced.
    pub fn assign(&mut self, epoch: u32, start: u64) -> bool {
        if self.last_epoch().is_some_and(|last| epoch <= last) {
            return false;
        }
        while self.entries.last().is_some_and(|(_, s)| *s >= start) {
            self.entries.pop();
        }
        self.entries.push((epoch, start));
        if self.entries.len() > EPOCH_ENTRIES_MAX {
            self.entries.remove(1);
        }
        true
    }

    /// Drops entries that start at or beyond `end` (the log's end after recovery or
    /// truncation): their epochs hold no batch in this log.
    pub fn clamp(&mut self, end: u64) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(_, s)| *s < end);
        before != self.entries.len()
    }

    /// The largest epoch at or below `epoch` and the offset where it ends in a log ending at
    /// `log_end` (the next epoch's start, or `log_end`). `None` when every epoch is newer.
    pub fn end_of(&self, epoch: u32, log_end: u64) -> Option<(u32, u64)> {
        let at = self.entries.iter().rposition(|(e, _)| *e <= epoch)?;
        let found = self.entries.get(at).map(|(e, _)| *e)?;
        let end = self.entries.get(at + 1).map_or(log_end, |(_, s)| *s);
        Some((found, end.min(log_end)))
    }

    /// The epoch of the record at `offset - 1`, the last record below `offset`.
    pub fn epoch_before(&self, offset: u64) -> Option<u32> {
        self.entries
            .iter()
            .rev()
            .find(|(_, s)| *s < offset)
            .map(|(e, _)| *e)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.entries.len() * 12);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (epoch, start) in &self.entries {
            out.extend_from_slice(&epoch.to_le_bytes());
            out.extend_from_slice(&start.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a file image (trailing zero padding allowed); `None` if damaged.
    pub fn decode(bytes: &[u8]) -> Option<EpochCache> {
        let (magic, rest) = bytes.split_first_chunk::<4>()?;
        if magic != MAGIC {
            return None;
        }
        let (count, mut rest) = rest.split_first_chunk::<4>()?;
        let count = u32::from_le_bytes(*count) as usize;
        if count > EPOCH_ENTRIES_MAX {
            return None;
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let (epoch, after) = rest.split_first_chunk::<4>()?;
            let (start, after) = after.split_first_chunk::<8>()?;
            entries.push((u32::from_le_bytes(*epoch), u64::from_le_bytes(*start)));
            rest = after;
        }
        let body_len = 8 + count * 12;
        let (crc, _) = rest.split_first_chunk::<4>()?;
        if crc32c::crc32c(bytes.get(..body_len)?) != u32::from_le_bytes(*crc) {
            return None;
        }
        EpochCache::from_entries(entries)
    }

    /// Loads the cache of the log in `dir`: empty when there is none yet. A damaged file is
    /// an error: reconciling without it could keep a divergent tail.
    pub async fn load<S: Storage>(storage: &S, dir: &Path) -> Result<EpochCache, LogError> {
        match read_small_file(storage, &dir.join(EPOCHS_FILE)).await? {
            None => Ok(EpochCache::default()),
            Some(bytes) => EpochCache::decode(&bytes).ok_or_else(|| LogError::Config {
                field: EPOCHS_FILE,
                reason: format!("{} is damaged", dir.join(EPOCHS_FILE).display()),
            }),
        }
    }

    /// Replaces the file durably: temp file, fdatasync, rename, directory fsync.
    pub async fn persist<S: Storage>(&self, storage: &S, dir: &Path) -> Result<(), LogError> {
        let tmp = dir.join(EPOCHS_TMP);
        write_small_file(storage, &tmp, &self.encode()).await?;
        storage
            .rename(&tmp, &dir.join(EPOCHS_FILE))
            .await
            .map_err(LogError::io("rename epoch checkpoint"))?;
        storage
            .sync_dir(dir)
            .await
            .map_err(LogError::io("sync log directory"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn assign_keeps_epochs_increasing_and_replaces_empty_epochs() {
        let mut cache = EpochCache::default();
        assert!(cache.assign(1, 0));
        assert!(!cache.assign(1, 10), "same epoch again");
        assert!(cache.assign(2, 10));
        assert!(cache.assign(3, 10), "epoch 2 wrote nothing: replaced");
        assert_eq!(cache.entries(), &[(1, 0), (3, 10)]);
        assert!(!cache.assign(2, 20), "older epoch");
    }

    #[test]
    fn end_of_answers_the_largest_epoch_at_or_below() {
        let cache = EpochCache::from_entries(vec![(1, 0), (3, 100), (5, 150)]).unwrap();
        assert_eq!(cache.end_of(1, 200), Some((1, 100)));
        assert_eq!(cache.end_of(2, 200), Some((1, 100)));
        assert_eq!(cache.end_of(4, 200), Some((3, 150)));
        assert_eq!(cache.end_of(9, 200), Some((5, 200)));
        assert_eq!(cache.end_of(0, 200), None);
        assert_eq!(cache.epoch_before(100), Some(1));
        assert_eq!(cache.epoch_before(101), Some(3));
        assert_eq!(cache.epoch_before(0), None);
    }

    #[test]
    fn file_roundtrips_and_rejects_damage() {
        let cache = EpochCache::from_entries(vec![(1, 0), (4, 77)]).unwrap();
        let mut bytes = cache.encode();
        bytes.resize(4096, 0);
        assert_eq!(EpochCache::decode(&bytes), Some(cache));
        for i in 0..24 {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert_eq!(EpochCache::decode(&bad), None, "flipped byte {i}");
        }
        for end in 0..24 {
            assert_eq!(EpochCache::decode(&bytes[..end]), None, "prefix {end}");
        }
    }

    #[test]
    fn clamp_drops_epochs_beyond_the_end() {
        let mut cache = EpochCache::from_entries(vec![(1, 0), (2, 50), (3, 90)]).unwrap();
        assert!(cache.clamp(50));
        assert_eq!(cache.entries(), &[(1, 0)]);
        assert!(!cache.clamp(50));
    }
}
