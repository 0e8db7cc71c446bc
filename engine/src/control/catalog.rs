//! The topic catalogue: which topics exist, their settings, and where each partition's
//! replicas live. Owned and changed by shard 0 (the control plane); every shard keeps a
//! read-only copy for routing.
//!
//! Stored as `catalog.toml` in shard 0's data directory, replaced atomically (write a temp
//! file, fdatasync, rename, fsync the directory) before any change is acknowledged.

use std::path::{Path, PathBuf};

use ahash::AHashMap;
use protocol::api::CreateTopicRequest;
use protocol::limits::TOPIC_PARTITIONS_MAX;
use protocol::{ErrorCode, StorageKind};
use serde::{Deserialize, Serialize};

/// File name of the catalogue in shard 0's data directory.
pub const CATALOG_FILE: &str = "catalog.toml";
const CATALOG_TMP: &str = "catalog.toml.tmp";
/// Format version written in the file; a newer one is refused, not misread.
const CATALOG_VERSION: u32 = 1;

/// One partition's placement. `replicas[0]` is the leader's shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionEntry {
    pub replicas: Vec<u16>,
    pub leader_epoch: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicEntry {
    pub name: String,
    /// Never reused, so a deleted topic's leftovers can never be mistaken for a new one's.
    pub id: u64,
    pub replication_factor: u16,
    pub min_insync: u16,
    #[serde(default)]
    pub retention_ms: Option<u64>,
    #[serde(default)]
    pub retention_bytes: Option<u64>,
    /// Whether leadership may move to a replica outside the in-sync set when none is left
    /// (losing what only the failed leader held). Off unless set in the catalogue.
    #[serde(default)]
    pub unclean_leader_election: bool,
    /// Where the replicas keep their records. Written only for memory topics, so a
    /// catalogue of disk topics reads as it did before memory topics existed.
    #[serde(default, with = "StorageKindDef", skip_serializing_if = "is_disk")]
    pub storage: StorageKind,
    pub partitions: Vec<PartitionEntry>,
}

/// `StorageKind` as the catalogue spells it: `"disk"`, `"memory"`.
#[derive(Serialize, Deserialize)]
#[serde(remote = "StorageKind", rename_all = "lowercase")]
enum StorageKindDef {
    Disk,
    Memory,
}

fn is_disk(storage: &StorageKind) -> bool {
    *storage == StorageKind::Disk
}

impl TopicEntry {
    pub fn leader_shard(&self, partition: u32) -> Option<u16> {
        self.partitions
            .get(partition as usize)?
            .replicas
            .first()
            .copied()
    }
}

/// The catalogue. Immutable once built: a change makes a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    version: u32,
    next_topic_id: u64,
    #[serde(default)]
    topics: Vec<TopicEntry>,
    #[serde(skip)]
    by_name: AHashMap<String, usize>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            version: CATALOG_VERSION,
            next_topic_id: 1,
            topics: Vec::new(),
            by_name: AHashMap::new(),
        }
    }
}

/// Why the catalogue could not be loaded. The broker refuses to start rather than guess.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A refused change, with the code and a sentence for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

fn refuse(code: ErrorCode, message: String) -> Refusal {
    Refusal { code, message }
}

impl Catalog {
    /// Loads `dir/catalog.toml`; `Ok(None)` when there is none yet.
    pub fn load(dir: &Path) -> Result<Option<Catalog>, CatalogError> {
        let path = dir.join(CATALOG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(CatalogError::Read { path, source }),
        };
        let mut catalog: Catalog = toml::from_str(&text).map_err(|error| CatalogError::Parse {
            path: path.clone(),
            message: error.to_string(),
        })?;
        if catalog.version != CATALOG_VERSION {
            let message = format!(
                "catalog version {} is not {CATALOG_VERSION}",
                catalog.version
            );
            return Err(CatalogError::Parse { path, message });
        }
        catalog.reindex();
        Ok(Some(catalog))
    }

    fn reindex(&mut self) {
        self.by_name = self
            .topics
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
    }

    pub fn topics(&self) -> &[TopicEntry] {
        &self.topics
    }

    pub fn topic(&self, name: &str) -> Option<&TopicEntry> {
        self.topics.get(*self.by_name.get(name)?)
    }

    /// The catalogue with the requested topic added, its partitions placed round-robin over
    /// `shards` starting after the previous topic's last partition, so leaders spread evenly.
    pub fn with_topic(
        &self,
        request: &CreateTopicRequest,
        shards: u16,
    ) -> Result<Catalog, Refusal> {
        if let Err(error) = protocol::names::validate_topic_name(&request.name) {
            return Err(refuse(
                ErrorCode::INVALID_TOPIC,
                format!("topic name: {error}"),
            ));
        }
        if self.topic(&request.name).is_some() {
            return Err(refuse(
                ErrorCode::TOPIC_ALREADY_EXISTS,
                format!("topic '{}' already exists", request.name),
            ));
        }
        if request.partitions == 0 || request.partitions > TOPIC_PARTITIONS_MAX {
            return Err(refuse(
                ErrorCode::INVALID_PARTITIONS,
                format!(
                    "partitions must be in 1..={TOPIC_PARTITIONS_MAX}; got {}",
                    request.partitions
                ),
            ));
        }
        let rf = request.replication_factor;
        if rf == 0 || rf > shards {
            return Err(refuse(
                ErrorCode::INVALID_REPLICATION_FACTOR,
                format!(
                    "replication factor must be in 1..={shards}; got {rf} (replicas live on distinct shards)"
                ),
            ));
        }
        let min_insync = request.min_insync.max(1);
        if min_insync > rf {
            return Err(refuse(
                ErrorCode::INVALID_REPLICATION_FACTOR,
                format!("min_insync {min_insync} exceeds the replication factor {rf}"),
            ));
        }
        let start = self
            .topics
            .iter()
            .map(|t| t.partitions.len() as u64)
            .sum::<u64>();
        let partitions = (0..u64::from(request.partitions))
            .map(|p| {
                let leader = ((start + p) % u64::from(shards)) as u16;
                let replicas = (0..rf).map(|r| (leader + r) % shards).collect();
                PartitionEntry {
                    replicas,
                    leader_epoch: 1,
                }
            })
            .collect();
        let mut next = self.clone();
        next.topics.push(TopicEntry {
            name: request.name.clone(),
            id: self.next_topic_id,
            replication_factor: rf,
            min_insync,
            retention_ms: request.retention_ms,
            retention_bytes: request.retention_bytes,
            unclean_leader_election: false,
            storage: request.storage,
            partitions,
        });
        next.next_topic_id += 1;
        next.reindex();
        Ok(next)
    }

    /// The catalogue with leadership of `topic`'s `partition`, whose leader failed in
    /// `epoch`, moved to the first of `in_sync` (followers that were in sync), with the next
    /// epoch. The failed leader becomes the last replica. With nobody in sync, only a topic
    /// that allows unclean election moves to another replica; otherwise it is refused.
    pub fn with_leader_moved(
        &self,
        topic: &str,
        topic_id: u64,
        partition: u32,
        epoch: u32,
        in_sync: &[u16],
    ) -> Result<Catalog, Refusal> {
        let stale = || {
            refuse(
                ErrorCode::NOT_LEADER,
                format!("{topic}-{partition} epoch {epoch} is not current"),
            )
        };
        let Some(entry) = self.topic(topic).filter(|t| t.id == topic_id) else {
            return Err(stale());
        };
        let unclean = entry.unclean_leader_election;
        let Some(placement) = entry.partitions.get(partition as usize) else {
            return Err(stale());
        };
        if placement.leader_epoch != epoch {
            return Err(stale());
        }
        let old = placement.replicas.first().copied();
        let candidates = placement.replicas.iter().skip(1);
        let chosen = in_sync
            .iter()
            .find(|s| placement.replicas.contains(s) && Some(**s) != old)
            .copied()
            .or_else(|| candidates.clone().next().copied().filter(|_| unclean));
        let Some(chosen) = chosen else {
            return Err(refuse(
                ErrorCode::NOT_ENOUGH_REPLICAS,
                format!(
                    "{topic}-{partition}: no in-sync follower to take over (unclean election off)"
                ),
            ));
        };
        let mut replicas = vec![chosen];
        replicas.extend(candidates.copied().filter(|s| *s != chosen));
        replicas.extend(old);
        let mut next = self.clone();
        let index = *self.by_name.get(topic).ok_or_else(stale)?;
        let moved = next
            .topics
            .get_mut(index)
            .and_then(|t| t.partitions.get_mut(partition as usize))
            .ok_or_else(stale)?;
        moved.replicas = replicas;
        moved.leader_epoch = epoch + 1;
        Ok(next)
    }

    /// The catalogue a restarted broker runs: every partition's leader term is a new one,
    /// with the next epoch. A restarted leader's log may have lost appended records a
    /// follower kept (or kept ones the follower never got); with the same epoch the follower
    /// could not tell them apart from the leader's new records at the same offsets.
    pub fn for_restart(&self) -> Result<Catalog, CatalogError> {
        let mut next = self.clone();
        for topic in &mut next.topics {
            for placement in &mut topic.partitions {
                placement.leader_epoch =
                    placement
                        .leader_epoch
                        .checked_add(1)
                        .ok_or_else(|| CatalogError::Parse {
                            path: PathBuf::from(CATALOG_FILE),
                            message: format!("{}: leader epoch exhausted", topic.name),
                        })?;
            }
        }
        Ok(next)
    }

    /// The catalogue with each replicated partition led by its most advanced replica: the
    /// greatest `(last leader epoch, log end)` that `position(topic, partition, shard)`
    /// reports (`None`: unknown, not a candidate). Ties keep the current leader. A replica
    /// that lost its unsynced tail (power loss) must not lead and truncate away what another
    /// replica kept: within one epoch every replica holds a prefix of the same log, so the
    /// longest holds every record any of them does.
    pub fn with_leaders_chosen(
        &self,
        position: impl Fn(&str, u32, u16) -> Option<(u32, u64)>,
    ) -> Catalog {
        let mut next = self.clone();
        for topic in &mut next.topics {
            for (index, placement) in topic.partitions.iter_mut().enumerate() {
                if placement.replicas.len() < 2 {
                    continue;
                }
                let index = index as u32;
                let mut best: Option<(u16, (u32, u64))> = None;
                for &shard in &placement.replicas {
                    let Some(at) = position(&topic.name, index, shard) else {
                        continue;
                    };
                    if best.is_none_or(|(_, b)| at > b) {
                        best = Some((shard, at));
                    }
                }
                let Some((chosen, _)) = best else { continue };
                if placement.replicas.first() != Some(&chosen) {
                    placement.replicas.retain(|s| *s != chosen);
                    placement.replicas.insert(0, chosen);
                }
            }
        }
        next
    }

    /// `persist` for start-up, before any executor runs: temp file, fdatasync, rename,
    /// directory fsync.
    pub fn persist_blocking(&self, dir: &Path) -> Result<(), CatalogError> {
        let tmp = dir.join(CATALOG_TMP);
        let wrap = |path: &Path, source: std::io::Error| CatalogError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::create(&tmp).map_err(|e| wrap(&tmp, e))?;
        std::io::Write::write_all(&mut file, self.encode().as_bytes())
            .map_err(|e| wrap(&tmp, e))?;
        file.sync_data().map_err(|e| wrap(&tmp, e))?;
        drop(file);
        let path = dir.join(CATALOG_FILE);
        std::fs::rename(&tmp, &path).map_err(|e| wrap(&path, e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| wrap(dir, e))
    }

    /// The catalogue without topic `name`.
    pub fn without_topic(&self, name: &str) -> Result<Catalog, Refusal> {
        if self.topic(name).is_none() {
            return Err(refuse(
                ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                format!("topic '{name}' does not exist"),
            ));
        }
        let mut next = self.clone();
        next.topics.retain(|t| t.name != name);
        next.reindex();
        Ok(next)
    }

    /// The file image.
    pub fn encode(&self) -> String {
        let header = "# ringmq topic catalogue: written by shard 0, replaced atomically. Do not edit\n# while the broker runs.\n";
        match toml::to_string(self) {
            Ok(body) => format!("{header}{body}"),
            // Plain structs of strings and integers always serialize.
            Err(error) => unreachable!("catalog serialization: {error}"),
        }
    }

    /// Replaces `dir/catalog.toml` atomically and durably: temp file, fdatasync, rename,
    /// directory fsync. Runs on shard 0's executor.
    pub async fn persist(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(CATALOG_TMP);
        let bytes = self.encode().into_bytes();
        let file = glommio::io::BufferedFile::create(&tmp).await?;
        let len = bytes.len();
        let written = file.write_at(bytes, 0).await;
        let synced = match written {
            Ok(n) if n == len => file.fdatasync().await.map_err(std::io::Error::from),
            Ok(n) => Err(std::io::Error::other(format!("short write {n} of {len}"))),
            Err(error) => Err(error.into()),
        };
        file.close().await?;
        synced?;
        glommio::io::rename(&tmp, dir.join(CATALOG_FILE)).await?;
        let directory = glommio::io::Directory::open(dir).await?;
        let synced = directory.sync().await;
        directory.close().await?;
        Ok(synced?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str, partitions: u32) -> CreateTopicRequest {
        CreateTopicRequest {
            name: name.into(),
            partitions,
            replication_factor: 1,
            min_insync: 1,
            retention_ms: Some(60_000),
            retention_bytes: None,
            storage: StorageKind::Disk,
        }
    }

    #[test]
    fn a_topics_storage_persists_and_disk_topics_read_as_before() {
        let mut memory = request("m", 1);
        memory.storage = StorageKind::Memory;
        let catalog = Catalog::default().with_topic(&request("d", 1), 2).unwrap();
        let disk_only = catalog.encode();
        assert!(!disk_only.contains("storage"), "{disk_only}");
        let catalog = catalog.with_topic(&memory, 2).unwrap();
        let encoded = catalog.encode();
        assert!(encoded.contains("storage = \"memory\""), "{encoded}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CATALOG_FILE), encoded).unwrap();
        let loaded = Catalog::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.topic("m").unwrap().storage, StorageKind::Memory);
        assert_eq!(loaded.topic("d").unwrap().storage, StorageKind::Disk);
        let bad = catalog.encode().replace("\"memory\"", "\"tape\"");
        std::fs::write(dir.path().join(CATALOG_FILE), bad).unwrap();
        assert!(matches!(
            Catalog::load(dir.path()),
            Err(CatalogError::Parse { .. })
        ));
    }

    #[test]
    fn partitions_are_placed_round_robin_across_topics() {
        let catalog = Catalog::default().with_topic(&request("a", 3), 2).unwrap();
        let catalog = catalog.with_topic(&request("b", 3), 2).unwrap();
        let leaders = |name| {
            let topic = catalog.topic(name).unwrap();
            (0..3)
                .map(|p| topic.leader_shard(p).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(leaders("a"), [0, 1, 0]);
        assert_eq!(leaders("b"), [1, 0, 1]);
        assert_eq!(catalog.topic("b").unwrap().id, 2);
    }

    #[test]
    fn bad_topics_are_refused_with_a_reason() {
        let catalog = Catalog::default().with_topic(&request("a", 1), 2).unwrap();
        let code = |result: Result<Catalog, Refusal>| result.unwrap_err().code;
        assert_eq!(
            code(catalog.with_topic(&request("a", 1), 2)),
            ErrorCode::TOPIC_ALREADY_EXISTS
        );
        assert_eq!(
            code(catalog.with_topic(&request("../x", 1), 2)),
            ErrorCode::INVALID_TOPIC
        );
        assert_eq!(
            code(catalog.with_topic(&request("z", 0), 2)),
            ErrorCode::INVALID_PARTITIONS
        );
        assert_eq!(
            code(catalog.with_topic(&request("z", 5000), 2)),
            ErrorCode::INVALID_PARTITIONS
        );
        let mut replicated = request("z", 1);
        replicated.replication_factor = 3;
        let refusal = catalog.with_topic(&replicated, 2).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::INVALID_REPLICATION_FACTOR);
        assert!(refusal.message.contains("1..=2"), "{}", refusal.message);
        replicated.replication_factor = 2;
        replicated.min_insync = 3;
        assert_eq!(
            code(catalog.with_topic(&replicated, 2)),
            ErrorCode::INVALID_REPLICATION_FACTOR
        );
        assert_eq!(
            code(catalog.without_topic("nope")),
            ErrorCode::UNKNOWN_TOPIC_OR_PARTITION
        );
    }

    #[test]
    fn replicas_sit_on_distinct_shards_with_leaders_spread() {
        let mut replicated = request("r", 4);
        replicated.replication_factor = 2;
        let catalog = Catalog::default().with_topic(&replicated, 2).unwrap();
        let topic = catalog.topic("r").unwrap();
        let placements: Vec<Vec<u16>> = topic
            .partitions
            .iter()
            .map(|p| p.replicas.clone())
            .collect();
        assert_eq!(placements, [vec![0, 1], vec![1, 0], vec![0, 1], vec![1, 0]]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CATALOG_FILE), catalog.encode()).unwrap();
        assert_eq!(
            Catalog::load(dir.path()).unwrap().unwrap(),
            catalog,
            "placement persists"
        );
    }

    #[test]
    fn leadership_moves_to_an_in_sync_follower_with_the_next_epoch() {
        let mut replicated = request("r", 1);
        replicated.replication_factor = 2;
        let catalog = Catalog::default().with_topic(&replicated, 2).unwrap();
        let id = catalog.topic("r").unwrap().id;
        let moved = catalog.with_leader_moved("r", id, 0, 1, &[1]).unwrap();
        let placement = &moved.topic("r").unwrap().partitions[0];
        assert_eq!(placement.replicas, [1, 0]);
        assert_eq!(placement.leader_epoch, 2);
        // A stale request (the epoch moved on) changes nothing.
        assert_eq!(
            moved
                .with_leader_moved("r", id, 0, 1, &[0])
                .unwrap_err()
                .code,
            ErrorCode::NOT_LEADER
        );
        // Nobody in sync and unclean election off: refused.
        assert_eq!(
            catalog
                .with_leader_moved("r", id, 0, 1, &[])
                .unwrap_err()
                .code,
            ErrorCode::NOT_ENOUGH_REPLICAS
        );
    }

    #[test]
    fn at_restart_the_most_advanced_replica_leads() {
        let mut request = request("t", 2);
        request.replication_factor = 2;
        let catalog = Catalog::default().with_topic(&request, 2).unwrap();
        let before: Vec<Vec<u16>> = catalog
            .topic("t")
            .unwrap()
            .partitions
            .iter()
            .map(|p| p.replicas.clone())
            .collect();
        assert_eq!(before, vec![vec![0, 1], vec![1, 0]]);
        let positions = |_: &str, partition: u32, shard: u16| match (partition, shard) {
            (0, 0) => Some((3, 100)),
            (0, 1) => Some((3, 120)), // kept the tail the leader lost
            (1, 1) => Some((4, 10)),
            (1, 0) => Some((3, 500)), // longer, but an older epoch's divergent tail
            _ => None,
        };
        let chosen = catalog.with_leaders_chosen(positions);
        let after: Vec<Vec<u16>> = chosen
            .topic("t")
            .unwrap()
            .partitions
            .iter()
            .map(|p| p.replicas.clone())
            .collect();
        assert_eq!(after, vec![vec![1, 0], vec![1, 0]]);
        // Ties and unknown positions keep the leader.
        let same = catalog.with_leaders_chosen(|_, _, _| Some((1, 5)));
        assert_eq!(same, catalog);
        assert_eq!(catalog.with_leaders_chosen(|_, _, _| None), catalog);
    }

    #[test]
    fn catalog_file_roundtrips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::default()
            .with_topic(&request("orders", 4), 2)
            .unwrap();
        let catalog = catalog
            .without_topic("orders")
            .unwrap()
            .with_topic(&request("x", 1), 2)
            .unwrap();
        std::fs::write(dir.path().join(CATALOG_FILE), catalog.encode()).unwrap();
        let loaded = Catalog::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded, catalog);
        assert_eq!(loaded.topic("x").unwrap().id, 2, "ids are never reused");
        std::fs::write(
            dir.path().join(CATALOG_FILE),
            "version = 1\nnext_topic_id = \"x\"",
        )
        .unwrap();
        assert!(matches!(
            Catalog::load(dir.path()),
            Err(CatalogError::Parse { .. })
        ));
        std::fs::write(
            dir.path().join(CATALOG_FILE),
            "version = 9\nnext_topic_id = 1",
        )
        .unwrap();
        assert!(matches!(
            Catalog::load(dir.path()),
            Err(CatalogError::Parse { .. })
        ));
        assert!(
            Catalog::load(&dir.path().join("missing"))
                .unwrap()
                .is_none()
        );
    }
}
