//! A partition replica on its shard: the log plus what produce and fetch mean for it.

use std::path::Path;
use std::time::Duration;

use protocol::{Acks, BatchView};

use crate::log::storage::DmaStorage;
use crate::log::{Appended, Log, LogConfig, LogError, Recovery};

/// One partition replica (the leader, in this build), owned by one shard.
///
/// Owner: one shard (`!Send`). The high watermark is the written offset: a consumer sees a
/// record once a completed write holds it (it then survives a crash of the process).
pub struct Partition {
    pub topic: String,
    pub topic_id: u64,
    pub index: u32,
    pub leader_epoch: u32,
    pub log: Log<DmaStorage>,
}

/// Why a produce was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    #[error("batch: {0}")]
    InvalidBatch(#[from] protocol::BatchError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("acknowledgement policy not met within {0:?}")]
    Timeout(Duration),
}

/// What a fetch returns.
#[derive(Debug, Default)]
pub struct Fetched {
    pub records: Vec<u8>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

impl Partition {
    pub async fn open(
        dir: &Path,
        config: LogConfig,
        topic: &str,
        topic_id: u64,
        index: u32,
        leader_epoch: u32,
    ) -> Result<(Partition, Recovery), LogError> {
        let (log, recovery) = Log::open(DmaStorage, dir, config).await?;
        let partition = Partition {
            topic: topic.to_owned(),
            topic_id,
            index,
            leader_epoch,
            log,
        };
        Ok((partition, recovery))
    }

    /// The offset below which consumers may read.
    pub fn high_watermark(&self) -> u64 {
        self.log.offsets().written
    }

    /// Checks, appends and waits for `acks`. With `Acks::None` it returns once appended; the
    /// caller must still have the commit run (a task waiting on `wait_written`).
    /// Replication factor 1: `all` is the leader alone, so it waits like `leader`.
    pub async fn produce(
        &self,
        batch: &[u8],
        acks: Acks,
        timeout: Duration,
    ) -> Result<Appended, ProduceError> {
        BatchView::new(batch)?;
        let appended = self.log.append(batch, self.leader_epoch).await?;
        let waited = match acks {
            Acks::None => return Ok(appended),
            Acks::Leader | Acks::All => {
                glommio::timer::timeout(timeout, async {
                    Ok(self.log.wait_written(appended.next_offset).await)
                })
                .await
            }
            Acks::LeaderFsync | Acks::AllFsync => {
                glommio::timer::timeout(timeout, async {
                    Ok(self.log.wait_synced(appended.next_offset).await)
                })
                .await
            }
        };
        match waited {
            Ok(result) => result.map(|()| appended).map_err(ProduceError::Log),
            Err(_) => Err(ProduceError::Timeout(timeout)),
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
        // Above the written offset but within the log (appended, commit running): wait for it,
        // as for the end. Only past the log's end is out of range.
        if offset < offsets.log_start || offset > offsets.next {
            return Err(LogError::OffsetOutOfRange {
                offset,
                start: offsets.log_start,
                end: offsets.next,
            });
        }
        if offset >= offsets.written && !max_wait.is_zero() {
            let waited = glommio::timer::timeout(max_wait, async {
                Ok(self.log.wait_written_beyond(offset).await)
            })
            .await;
            if let Ok(result) = waited {
                result?;
            }
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
