//! Results: the JSON record of one run, the text tables, CSV.

use serde::Serialize;

use crate::stats::Percentiles;

/// One run's result, as written to JSON (`{"results": [..]}`). Fields that a mode does not
/// have (acks for fire-and-forget, end-to-end without consumers) are left out.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// `ringmq://127.0.0.1:9092`.
    pub target: String,
    /// `kafka-style`, `nats-style`, a workload name, ...
    pub profile: String,
    /// `open-loop` (intended send times, fixed rate) or `closed-loop` (as fast as acks allow;
    /// without acks, as fast as the connection takes them).
    pub mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_rate_msgs_per_s: Option<f64>,
    /// Messages whose intended send time fell in the measured window (after warm-up).
    pub sent: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
    /// Requests answered with an error (their messages).
    pub failed: u64,
    /// Messages consumers never got: retention deleted them first (a consumer fell behind by
    /// more than the topic keeps).
    #[serde(skip_serializing_if = "is_zero")]
    pub lost_to_retention: u64,
    /// Messages per second acknowledged while the window measured (`Window::completes_in`);
    /// without acks, delivered (or, without consumers, sent) meanwhile.
    pub throughput_msgs_per_s: f64,
    pub throughput_mb_per_s: f64,
    pub producer_msgs_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer_msgs_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_latency_us: Option<Percentiles>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e2e_latency_us: Option<Percentiles>,
    /// Intended send time to the moment the message went to the socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_gap_us: Option<Percentiles>,
    /// Percent of one core over the measured window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_cpu_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadgen_cpu_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadgen_cpu_percent_per_100k_msgs_per_s: Option<f64>,
    pub durability: String,
    pub acks: String,
    /// How the consumers get their messages (push subscription, pull consumer, ...).
    pub consumer: String,
    pub message_size: usize,
    pub batch: String,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub loadgen_cores: String,
    pub broker_cores: String,
    pub versions: String,
    pub topics: u32,
    pub partitions_per_topic: u32,
    pub producers: u32,
    pub consumers: u32,
}

/// The JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct Report<'a> {
    pub results: &'a [RunResult],
}

pub fn to_json(results: &[RunResult]) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(&Report { results })?)
}

fn us(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| {
        if v >= 10_000.0 {
            format!("{:.1} ms", v / 1e3)
        } else {
            format!("{v:.0} us")
        }
    })
}

fn opt(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".into(), |v| format!("{v:.decimals$}"))
}

/// The header every result prints first: what ran, against what, how.
pub fn header(result: &RunResult) -> String {
    format!(
        "target {} ({}) | profile {} | {} | acks {} | durability: {} | {} B messages | batch {} \
         | rate {} | {:.0} s measured after {:.0} s warm-up | {} topic(s) x {} partition(s), {} \
         producer(s), {} consumer(s) ({}) | loadgen cores {}, broker cores {}",
        result.target,
        result.versions,
        result.profile,
        result.mode,
        result.acks,
        result.durability,
        result.message_size,
        result.batch,
        result
            .offered_rate_msgs_per_s
            .map_or("max (closed loop)".into(), |r| format!(
                "{r:.0} msg/s (open loop)"
            )),
        result.duration_s,
        result.warmup_s,
        result.topics,
        result.partitions_per_topic,
        result.producers,
        result.consumers,
        result.consumer,
        result.loadgen_cores,
        result.broker_cores,
    )
}

/// The text report of one run.
pub fn run_table(result: &RunResult) -> String {
    let mut out = String::new();
    out.push_str(&header(result));
    out.push_str("\n\n");
    out.push_str("| latency (from intended send time) | p50 | p90 | p99 | p99.9 | p99.99 | max | samples |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    let rows = [
        ("publish to ack", result.ack_latency_us),
        ("end to end", result.e2e_latency_us),
        ("send gap (intended to actual send)", result.send_gap_us),
    ];
    for (name, latency) in rows {
        match latency {
            Some(l) => out.push_str(&format!(
                "| {name} | {} | {} | {} | {} | {} | {} | {} |\n",
                us(Some(l.p50)),
                us(Some(l.p90)),
                us(Some(l.p99)),
                us(Some(l.p999)),
                us(Some(l.p9999)),
                us(Some(l.max)),
                l.samples
            )),
            None => out.push_str(&format!("| {name} | - | - | - | - | - | - | 0 |\n")),
        }
    }
    out.push('\n');
    out.push_str(&format!(
        "throughput: {:.0} msg/s ({:.1} MB/s); produced {:.0} msg/s, consumed {} msg/s; \
         sent {}, acked {}, received {}, failed {}{}\n",
        result.throughput_msgs_per_s,
        result.throughput_mb_per_s,
        result.producer_msgs_per_s,
        opt(result.consumer_msgs_per_s, 0),
        result.sent,
        result.acked.map_or("-".into(), |a| a.to_string()),
        result.received.map_or("-".into(), |r| r.to_string()),
        result.failed,
        if result.lost_to_retention > 0 {
            format!(", lost to retention {}", result.lost_to_retention)
        } else {
            String::new()
        },
    ));
    out.push_str(&format!(
        "CPU (percent of one core): broker {}, loadgen {} ({} per 100k msg/s)\n",
        opt(result.broker_cpu_percent, 1),
        opt(result.loadgen_cpu_percent, 1),
        opt(result.loadgen_cpu_percent_per_100k_msgs_per_s, 1),
    ));
    out
}

/// One column of the comparison: a system and profile, its latency run and its max run.
#[derive(Debug, Clone)]
pub struct Column {
    pub title: String,
    pub latency: Option<RunResult>,
    pub max: Option<RunResult>,
}

/// The side-by-side comparison table (markdown).
pub fn compare_table(columns: &[Column]) -> String {
    let mut out = String::from("| |");
    for column in columns {
        out.push_str(&format!(" {} |", column.title));
    }
    out.push_str("\n|---|");
    for _ in columns {
        out.push_str("---|");
    }
    out.push('\n');
    type Cell = fn(&Column) -> String;
    // What a row reads: either run's settings, the latency run's latencies.
    fn either(c: &Column) -> Option<&RunResult> {
        c.latency.as_ref().or(c.max.as_ref())
    }
    fn ack(c: &Column) -> Option<Percentiles> {
        c.latency.as_ref().and_then(|r| r.ack_latency_us)
    }
    fn e2e(c: &Column) -> Option<Percentiles> {
        c.latency.as_ref().and_then(|r| r.e2e_latency_us)
    }
    let rows: Vec<(&str, Cell)> = vec![
        ("durability", |c| {
            either(c).map_or("-".into(), |r| r.durability.clone())
        }),
        ("acks", |c| either(c).map_or("-".into(), |r| r.acks.clone())),
        ("batching", |c| {
            either(c).map_or("-".into(), |r| r.batch.clone())
        }),
        ("offered rate (open loop)", |c| {
            c.latency
                .as_ref()
                .and_then(|r| r.offered_rate_msgs_per_s)
                .map_or("-".into(), |r| format!("{r:.0} msg/s"))
        }),
        ("publish-to-ack p50", |c| us(ack(c).map(|l| l.p50))),
        ("publish-to-ack p99", |c| us(ack(c).map(|l| l.p99))),
        ("publish-to-ack p99.9", |c| us(ack(c).map(|l| l.p999))),
        ("end-to-end p50", |c| us(e2e(c).map(|l| l.p50))),
        ("end-to-end p99", |c| us(e2e(c).map(|l| l.p99))),
        ("end-to-end p99.9", |c| us(e2e(c).map(|l| l.p999))),
        ("acked/delivered within the window", |c| {
            c.latency.as_ref().map_or("-".into(), |r| {
                format!("{:.0} msg/s", r.throughput_msgs_per_s)
            })
        }),
        ("broker CPU at offered rate", |c| {
            opt(c.latency.as_ref().and_then(|r| r.broker_cpu_percent), 1) + " %"
        }),
        ("max throughput, acked/delivered (closed loop)", |c| {
            c.max.as_ref().map_or("-".into(), |r| {
                format!(
                    "{:.0} msg/s ({:.0} MB/s)",
                    r.throughput_msgs_per_s, r.throughput_mb_per_s
                )
            })
        }),
        // Without acks nothing holds a producer back but the connection: it may send far
        // more than its consumers get (core NATS then drops the rest as a slow consumer).
        ("sent at max (closed loop)", |c| {
            c.max.as_ref().map_or("-".into(), |r| {
                format!("{:.0} msg/s", r.producer_msgs_per_s)
            })
        }),
        ("lost to retention at max (consumer fell behind)", |c| {
            c.max
                .as_ref()
                .map_or("-".into(), |r| r.lost_to_retention.to_string())
        }),
        ("end-to-end p99 at max", |c| {
            us(c.max.as_ref().and_then(|r| r.e2e_latency_us).map(|l| l.p99))
        }),
        ("broker CPU at max", |c| {
            opt(c.max.as_ref().and_then(|r| r.broker_cpu_percent), 1) + " %"
        }),
        ("loadgen CPU at max", |c| {
            opt(c.max.as_ref().and_then(|r| r.loadgen_cpu_percent), 1) + " %"
        }),
    ];
    for (name, cell) in rows {
        out.push_str(&format!("| {name} |"));
        for column in columns {
            out.push_str(&format!(" {} |", cell(column)));
        }
        out.push('\n');
    }
    out
}

/// One line per run with the headline figures.
pub fn to_csv(results: &[RunResult]) -> String {
    let mut out = String::from(
        "target,profile,mode,offered_rate_msgs_per_s,durability,acks,message_size,batch,sent,acked,\
         received,failed,throughput_msgs_per_s,throughput_mb_per_s,ack_p50_us,ack_p99_us,\
         ack_p999_us,ack_max_us,e2e_p50_us,e2e_p99_us,e2e_p999_us,e2e_max_us,broker_cpu_percent,\
         loadgen_cpu_percent\n",
    );
    let field = |text: &str| {
        if text.contains([',', '"']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.to_string()
        }
    };
    let num = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.1}"));
    let cnt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    for r in results {
        let ack = r.ack_latency_us;
        let e2e = r.e2e_latency_us;
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{:.1},{:.2},{},{},{},{},{},{},{},{},{},{}\n",
            field(&r.target),
            field(&r.profile),
            r.mode,
            num(r.offered_rate_msgs_per_s),
            field(&r.durability),
            field(&r.acks),
            r.message_size,
            field(&r.batch),
            r.sent,
            cnt(r.acked),
            cnt(r.received),
            r.failed,
            r.throughput_msgs_per_s,
            r.throughput_mb_per_s,
            num(ack.map(|l| l.p50)),
            num(ack.map(|l| l.p99)),
            num(ack.map(|l| l.p999)),
            num(ack.map(|l| l.max)),
            num(e2e.map(|l| l.p50)),
            num(e2e.map(|l| l.p99)),
            num(e2e.map(|l| l.p999)),
            num(e2e.map(|l| l.max)),
            num(r.broker_cpu_percent),
            num(r.loadgen_cpu_percent),
        ));
    }
    out
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn latency_json_keeps_its_field_names() {
        let latency = Percentiles {
            p50: 1.0,
            p90: 2.0,
            p99: 3.0,
            p999: 4.0,
            p9999: 5.0,
            max: 6.0,
            samples: 7,
        };
        assert_eq!(
            serde_json::to_string(&latency).unwrap(),
            r#"{"p50":1.0,"p90":2.0,"p99":3.0,"p999":4.0,"p9999":5.0,"max":6.0,"samples":7}"#
        );
    }
}
