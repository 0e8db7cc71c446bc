//! A partition replica on its shard: the log plus what produce and fetch mean for it.

use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use protocol::{Acks, BatchView};

use crate::log::storage::DmaStorage;
use crate::log::{Appended, Log, LogConfig, LogError, Recovery};
use crate::replication::{Leader, ReplError, ReplicaStatus};

/// The leader replica of a partition on its shard (followers live in
/// `replication::Follower`).
///
/// Owner: one shard (`!Send`). The high watermark is the offset every in-sync replica has
/// written (with replication factor 1: the leader's written offset); consumers read below it.
pub struct Partition {
    pub topic: String,
    pub topic_id: u64,
    pub index: u32,
    pub leader_epoch: u32,
    pub log: Rc<Log<DmaStorage>>,
    pub leader: Rc<Leader<DmaStorage>>,
}

/// Why a produce was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("batch: {0}")]
    InvalidBatch(#[from] protocol::BatchError),
    #[error(transparent)]
    Log(#[from] LogError),
    /// Appended, but the policy was not confirmed in time (or the leader changed): in doubt.
    #[error("acknowledgement policy not met within {0:?}")]
    Timeout(Duration),
    #[error("not the leader")]
    NotLeader,
    #[error("{isr} in-sync replicas, {min_insync} required")]
    NotEnoughReplicas { isr: usize, min_insync: u16 },
}

impl From<ReplError> for ProduceError {
    fn from(error: ReplError) -> ProduceError {
        match error {
            ReplError::NotLeader => ProduceError::NotLeader,
            ReplError::NotEnoughReplicas { isr, min_insync } => {
                ProduceError::NotEnoughReplicas { isr, min_insync }
            }
            ReplError::InDoubt(timeout) => ProduceError::Timeout(timeout),
            ReplError::Log(error) => ProduceError::Log(error),
        }
    }
}

/// What a fetch returns.
#[derive(Debug, Default)]
pub struct Fetched {
    pub records: Vec<u8>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

/// Opens (or creates) a replica's log in `dir`.
pub async fn open_log(
    dir: &Path,
    config: LogConfig,
) -> Result<(Log<DmaStorage>, Recovery), LogError> {
    Log::open(DmaStorage, dir, config).await
}

impl Partition {
    /// The offset below which consumers may read.
    pub fn high_watermark(&self) -> u64 {
        self.leader.hw()
    }

    pub fn status(&self) -> ReplicaStatus {
        self.leader.status()
    }

    /// Checks, appends and waits for `acks` (see `Leader::produce`). With `Acks::None` it
    /// returns once appended; the commit still runs.
    pub async fn produce(
        &self,
        batch: &[u8],
        acks: Acks,
        timeout: Duration,
    ) -> Result<Appended, ProduceError> {
        BatchView::new(batch)?;
        Ok(self.leader.produce(batch, acks, timeout).await?)
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
        if offset >= self.high_watermark() && !max_wait.is_zero() {
            self.leader.wait_hw_beyond(offset, max_wait).await;
        }
        let high_watermark = self.high_watermark();
        let records = self.log.read(offset, max_bytes, high_watermark).await?;
        Ok(Fetched {
            records,
            high_watermark,
            log_start_offset: self.log.offsets().log_start,
        })
    }
}
