//! The client's view of the cluster: shards and their addresses, topics, partition leaders.

use std::collections::HashMap;

use protocol::api::{MetadataResponse, PartitionMetadata, ShardAddress, TopicMetadata};
use protocol::{ApiKey, ErrorCode};

use crate::error::ClientError;

/// One `Metadata` answer, indexed by topic name.
///
/// Owner: the [`Client`](crate::Client) that fetched it. It is a snapshot: leaders move, and
/// the client refreshes it on demand and after retriable errors.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    shards: Vec<ShardAddress>,
    topics: Vec<TopicMetadata>,
    by_name: HashMap<String, usize>,
}

impl Metadata {
    /// Indexes a broker's answer. Topics the broker reports with an error are kept, so a
    /// lookup can say why they are unusable.
    pub fn from_response(response: MetadataResponse) -> Metadata {
        let by_name = response
            .topics
            .iter()
            .enumerate()
            .map(|(at, topic)| (topic.name.clone(), at))
            .collect();
        Metadata {
            shards: response.shards,
            topics: response.topics,
            by_name,
        }
    }

    /// Every shard and the port it listens on for shard-aware clients.
    pub fn shards(&self) -> &[ShardAddress] {
        &self.shards
    }

    /// Every topic, in the broker's order.
    pub fn topics(&self) -> &[TopicMetadata] {
        &self.topics
    }

    /// One topic by name; `None` if the broker did not list it.
    pub fn topic(&self, name: &str) -> Option<&TopicMetadata> {
        self.by_name.get(name).and_then(|&at| self.topics.get(at))
    }

    /// The partition's metadata. `UnknownTopic`/`UnknownPartition` when it is not listed,
    /// `Broker` (with the code the broker gave) when the topic or partition carries an error.
    pub fn partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<&PartitionMetadata, ClientError> {
        let Some(meta) = self.topic(topic) else {
            return Err(ClientError::UnknownTopic(topic.to_string()));
        };
        if meta.error == ErrorCode::UNKNOWN_TOPIC_OR_PARTITION {
            return Err(ClientError::UnknownTopic(topic.to_string()));
        }
        if !meta.error.is_ok() {
            return Err(ClientError::broker(
                ApiKey::Metadata,
                meta.error,
                format!("topic {topic}"),
            ));
        }
        // Partitions are normally listed in order; fall back to a search if they are not.
        let found = meta
            .partitions
            .get(partition as usize)
            .filter(|p| p.partition == partition)
            .or_else(|| meta.partitions.iter().find(|p| p.partition == partition));
        let Some(found) = found else {
            return Err(ClientError::UnknownPartition {
                topic: topic.to_string(),
                partition,
            });
        };
        if !found.error.is_ok() {
            return Err(ClientError::broker(
                ApiKey::Metadata,
                found.error,
                format!("partition {topic}/{partition}"),
            ));
        }
        Ok(found)
    }

    /// Where `shard` listens.
    pub fn shard_address(&self, shard: u16) -> Option<&ShardAddress> {
        self.shards.iter().find(|address| address.shard == shard)
    }
}

/// `host:port` for a shard, with IPv6 hosts bracketed. A shard that listens on every
/// interface (`0.0.0.0`, `::`, or no host) is reached at the bootstrap host.
pub(crate) fn shard_endpoint(shard: &ShardAddress, bootstrap: &str) -> String {
    let host = match shard.host.as_str() {
        "" | "0.0.0.0" | "::" | "[::]" => bootstrap_host(bootstrap),
        host => host,
    };
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", shard.port)
    } else {
        format!("{host}:{}", shard.port)
    }
}

/// The host part of a `host:port` bootstrap address (brackets kept for IPv6).
fn bootstrap_host(bootstrap: &str) -> &str {
    bootstrap
        .rsplit_once(':')
        .map_or(bootstrap, |(host, _port)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(partition: u32, leader_shard: u16) -> PartitionMetadata {
        PartitionMetadata {
            error: ErrorCode::NONE,
            partition,
            leader_shard,
            leader_epoch: 1,
            replicas: vec![leader_shard],
            in_sync: vec![leader_shard],
            log_start_offset: 0,
            high_watermark: 0,
            log_end_offset: 0,
            high_watermark_synced: 0,
            followers: vec![],
        }
    }

    fn metadata() -> Metadata {
        Metadata::from_response(MetadataResponse {
            error: ErrorCode::NONE,
            shards: vec![
                ShardAddress {
                    shard: 0,
                    host: "10.0.0.1".into(),
                    port: 9100,
                },
                ShardAddress {
                    shard: 1,
                    host: "0.0.0.0".into(),
                    port: 9101,
                },
            ],
            topics: vec![
                TopicMetadata {
                    error: ErrorCode::NONE,
                    name: "orders".into(),
                    replication_factor: 1,
                    min_insync: 1,
                    retention_ms: None,
                    retention_bytes: None,
                    storage: protocol::StorageKind::Disk,
                    // Out of order on purpose.
                    partitions: vec![partition(1, 1), partition(0, 0)],
                },
                TopicMetadata {
                    error: ErrorCode::INVALID_TOPIC,
                    name: "broken".into(),
                    replication_factor: 1,
                    min_insync: 1,
                    retention_ms: None,
                    retention_bytes: None,
                    storage: protocol::StorageKind::Disk,
                    partitions: vec![],
                },
            ],
        })
    }

    #[test]
    fn partitions_are_found_whatever_their_order() {
        let m = metadata();
        assert_eq!(m.partition("orders", 0).unwrap().leader_shard, 0);
        assert_eq!(m.partition("orders", 1).unwrap().leader_shard, 1);
        assert!(matches!(
            m.partition("orders", 2),
            Err(ClientError::UnknownPartition { partition: 2, .. })
        ));
        assert!(matches!(
            m.partition("nope", 0),
            Err(ClientError::UnknownTopic(_))
        ));
        assert_eq!(
            m.partition("broken", 0).unwrap_err().code(),
            Some(ErrorCode::INVALID_TOPIC)
        );
    }

    #[test]
    fn wildcard_shard_hosts_use_the_bootstrap_host() {
        let m = metadata();
        let shard0 = m.shard_address(0).unwrap();
        let shard1 = m.shard_address(1).unwrap();
        assert_eq!(shard_endpoint(shard0, "broker:9092"), "10.0.0.1:9100");
        assert_eq!(shard_endpoint(shard1, "broker:9092"), "broker:9101");
        assert_eq!(shard_endpoint(shard1, "[::1]:9092"), "[::1]:9101");
        let v6 = ShardAddress {
            shard: 2,
            host: "fe80::1".into(),
            port: 7,
        };
        assert_eq!(shard_endpoint(&v6, "x:1"), "[fe80::1]:7");
        assert!(m.shard_address(9).is_none());
    }
}
