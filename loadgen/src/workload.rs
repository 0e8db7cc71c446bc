//! Workloads: OpenMessaging Benchmark's YAML field names, plus ours.
//!
//! A workload file is read into [`WorkloadFile`] (every field optional, unknown fields
//! refused with their name and line), command-line flags override its fields, and
//! [`WorkloadFile::resolve`] checks the values and names the first bad field.
//!
//! OMB fields: `name`, `topics`, `partitionsPerTopic`, `messageSize`, `payloadFile`,
//! `useRandomizedPayloads`, `randomBytesRatio`, `randomizedPayloadPoolSize`, `keyDistributor`,
//! `subscriptionsPerTopic`, `consumerPerSubscription`, `producersPerTopic`, `producerRate`,
//! `consumerBacklogSizeGB`, `testDurationMinutes`, `warmupDurationMinutes`.
//!
//! Ours: `testDurationSeconds` and `warmupDurationSeconds` (win over the minutes), `acks`,
//! `storage` (ringmq: `disk` or `memory` topics), `batchBytes` (0: one message per request),
//! `lingerMs`, `maxInFlight`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::{Acks, StorageKind};
use serde::Deserialize;

/// Smallest message: loadgen stamps the intended send time (8 bytes) and a sequence number
/// (8 bytes) into the front of every payload, which is how consumers measure end-to-end
/// latency.
pub const MESSAGE_BYTES_MIN: usize = 16;

/// Largest message: one message must fit a ringmq batch with its header and framing.
pub const MESSAGE_BYTES_MAX: usize = 512 << 10;

/// Most topics, partitions per topic, producers or consumers a workload may ask for: each is
/// a connection (or several) held by loadgen's workers.
pub const CLIENTS_MAX: u32 = 1024;

/// Most requests one producer connection keeps unanswered.
pub const IN_FLIGHT_MAX: usize = 65_536;

/// Longest run: bounds every loop that waits on it.
pub const DURATION_MAX: Duration = Duration::from_secs(24 * 3600);

/// How often messages are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Open loop: this many messages per second in total, each with an intended send time.
    PerSecond(f64),
    /// Closed loop: as fast as acknowledgements (or the socket) allow. Labelled as such.
    Max,
}

impl Rate {
    /// `max` or a positive number of messages per second (`50000`, `50k`, `1.5m`).
    pub fn parse(text: &str) -> Result<Rate, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        let (digits, scale) = match text.chars().last().map(|c| c.to_ascii_lowercase()) {
            Some('k') => (&text[..text.len() - 1], 1e3),
            Some('m') => (&text[..text.len() - 1], 1e6),
            _ => (text, 1.0),
        };
        match digits.parse::<f64>() {
            Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(Rate::PerSecond(rate * scale)),
            _ => Err(format!(
                "rate '{text}' is neither 'max' nor a positive number of messages per second"
            )),
        }
    }

    /// `"50000 msg/s (open loop)"` or `"max (closed loop)"`.
    pub fn label(&self) -> String {
        match self {
            Rate::PerSecond(rate) => format!("{rate:.0} msg/s (open loop)"),
            Rate::Max => "max (closed loop)".into(),
        }
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h`, `250us` or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("duration '{text}' must be a number with a unit, like 10s"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("duration '{text}': unknown unit '{other}'")),
    };
    if !seconds.is_finite() || seconds < 0.0 || seconds > DURATION_MAX.as_secs_f64() {
        return Err(format!(
            "duration '{text}' is outside 0..={}s",
            DURATION_MAX.as_secs()
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Which key each message carries (OMB's `keyDistributor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum KeyDistributor {
    /// No key: each producer spreads its batches over the topic's partitions in turn.
    NoKey,
    /// Keys from a counter (1, 2, 3, ...). A message goes to its key's partition (crc32c of
    /// the key, like a client partitioner), so the spread is even, not partition by partition.
    KeyRoundRobin,
    /// A random key per message (OMB takes nanoTime; the effect is the same spread).
    RandomNano,
}

/// A workload file as written: every field optional, so flags can fill in or override.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadFile {
    pub name: Option<String>,
    pub topics: Option<u32>,
    pub partitions_per_topic: Option<u32>,
    pub message_size: Option<usize>,
    pub payload_file: Option<PathBuf>,
    pub use_randomized_payloads: Option<bool>,
    pub random_bytes_ratio: Option<f64>,
    pub randomized_payload_pool_size: Option<u32>,
    pub key_distributor: Option<KeyDistributor>,
    pub subscriptions_per_topic: Option<u32>,
    pub consumer_per_subscription: Option<u32>,
    pub producers_per_topic: Option<u32>,
    /// Messages per second over all producers; 0 means as fast as possible (closed loop).
    pub producer_rate: Option<f64>,
    #[serde(rename = "consumerBacklogSizeGB")]
    pub consumer_backlog_size_gb: Option<f64>,
    pub test_duration_minutes: Option<f64>,
    pub warmup_duration_minutes: Option<f64>,
    pub test_duration_seconds: Option<f64>,
    pub warmup_duration_seconds: Option<f64>,
    /// `none`, `leader`, `leader+fsync`, `all`, `all+fsync` (ringmq; JetStream always acks).
    pub acks: Option<String>,
    /// `disk` or `memory`: the storage of the topics loadgen creates (ringmq only).
    pub storage: Option<String>,
    /// Bytes of messages one request may carry; 0 sends every message on its own.
    pub batch_bytes: Option<usize>,
    /// Milliseconds a partly filled batch waits for more messages.
    pub linger_ms: Option<f64>,
    /// Unanswered requests per producer connection.
    pub max_in_flight: Option<usize>,
}

/// Where message payloads come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// `random_ratio` of each payload is random bytes, the rest zeros.
    Generated { random_ratio: f64 },
    /// The file's bytes, repeated or cut to the message size.
    File(PathBuf),
}

/// A checked workload, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub name: String,
    pub topics: u32,
    pub partitions_per_topic: u32,
    pub message_bytes: usize,
    pub payload: Payload,
    pub keys: KeyDistributor,
    pub subscriptions_per_topic: u32,
    pub consumers_per_subscription: u32,
    pub producers_per_topic: u32,
    pub rate: Rate,
    /// Bytes produced before consumers start (0: consumers read from the start, live).
    pub backlog_bytes: u64,
    pub duration: Duration,
    pub warmup: Duration,
    pub acks: Acks,
    /// Storage of the topics loadgen creates on a ringmq target.
    pub storage: StorageKind,
    /// 0: one message per request (no batching).
    pub batch_bytes: usize,
    pub linger: Duration,
    pub max_in_flight: usize,
}

/// A workload field that failed its check.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("workload field `{field}`: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> FieldError {
    FieldError {
        field,
        reason: reason.into(),
    }
}

fn count(field: &'static str, value: Option<u32>, default: u32) -> Result<u32, FieldError> {
    let value = value.unwrap_or(default);
    if !(1..=CLIENTS_MAX).contains(&value) {
        return Err(bad(field, format!("{value} is outside 1..={CLIENTS_MAX}")));
    }
    Ok(value)
}

fn seconds(
    field: &'static str,
    value: f64,
    scale: f64,
    allow_zero: bool,
) -> Result<Duration, FieldError> {
    let secs = value * scale;
    let low_ok = if allow_zero { secs >= 0.0 } else { secs > 0.0 };
    if !secs.is_finite() || !low_ok || secs > DURATION_MAX.as_secs_f64() {
        return Err(bad(
            field,
            format!(
                "{value} is outside {}..={} seconds",
                if allow_zero { "0" } else { "(0" },
                DURATION_MAX.as_secs()
            ),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl WorkloadFile {
    /// Reads and parses a YAML workload. Errors name the file, and for a bad field its name
    /// and line (unknown fields list the known ones).
    pub fn read(path: &Path) -> anyhow::Result<WorkloadFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("reading workload {}: {error}", path.display()))?;
        let mut file = WorkloadFile::parse(&text)
            .map_err(|error| anyhow::anyhow!("workload {}: {error}", path.display()))?;
        // OMB writes payload paths relative to where the benchmark runs; accept those, and
        // paths relative to the workload file.
        if let Some(payload) = &file.payload_file
            && payload.is_relative()
            && !payload.exists()
            && let Some(dir) = path.parent()
        {
            file.payload_file = Some(dir.join(payload));
        }
        Ok(file)
    }

    /// Parses YAML text.
    pub fn parse(text: &str) -> Result<WorkloadFile, serde_norway::Error> {
        serde_norway::from_str(text)
    }

    /// Applies defaults, checks every field and returns the workload, or the first bad field.
    pub fn resolve(&self) -> Result<Workload, FieldError> {
        let message_bytes = self.message_size.unwrap_or(1024);
        if !(MESSAGE_BYTES_MIN..=MESSAGE_BYTES_MAX).contains(&message_bytes) {
            return Err(bad(
                "messageSize",
                format!(
                    "{message_bytes} bytes is outside {MESSAGE_BYTES_MIN}..={MESSAGE_BYTES_MAX} \
                     (loadgen stamps a send time and a sequence number into the first 16 bytes)"
                ),
            ));
        }
        let random_ratio = match (self.use_randomized_payloads, self.random_bytes_ratio) {
            (_, Some(ratio)) if !(0.0..=1.0).contains(&ratio) => {
                return Err(bad("randomBytesRatio", format!("{ratio} is outside 0..=1")));
            }
            (Some(false), _) => 0.0,
            (_, Some(ratio)) => ratio,
            (_, None) => 1.0,
        };
        if self.randomized_payload_pool_size == Some(0) {
            return Err(bad("randomizedPayloadPoolSize", "must be at least 1"));
        }
        let payload = match &self.payload_file {
            Some(path) => {
                if !path.is_file() {
                    return Err(bad(
                        "payloadFile",
                        format!("{} is not a readable file", path.display()),
                    ));
                }
                Payload::File(path.clone())
            }
            None => Payload::Generated { random_ratio },
        };
        let rate = match self.producer_rate {
            None => Rate::PerSecond(10_000.0),
            Some(0.0) => Rate::Max,
            Some(rate) if rate.is_finite() && rate > 0.0 && rate <= 1e9 => Rate::PerSecond(rate),
            Some(rate) => {
                return Err(bad(
                    "producerRate",
                    format!("{rate} must be 0 (as fast as possible) or in (0, 1e9] msg/s"),
                ));
            }
        };
        let backlog_gb = self.consumer_backlog_size_gb.unwrap_or(0.0);
        if !backlog_gb.is_finite() || !(0.0..=1024.0).contains(&backlog_gb) {
            return Err(bad(
                "consumerBacklogSizeGB",
                format!("{backlog_gb} is outside 0..=1024"),
            ));
        }
        let duration = match (self.test_duration_seconds, self.test_duration_minutes) {
            (Some(s), _) => seconds("testDurationSeconds", s, 1.0, false)?,
            (None, Some(m)) => seconds("testDurationMinutes", m, 60.0, false)?,
            (None, None) => Duration::from_secs(10),
        };
        let warmup = match (self.warmup_duration_seconds, self.warmup_duration_minutes) {
            (Some(s), _) => seconds("warmupDurationSeconds", s, 1.0, true)?,
            (None, Some(m)) => seconds("warmupDurationMinutes", m, 60.0, true)?,
            (None, None) => Duration::ZERO,
        };
        let acks = match &self.acks {
            None => Acks::Leader,
            Some(text) => text.parse::<Acks>().map_err(|reason| bad("acks", reason))?,
        };
        let storage = match &self.storage {
            None => StorageKind::Disk,
            Some(text) => text
                .parse::<StorageKind>()
                .map_err(|reason| bad("storage", reason))?,
        };
        if storage == StorageKind::Memory && acks.needs_fsync() {
            return Err(bad(
                "acks",
                format!(
                    "{} waits for an fsync, which a memory topic does not have",
                    acks.as_str()
                ),
            ));
        }
        let batch_bytes = self.batch_bytes.unwrap_or(0);
        let batch_max = protocol::limits::BATCH_BYTES_MAX as usize;
        if batch_bytes > batch_max {
            return Err(bad(
                "batchBytes",
                format!("{batch_bytes} exceeds the largest ringmq batch, {batch_max} bytes"),
            ));
        }
        let linger_ms = self.linger_ms.unwrap_or(0.0);
        if !linger_ms.is_finite() || !(0.0..=60_000.0).contains(&linger_ms) {
            return Err(bad("lingerMs", format!("{linger_ms} is outside 0..=60000")));
        }
        let max_in_flight = self.max_in_flight.unwrap_or(1024);
        if !(1..=IN_FLIGHT_MAX).contains(&max_in_flight) {
            return Err(bad(
                "maxInFlight",
                format!("{max_in_flight} is outside 1..={IN_FLIGHT_MAX}"),
            ));
        }
        Ok(Workload {
            name: self.name.clone().unwrap_or_else(|| "flags".into()),
            topics: count("topics", self.topics, 1)?,
            partitions_per_topic: count("partitionsPerTopic", self.partitions_per_topic, 1)?,
            message_bytes,
            payload,
            keys: self.key_distributor.unwrap_or(KeyDistributor::NoKey),
            subscriptions_per_topic: count(
                "subscriptionsPerTopic",
                self.subscriptions_per_topic,
                1,
            )?,
            consumers_per_subscription: count(
                "consumerPerSubscription",
                self.consumer_per_subscription,
                1,
            )?,
            producers_per_topic: count("producersPerTopic", self.producers_per_topic, 1)?,
            rate,
            backlog_bytes: (backlog_gb * (1u64 << 30) as f64) as u64,
            duration,
            warmup,
            acks,
            storage,
            batch_bytes,
            linger: Duration::from_secs_f64(linger_ms / 1e3),
            max_in_flight,
        })
    }
}

impl Workload {
    /// Messages one request may carry: `batch_bytes` over the message size, at least 1.
    pub fn records_per_batch(&self) -> usize {
        let per_record = self.message_bytes + 16;
        (self.batch_bytes / per_record).clamp(1, 4096)
    }

    /// Producers over all topics.
    pub fn producers(&self) -> u32 {
        self.topics * self.producers_per_topic
    }

    /// Copies of each message consumers receive in total (one per subscription).
    pub fn deliveries_per_message(&self) -> u32 {
        self.subscriptions_per_topic
    }

    /// `"16384 B, linger 5 ms"` or `"none (1 message per request)"`.
    pub fn batch_label(&self) -> String {
        if self.records_per_batch() <= 1 {
            "none (1 message per request)".into()
        } else {
            format!(
                "{} B ({} messages), linger {} ms",
                self.batch_bytes,
                self.records_per_batch(),
                self.linger.as_secs_f64() * 1e3
            )
        }
    }

    /// The payload bytes of one message before stamping (deterministic per seed).
    pub fn payload_bytes(&self, seed: u64) -> anyhow::Result<Vec<u8>> {
        use rand::{Rng, SeedableRng};
        let mut bytes = vec![0u8; self.message_bytes];
        match &self.payload {
            Payload::File(path) => {
                let content = std::fs::read(path).map_err(|error| {
                    anyhow::anyhow!("reading payloadFile {}: {error}", path.display())
                })?;
                if content.is_empty() {
                    anyhow::bail!("payloadFile {} is empty", path.display());
                }
                for (slot, byte) in bytes.iter_mut().zip(content.iter().cycle()) {
                    *slot = *byte;
                }
            }
            Payload::Generated { random_ratio } => {
                let random = ((self.message_bytes as f64) * random_ratio) as usize;
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                if let Some(head) = bytes.get_mut(..random.min(self.message_bytes)) {
                    rng.fill(head);
                }
            }
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn workload_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads")
    }

    #[test]
    fn shipped_omb_workloads_parse_and_resolve() {
        let mut seen = 0;
        for entry in std::fs::read_dir(workload_dir()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let file = WorkloadFile::read(&path).unwrap();
            let workload = file
                .resolve()
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(workload.message_bytes >= MESSAGE_BYTES_MIN);
            workload.payload_bytes(1).unwrap();
            seen += 1;
        }
        assert!(
            seen >= 2,
            "expected at least two shipped workloads, saw {seen}"
        );
    }

    #[test]
    fn omb_workload_fields_map_to_the_workload() {
        let text = r#"
name: 1 producer / 1 consumers on 1 topic
topics: 2
partitionsPerTopic: 4
messageSize: 1024
subscriptionsPerTopic: 2
consumerPerSubscription: 3
producersPerTopic: 5
producerRate: 50000
consumerBacklogSizeGB: 0
testDurationMinutes: 15
warmupDurationMinutes: 1
keyDistributor: "KEY_ROUND_ROBIN"
"#;
        let workload = WorkloadFile::parse(text).unwrap().resolve().unwrap();
        assert_eq!(workload.topics, 2);
        assert_eq!(workload.partitions_per_topic, 4);
        assert_eq!(workload.subscriptions_per_topic, 2);
        assert_eq!(workload.consumers_per_subscription, 3);
        assert_eq!(workload.producers_per_topic, 5);
        assert_eq!(workload.rate, Rate::PerSecond(50_000.0));
        assert_eq!(workload.duration, Duration::from_secs(900));
        assert_eq!(workload.warmup, Duration::from_secs(60));
        assert_eq!(workload.keys, KeyDistributor::KeyRoundRobin);
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let error = WorkloadFile::parse("topics: 1\nmesageSize: 100\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("mesageSize"), "{error}");
        assert!(error.contains("line 2"), "{error}");
    }

    #[test]
    fn wrong_type_is_named() {
        let error = WorkloadFile::parse("partitionsPerTopic: many\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("partitionsPerTopic"), "{error}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases: [(&str, &str); 8] = [
            ("messageSize: 8", "messageSize"),
            ("partitionsPerTopic: 0", "partitionsPerTopic"),
            ("producerRate: -5", "producerRate"),
            ("acks: sometimes", "acks"),
            ("storage: tape", "storage"),
            // A memory topic has no fsync to wait for.
            ("storage: memory\nacks: leader+fsync", "acks"),
            ("randomBytesRatio: 1.5", "randomBytesRatio"),
            ("payloadFile: /nonexistent/payload.data", "payloadFile"),
        ];
        for (text, field) in cases {
            let error = WorkloadFile::parse(text).unwrap().resolve().unwrap_err();
            assert_eq!(error.field, field, "{text}: {error}");
        }
    }

    #[test]
    fn storage_defaults_to_disk() {
        let plain = WorkloadFile::parse("topics: 1").unwrap().resolve().unwrap();
        assert_eq!(plain.storage, StorageKind::Disk);
        let memory = WorkloadFile::parse("storage: memory\nacks: none").unwrap();
        assert_eq!(memory.resolve().unwrap().storage, StorageKind::Memory);
    }

    #[test]
    fn rates_and_durations_parse() {
        assert_eq!(Rate::parse("max"), Ok(Rate::Max));
        assert_eq!(Rate::parse("50k"), Ok(Rate::PerSecond(50_000.0)));
        assert_eq!(Rate::parse("1200"), Ok(Rate::PerSecond(1200.0)));
        assert!(Rate::parse("0").is_err());
        assert!(Rate::parse("fast").is_err());
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3 parsecs").is_err());
    }

    #[test]
    fn payload_has_the_requested_random_share() {
        let mut file = WorkloadFile {
            message_size: Some(1000),
            random_bytes_ratio: Some(0.25),
            ..WorkloadFile::default()
        };
        let workload = file.resolve().unwrap();
        let bytes = workload.payload_bytes(7).unwrap();
        assert_eq!(bytes.len(), 1000);
        assert!(bytes[250..].iter().all(|b| *b == 0));
        assert!(bytes[..250].iter().filter(|b| **b != 0).count() > 200);
        file.use_randomized_payloads = Some(false);
        let zeros = file.resolve().unwrap().payload_bytes(7).unwrap();
        assert!(zeros.iter().all(|b| *b == 0));
    }
}
