//! Push subscriptions: after one `Subscribe`, the partition leader's shard sends each
//! committed stretch of the log to the consumer as a `SubscribeDelivery`, with no request per
//! delivery. Against a long-poll fetch per delivery this saves the consumer's round trip
//! (records committed while the next fetch is on its way wait for it) and a request the
//! broker has to read, route and parse for every delivery.
//!
//! Flow control is the connection's: a delivery goes out only while the connection's unsent
//! responses stay under `SUBSCRIPTION_WINDOW_BYTES`, so a consumer that stops reading its
//! socket stops its deliveries, and the broker holds at most one more for it.

use std::rc::Rc;
use std::time::Duration;

use protocol::api::{SubscribeDelivery, SubscribeRequest, UnsubscribeRequest, UnsubscribeResponse};
use protocol::limits::FETCH_BYTES_MAX;
use protocol::{ApiKey, ErrorCode, Frame};

use super::Shard;
use super::connection::Conn;
use super::dispatch::{encode, error_response, local_leader, log_error_code};
use crate::limits::SUBSCRIPTION_WINDOW_BYTES;
use crate::replication::end_offset;

/// Why a subscription's wait ended early.
enum Interrupted {
    /// Unsubscribed, or the connection stopped reading or closed: end without a word.
    Ended,
    /// The shard is shutting down: tell the consumer, which reconnects.
    ShuttingDown,
}

/// Serves the subscription `frame` asks for until it ends. Runs as the request's task, so
/// the connection counts it in flight until then.
pub(super) async fn serve(shard: &Rc<Shard>, conn: &Rc<Conn>, frame: &Frame<'_>) {
    let correlation_id = frame.header.correlation_id;
    let refuse = |code| {
        if let Some(delivery) = error_response(ApiKey::Subscribe, correlation_id, code) {
            conn.push(delivery);
        }
    };
    let Ok(request) = frame.access::<SubscribeRequest>() else {
        return refuse(ErrorCode::INVALID_REQUEST);
    };
    let (topic, partition) = (request.topic.as_str(), request.partition.to_native());
    let leader = match local_leader(shard, topic, partition) {
        Ok(leader) => leader,
        Err(code) => return refuse(code),
    };
    // Its correlation id names the subscription for `Unsubscribe`: one at a time per id.
    if !conn.subscribe(correlation_id) {
        return refuse(ErrorCode::INVALID_REQUEST);
    }
    let deliver = |delivery: &SubscribeDelivery| {
        if let Some(frame) = encode(correlation_id, delivery) {
            conn.push(frame);
        }
    };
    // An error delivery ends the subscription; it carries the partition's offsets (a
    // consumer overtaken by retention learns where the log starts now).
    let end_with = |code| {
        deliver(&SubscribeDelivery {
            error: code,
            high_watermark: leader.hw(),
            log_start_offset: leader.log().offsets().log_start,
            records: vec![],
        });
    };
    let max_bytes = request.max_bytes.to_native().min(FETCH_BYTES_MAX) as usize;
    let mut position = request.offset.to_native();
    let ended = loop {
        if let Err(interrupted) = room_for_delivery(shard, conn, correlation_id).await {
            break interrupted;
        }
        if leader.is_stopped() {
            // The term ended: leadership moved, or the topic went (a topic made again under
            // its name is another log). The metadata says where to subscribe again.
            end_with(ErrorCode::NOT_LEADER);
            break Interrupted::Ended;
        }
        match leader.fetch(position, max_bytes, Duration::ZERO).await {
            Ok(fetched) if !fetched.records.is_empty() => {
                position = end_offset(&fetched.records).map_or(position, |end| end.max(position));
                deliver(&SubscribeDelivery {
                    error: ErrorCode::NONE,
                    high_watermark: fetched.high_watermark,
                    log_start_offset: fetched.log_start_offset,
                    records: fetched.records,
                });
                continue;
            }
            Ok(_) => {}
            Err(error) => {
                end_with(log_error_code(&error));
                break Interrupted::Ended;
            }
        }
        // Everything committed went out. A failed log commits nothing more.
        if let Err(error) = leader.log().writable() {
            end_with(log_error_code(&error));
            break Interrupted::Ended;
        }
        // No timer: everything that ends the wait early wakes it.
        let woke = futures_lite::future::or(
            async {
                leader.hw_beyond(position).await;
                Ok(())
            },
            // Returns only once the subscription must end.
            wait_until(shard, conn, correlation_id, || false),
        )
        .await;
        if let Err(interrupted) = woke {
            break interrupted;
        }
    };
    if let Interrupted::ShuttingDown = ended {
        end_with(ErrorCode::SHUTTING_DOWN);
    }
    conn.unsubscribed(correlation_id);
}

/// Waits until the connection has room for another delivery.
async fn room_for_delivery(
    shard: &Shard,
    conn: &Conn,
    correlation_id: u64,
) -> Result<(), Interrupted> {
    wait_until(shard, conn, correlation_id, || {
        conn.pending_output_bytes.get() < SUBSCRIPTION_WINDOW_BYTES
    })
    .await
}

/// Waits until `ready` holds, or until the subscription must end: the connection changed
/// (unsubscribed, its reading stopped, closed), or the shard started shutting down. The
/// latter must be waited for here: a connection whose reading is held at its bounds does
/// not change on shutdown.
async fn wait_until(
    shard: &Shard,
    conn: &Conn,
    correlation_id: u64,
    ready: impl Fn() -> bool,
) -> Result<(), Interrupted> {
    loop {
        let seen = conn.epochs(shard);
        check(shard, conn, correlation_id)?;
        if ready() {
            return Ok(());
        }
        conn.changed_or_shutdown(shard, seen).await;
    }
}

/// Whether the subscription must end now.
fn check(shard: &Shard, conn: &Conn, correlation_id: u64) -> Result<(), Interrupted> {
    if shard.is_shutting_down() {
        Err(Interrupted::ShuttingDown)
    } else if !conn.is_subscribed(correlation_id) || !conn.reading.get() || conn.closed.get() {
        Err(Interrupted::Ended)
    } else {
        Ok(())
    }
}

/// Ends the subscription `frame` names and answers once none of its deliveries follow.
pub(super) async fn unsubscribe(conn: &Conn, frame: &Frame<'_>) {
    let correlation_id = frame.header.correlation_id;
    let code = match frame.access::<UnsubscribeRequest>() {
        Err(_) => ErrorCode::INVALID_REQUEST,
        Ok(request) => {
            let subscription = request.subscription.to_native();
            if conn.cancel(subscription) {
                // Its task pushes nothing more once it sees the cancel, and leaves the
                // table when it ends.
                while conn.has_subscription(subscription) && !conn.closed.get() {
                    let seen = conn.changed.epoch();
                    conn.changed.changed(seen).await;
                }
                ErrorCode::NONE
            } else {
                ErrorCode::INVALID_REQUEST
            }
        }
    };
    if let Some(response) = encode(correlation_id, &UnsubscribeResponse { error: code }) {
        conn.push(response);
    }
}
