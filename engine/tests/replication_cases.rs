//! Replication cases found in review, each a fixed scenario on the simulated disk driven by
//! a virtual clock and an in-memory transport (the same `Leader`/`Follower` code as the
//! broker): a restarted leader's term, stale follower answers, in-sync set at term start,
//! failover candidates.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use engine::control::catalog::Catalog;
use engine::log::epochs::EpochCache;
use engine::log::sim::{Fault, Op, SimStorage};
use engine::replication::{
    APPEND_BYTES_IN_FLIGHT_MAX, APPEND_BYTES_MAX, APPENDS_IN_FLIGHT_MAX, Follower, FollowerStatus,
    Leader, LeaderInit, LocalFuture, REOPEN_BACKOFF_MIN, ReplError, ReplMessage, Runtime,
    Transport,
};
use protocol::api::{CreateTopicRequest, ReplicaLag, ReplicaState};
use protocol::{Acks, BatchBuilder, StorageKind};

mod common;
use common::{
    BOUNDS, SimRt, dir, key, leader_init, open_log, records, run, start_follower, start_leader,
};

async fn settle(rt: &SimRt, us: u64) {
    rt.sleep(Duration::from_micros(us)).await;
}

fn batch(tag: &str, count: u32) -> Vec<u8> {
    let mut builder = BatchBuilder::new();
    for i in 0..count {
        let value = format!("{tag}:{i}");
        builder
            .append(1_700_000_000_000, b"", value.as_bytes(), &[])
            .unwrap();
    }
    builder.seal().unwrap().to_vec()
}

/// Shard-indexed nodes, one FIFO for every message in send order; `up[i]` false drops
/// messages to shard i (not opened yet).
struct Net {
    leaders: RefCell<Vec<Option<Rc<Leader<SimStorage>>>>>,
    followers: RefCell<Vec<Option<Rc<Follower<SimStorage>>>>>,
    up: RefCell<Vec<bool>>,
    queue: RefCell<VecDeque<(u16, ReplMessage)>>,
    /// Every message sent, for inspection.
    sent: RefCell<Vec<(u16, ReplMessage)>>,
    stop: Cell<bool>,
}

impl Transport for Net {
    fn send(&self, to: u16, message: ReplMessage) -> LocalFuture<bool> {
        self.sent.borrow_mut().push((to, message.clone()));
        self.queue.borrow_mut().push_back((to, message));
        Box::pin(async { true })
    }
}

async fn pump(net: Rc<Net>) {
    while !net.stop.get() {
        futures_lite::future::yield_now().await;
        let Some((to, message)) = net.queue.borrow_mut().pop_front() else {
            continue;
        };
        let to = usize::from(to);
        if !net.up.borrow()[to] {
            continue;
        }
        match &message {
            ReplMessage::Progress { .. } => {
                let leader = net.leaders.borrow()[to].clone();
                if let Some(l) = leader {
                    l.on_message(message);
                }
            }
            _ => {
                let follower = net.followers.borrow()[to].clone();
                if let Some(f) = follower {
                    f.deliver(message);
                }
            }
        }
    }
}

fn net(n: usize) -> Rc<Net> {
    Rc::new(Net {
        leaders: RefCell::new(vec![None; n]),
        followers: RefCell::new(vec![None; n]),
        up: RefCell::new(vec![true; n]),
        queue: RefCell::new(VecDeque::new()),
        sent: RefCell::new(Vec::new()),
        stop: Cell::new(false),
    })
}

impl Net {
    /// Starts the leader `init` describes; messages to its shard go to it.
    async fn lead(
        self: &Rc<Self>,
        init: LeaderInit<SimStorage>,
        rt: &SimRt,
    ) -> Rc<Leader<SimStorage>> {
        let shard = usize::from(init.shard);
        let leader = start_leader(init, rt, self.clone()).await;
        self.leaders.borrow_mut()[shard] = Some(Rc::clone(&leader));
        leader
    }

    /// Starts the epoch-2 leader on shard 0 over `disk` (which holds A [0,2): the watermark
    /// the previous leader left), with shard 1 as its follower.
    async fn lead_epoch_2(
        self: &Rc<Self>,
        disk: &SimStorage,
        min_insync: u16,
        rt: &SimRt,
    ) -> Rc<Leader<SimStorage>> {
        let llog = open_log(disk, 0).await;
        let init = LeaderInit {
            epoch: 2,
            followers: vec![1],
            min_insync,
            hw: 2,
            ..leader_init(disk, 0, llog)
        };
        self.lead(init, rt).await
    }

    /// Starts a follower over shard `shard`'s log on `disk`; messages to its shard go to it.
    async fn follow(
        self: &Rc<Self>,
        disk: &SimStorage,
        shard: u16,
        rt: &SimRt,
    ) -> Rc<Follower<SimStorage>> {
        let log = open_log(disk, shard).await;
        let follower = start_follower(disk, shard, log, rt, self.clone()).await;
        self.followers.borrow_mut()[usize::from(shard)] = Some(Rc::clone(&follower));
        follower
    }

    /// (probe, epoch) of every probe sent to shard `to`, in order.
    fn probes_to(&self, to: u16) -> Vec<(u64, u32)> {
        self.sent
            .borrow()
            .iter()
            .filter_map(|(shard, message)| match message {
                ReplMessage::Probe { probe, epoch, .. } if *shard == to => Some((*probe, *epoch)),
                _ => None,
            })
            .collect()
    }

    /// Bytes of batches in every `Append` sent to shard `to`, in order.
    fn appends_to(&self, to: u16) -> Vec<u64> {
        self.sent
            .borrow()
            .iter()
            .filter_map(|(shard, message)| match message {
                ReplMessage::Append { batches, .. } if *shard == to => Some(batches.len() as u64),
                _ => None,
            })
            .collect()
    }
}

/// A leader on shard 0 of a two-shard net with shard 1 as its follower, where no follower
/// runs: the test answers for it (`answer_probe`). The clock ticks and the messages are
/// pumped until `stop_all`.
async fn lead_for_a_silent_follower() -> (SimRt, Rc<Net>, Rc<Leader<SimStorage>>) {
    let rt = SimRt::default();
    rt.start_ticking();
    let disk = SimStorage::new(1);
    let net = net(2);
    glommio::spawn_local(pump(Rc::clone(&net))).detach();
    net.up.borrow_mut()[1] = false;
    let llog = open_log(&disk, 0).await;
    let init = LeaderInit {
        followers: vec![1],
        ..leader_init(&disk, 0, llog)
    };
    let leader = net.lead(init, &rt).await;
    (rt, net, leader)
}

/// Stops the clock, the message pump and `leader`'s replication.
fn stop_all(rt: &SimRt, net: &Net, leader: &Leader<SimStorage>) {
    rt.stop_ticking();
    net.stop.set(true);
    leader.stop();
}

/// Answers `leader`'s probe `(probe, epoch)` as follower 1: ready, its log written and
/// synced up to `next`.
fn answer_probe(leader: &Leader<SimStorage>, (probe, epoch): (u64, u32), next: u64) {
    leader.on_message(ReplMessage::Progress {
        key: key(),
        epoch,
        from: 1,
        probe,
        status: FollowerStatus::Ready,
        next,
        written: next,
        synced: next,
    });
}

/// Writes `batches` (all epoch 1) into a fresh log on `disk`, syncs, closes, and records
/// epoch 1 from 0 in its epoch cache: the state a replica has after a kill -9.
async fn prepare(disk: &SimStorage, shard: u16, batches: &[Vec<u8>]) {
    let log = open_log(disk, shard).await;
    EpochCache::from_entries(vec![(1, 0)])
        .unwrap()
        .persist(disk, &dir(shard))
        .await
        .unwrap();
    for b in batches {
        log.append(b, 1).await.unwrap();
    }
    let next = log.offsets().next;
    log.wait_synced(next).await.unwrap();
    log.close().await.unwrap();
}

/// The batches an old leader on `shard` stamped for A [0,2) and B [2,4) in epoch 1, as it
/// streams them to its followers.
async fn old_leader_a_and_b(disk: &SimStorage, shard: u16) -> Vec<u8> {
    let log = open_log(disk, shard).await;
    log.append(&batch("A", 2), 1).await.unwrap();
    log.append(&batch("B", 2), 1).await.unwrap();
    log.wait_written(4).await.unwrap();
    let stamped = log.read(0, 1 << 20, 4).await.unwrap().to_vec();
    log.close().await.unwrap();
    stamped
}

/// The leader epoch of `t-0` in the catalogue a restarted broker runs, the topic having been
/// created (epoch 1) before the restart.
fn restarted_epoch() -> u32 {
    let request = CreateTopicRequest {
        name: "t".into(),
        partitions: 1,
        replication_factor: 2,
        min_insync: 2,
        retention_ms: None,
        retention_bytes: None,
        storage: StorageKind::Disk,
    };
    let created = Catalog::default().with_topic(&request, 2).unwrap();
    assert_eq!(created.topic("t").unwrap().partitions[0].leader_epoch, 1);
    let restarted = created.for_restart().unwrap();
    restarted.topic("t").unwrap().partitions[0].leader_epoch
}

/// P1: a restarted leader's term has a new epoch. The follower held B at [2,4) (streamed
/// before the leader's own write of B completed; the leader lost it at kill -9). C lands on
/// the leader at [2,4) before the follower's first probe. With the old epoch kept, the probe
/// sees the same epoch on both sides, the follower keeps B, and an `acks=all` record after C
/// is acknowledged with the watermark covering C though the follower holds B there.
#[test]
fn restarted_leader_never_acks_all_for_a_record_the_follower_holds_otherwise() {
    run(|| async {
        let rt = SimRt::default();
        rt.start_ticking();
        let disks = [SimStorage::new(1), SimStorage::new(2)];
        let a = batch("A", 2);
        prepare(&disks[0], 0, std::slice::from_ref(&a)).await;
        prepare(&disks[1], 1, &[a.clone(), batch("B", 2)]).await;

        let net = net(2);
        glommio::spawn_local(pump(Rc::clone(&net))).detach();
        net.up.borrow_mut()[1] = false; // shard 1 still opening its replica
        let llog = open_log(&disks[0], 0).await;
        let init = LeaderInit {
            epoch: restarted_epoch(), // the catalogue's epoch after the restart
            followers: vec![1],
            min_insync: 2,
            ..leader_init(&disks[0], 0, llog)
        };
        let leader = net.lead(init, &rt).await;
        let follower = net.follow(&disks[1], 1, &rt).await;

        // Right after the restart, before the follower's replica is open: an `acks=leader`
        // produce lands at [2,4) (where the follower holds B); then a producer with
        // `acks=all` retries (NotEnoughReplicas until the follower joined this term) and its
        // record lands at [4,6) and commits everything below.
        let c = batch("C", 2);
        leader
            .produce(&c, Acks::Leader, Duration::from_secs(2))
            .await
            .unwrap();
        let d = batch("D", 2);
        let l2 = Rc::clone(&leader);
        let rt2 = rt.clone();
        let produce = glommio::spawn_local(async move {
            let mut attempts = 0;
            loop {
                attempts += 1;
                match l2.produce(&d, Acks::All, Duration::from_secs(2)).await {
                    Err(ReplError::NotEnoughReplicas { .. }) if attempts < 200 => {
                        settle(&rt2, 10_000).await;
                    }
                    other => return other,
                }
            }
        });
        settle(&rt, 1_000).await;
        net.up.borrow_mut()[1] = true; // the follower's replica is open now
        let result = produce.await;
        settle(&rt, 300_000).await;

        let hw = leader.hw();
        let l_bytes = leader.log().read(0, 1 << 20, hw).await.unwrap();
        let f_bytes = follower.log().read(0, 1 << 20, hw).await.unwrap();
        eprintln!(
            "produce={:?} hw={hw} leader={:?} follower={:?} truncations={}",
            result.as_ref().map(|a| (a.base_offset, a.next_offset)),
            records(&l_bytes),
            records(&f_bytes),
            follower.truncations()
        );
        stop_all(&rt, &net, &leader);
        follower.stop();
        assert!(
            result.is_ok(),
            "setup: acks=all produce should be acked here"
        );
        assert_eq!(
            records(&l_bytes),
            records(&f_bytes),
            "acks=all acknowledged (and the watermark covers) records the in-sync follower \
             holds other data for"
        );
        assert_eq!(hw, 6);
    });
}

/// F2: a follower's pending `report` task answers with the *current* probe id and epoch but
/// the offsets of the old log while a probe's truncation is in progress (close() syncs,
/// which wakes the report): the new leader is told the follower holds its divergent tail.
#[test]
fn a_report_from_before_a_truncation_never_answers_the_probe() {
    run(|| async {
        let rt = SimRt::default();
        rt.start_ticking();
        let disks = [SimStorage::new(1), SimStorage::new(2)];
        let stamped = old_leader_a_and_b(&disks[0], 0).await;

        let net = net(2);
        net.up.borrow_mut()[0] = false; // record only
        let flog = open_log(&disks[1], 1).await;
        let follower = start_follower(&disks[1], 1, flog, &rt, net.clone()).await;
        follower.deliver(ReplMessage::Probe {
            key: key(),
            epoch: 1,
            from: 0,
            probe: 1,
            leader_epochs: vec![(1, 0)],
            leader_next: 0,
        });
        settle(&rt, 10_000).await;
        follower.deliver(ReplMessage::Append {
            key: key(),
            epoch: 1,
            from: 0,
            probe: 1,
            base: 0,
            batches: stamped,
            hw: 0,
            sync: true,
        });
        // The new leader (epoch 2, shard 2 in an RF=3 placement; here shard 0 again) has
        // only A: its epoch 2 starts at 2.
        follower.deliver(probe_from_epoch_2_with_a_only(7));
        settle(&rt, 100_000).await;
        rt.stop_ticking();
        let answers: Vec<_> = net
            .sent
            .borrow()
            .iter()
            .filter_map(|(_, m)| match m {
                ReplMessage::Progress {
                    epoch: 2,
                    probe: 7,
                    status,
                    next,
                    written,
                    synced,
                    ..
                } => Some((*status, *next, *written, *synced)),
                _ => None,
            })
            .collect();
        eprintln!(
            "answers to probe 7: {answers:?}; follower log now {:?}, truncations {}",
            follower.log().offsets(),
            follower.truncations()
        );
        follower.stop();
        assert_eq!(
            follower.log().offsets().next,
            2,
            "setup: the follower truncated to 2"
        );
        assert!(
            answers
                .iter()
                .all(|(s, n, w, _)| *s != FollowerStatus::Ready || (*n <= 2 && *w <= 2)),
            "a Ready answer for probe 7 claims offsets the follower truncated: {answers:?}"
        );
    });
}

/// F3: a new leader term counts every follower as in sync before it ever answered; when
/// the new leader's log fails, failover is asked to move to such a follower (here one that
/// never answered a probe at all), i.e. an unclean election with unclean election off.
#[test]
fn failover_candidates_are_only_followers_that_joined_this_term() {
    run(|| async {
        let rt = SimRt::default();
        rt.start_ticking();
        let disk = SimStorage::new(1);
        prepare(&disk, 0, &[batch("A", 2)]).await;
        let net = net(3);
        net.up.borrow_mut()[2] = false; // shard 2's replica: far behind / silent
        net.up.borrow_mut()[1] = false;
        let llog = open_log(&disk, 0).await;
        let init = LeaderInit {
            epoch: 2,
            followers: vec![1, 2],
            min_insync: 2,
            hw: 2,
            ..leader_init(&disk, 0, llog)
        };
        let leader = start_leader(init, &rt, net.clone()).await;
        let asked: Rc<RefCell<Option<Vec<u16>>>> = Rc::default();
        let a2 = Rc::clone(&asked);
        leader.on_failed(Box::new(move |in_sync| *a2.borrow_mut() = Some(in_sync)));
        disk.inject(Fault {
            op: Op::Write,
            path_contains: Some("t-0".into()),
            errno: libc::EIO,
            skip: 0,
            times: u32::MAX,
        });
        let _ = leader
            .produce(&batch("X", 1), Acks::Leader, Duration::from_millis(50))
            .await;
        settle(&rt, 10_000).await;
        rt.stop_ticking();
        leader.stop();
        let asked = asked.borrow().clone();
        eprintln!("failover asked with in_sync = {asked:?}");
        assert_eq!(
            asked,
            Some(vec![]),
            "failover offered followers that never reported in this term"
        );
    });
}

/// F2, leader side: the stale `Ready(next=4)` reaches the epoch-2 leader (whose log ends at
/// 2). Taken as the answer to its probe, "follower ahead of the leader after a probe" would
/// refuse the healthy follower for the rest of the term; it must not.
#[test]
fn a_stale_report_does_not_fail_a_healthy_follower() {
    run(|| async {
        let rt = SimRt::default();
        rt.start_ticking();
        let disks = [SimStorage::new(1), SimStorage::new(2), SimStorage::new(3)];
        let stamped = old_leader_a_and_b(&disks[2], 2).await;
        // New leader (shard 0): A only, epoch 2 from 2.
        prepare(&disks[0], 0, &[batch("A", 2)]).await;

        let net = net(3);
        glommio::spawn_local(pump(Rc::clone(&net))).detach();
        net.up.borrow_mut()[1] = false;
        let follower = net.follow(&disks[1], 1, &rt).await;
        // Old leader (shard 2, epoch 1) streamed A and B.
        follower.deliver(ReplMessage::Probe {
            key: key(),
            epoch: 1,
            from: 2,
            probe: 1,
            leader_epochs: vec![(1, 0)],
            leader_next: 0,
        });
        settle(&rt, 10_000).await;
        let leader = net.lead_epoch_2(&disks[0], 2, &rt).await;
        follower.deliver(ReplMessage::Append {
            key: key(),
            epoch: 1,
            from: 2,
            probe: 1,
            base: 0,
            batches: stamped,
            hw: 0,
            sync: true,
        });
        // The new leader's first probe (id 1), as it would arrive right behind.
        follower.deliver(probe_from_epoch_2_with_a_only(1));
        settle(&rt, 1_000).await;
        net.up.borrow_mut()[1] = true;
        settle(&rt, 3_000_000).await;
        let status = leader.status();
        let view = leader.stats();
        eprintln!(
            "leader status {status:?}; follower log {:?}; view {view:?}",
            follower.log().offsets()
        );
        stop_all(&rt, &net, &leader);
        follower.stop();
        assert_eq!(
            status.isr,
            vec![0, 1],
            "healthy, caught-up follower left out of the in-sync set"
        );
    });
}

/// The probe `probe` of the epoch-2 leader on shard 0, which holds A [0,2) only (its epoch
/// 2 starts at 2): a follower that also holds B [2,4) of epoch 1 cuts it.
fn probe_from_epoch_2_with_a_only(probe: u64) -> ReplMessage {
    ReplMessage::Probe {
        key: key(),
        epoch: 2,
        from: 0,
        probe,
        leader_epochs: vec![(1, 0), (2, 2)],
        leader_next: 2,
    }
}

/// From now on every write to a segment file of `disk` fails with EIO.
fn fail_segment_writes(disk: &SimStorage) {
    disk.inject(Fault {
        op: Op::Write,
        path_contains: Some(".log".into()),
        errno: libc::EIO,
        skip: 0,
        times: u32::MAX,
    });
}

/// A follower that held A [0,2) and B [2,4) in epoch 1, started on `disks[1]`.
async fn follower_with_a_and_b(
    disk: &SimStorage,
    rt: &SimRt,
    net: &Rc<Net>,
) -> Rc<Follower<SimStorage>> {
    prepare(disk, 1, &[batch("A", 2), batch("B", 2)]).await;
    let flog = open_log(disk, 1).await;
    start_follower(disk, 1, flog, rt, Rc::clone(net) as Rc<dyn Transport>).await
}

/// P5: a follower promoted while a probe's truncation is in progress hands over its log only
/// once the truncation finished: the new leader appends to the reopened log, not to the old
/// closed one (whose appends fail `Closed`, with no failover: the partition is stuck).
#[test]
fn a_promoted_follower_hands_over_its_log_after_a_truncation_in_progress() {
    run(|| async {
        let rt = SimRt::default();
        rt.start_ticking();
        let disk = SimStorage::new(2);
        let net = net(3);
        let follower = follower_with_a_and_b(&disk, &rt, &net).await;
        // The leader of epoch 2 has A only: the follower cuts B.
        follower.deliver(probe_from_epoch_2_with_a_only(1));
        // Let the follower start handling it, then promote it (epoch 3). Three polls: the
        // follower task is inside the truncation, waiting for its I/O.
        for _ in 0..3 {
            futures_lite::future::yield_now().await;
        }
        let log = follower.hand_over().await.unwrap();
        let appended = log.append(&batch("X", 1), 3).await;
        rt.stop_ticking();
        assert_eq!(
            appended.map(|a| a.base_offset).ok(),
            Some(2),
            "the promoted replica appends after the cut (not into the log being truncated, \
             where the cut would then drop the record)"
        );
        assert_eq!(follower.truncations(), 1);
    });
}

/// A follower whose truncation failed holds its closed log (healthy as it was). Promoted
/// then, it must hand over a log that takes appends (its directory opened again), not the
/// closed one, on which every produce of the new leader would fail with `Closed` and, the
/// log being healthy, no failover would follow.
#[test]
fn a_promoted_follower_hands_over_a_writable_log_after_a_failed_truncation() {
    run(|| async {
        let rt = SimRt::default();
        rt.start_ticking();
        let disk = SimStorage::new(2);
        let net = net(3);
        let follower = follower_with_a_and_b(&disk, &rt, &net).await;
        fail_segment_writes(&disk);
        // The leader of epoch 2 has A only: the follower's cut of B fails.
        follower.deliver(probe_from_epoch_2_with_a_only(1));
        settle(&rt, 10_000).await;
        let left_closed = follower.log().is_closed();
        disk.clear_faults();
        // Promoted (epoch 3) before any reopen was due.
        let log = follower.hand_over().await.unwrap();
        let appended = log.append(&batch("X", 1), 3).await;
        eprintln!(
            "left closed {left_closed}; truncations {}; log {:?}; append {:?}",
            follower.truncations(),
            log.offsets(),
            appended.as_ref().map(|a| a.base_offset)
        );
        rt.stop_ticking();
        assert!(
            left_closed,
            "setup: the failed truncation left the log closed"
        );
        assert_eq!(follower.truncations(), 0, "setup: the truncation failed");
        // Its whole log (A and B) is the new term's lineage; X follows it.
        assert_eq!(appended.map(|a| a.base_offset).ok(), Some(4));
    });
}

/// P6: an `Append` from a newer leader that never probed this replica changes nothing here:
/// it is answered `Resync` (to that leader, in its session), nothing is appended and the
/// replica's epoch stays.
#[test]
fn an_append_from_a_newer_epoch_without_a_probe_is_answered_resync_and_not_adopted() {
    run(|| async {
        let rt = SimRt::default();
        rt.start_ticking();
        let disk = SimStorage::new(2);
        let net = net(3);
        let follower = follower_with_a_and_b(&disk, &rt, &net).await;
        follower.deliver(ReplMessage::Probe {
            key: key(),
            epoch: 1,
            from: 0,
            probe: 1,
            leader_epochs: vec![(1, 0)],
            leader_next: 4,
        });
        settle(&rt, 10_000).await;
        follower.deliver(ReplMessage::Append {
            key: key(),
            epoch: 2,
            from: 2,
            probe: 9,
            base: 4,
            batches: batch("Z", 1),
            hw: 0,
            sync: false,
        });
        settle(&rt, 10_000).await;
        let epoch_after = follower.epoch();
        rt.stop_ticking();
        let answers: Vec<_> = net
            .sent
            .borrow()
            .iter()
            .filter_map(|(to, m)| match m {
                ReplMessage::Progress {
                    epoch,
                    probe,
                    status,
                    ..
                } => Some((*to, *epoch, *probe, *status)),
                _ => None,
            })
            .collect();
        let next = follower.log().offsets().next;
        eprintln!("answers {answers:?}; epoch {epoch_after}; next {next}");
        follower.stop();
        assert!(
            answers.contains(&(2, 2, 9, FollowerStatus::Resync)),
            "the newer leader is told to probe: {answers:?}"
        );
        assert_eq!(epoch_after, 1, "an unprobed epoch is not adopted");
        assert_eq!(next, 4, "nothing of the unprobed leader's lands");
    });
}

/// P8: a promoted replica starts its term with the previous term's watermark, but its
/// durable watermark is at most what it synced itself.
#[test]
fn a_promoted_leader_claims_no_more_synced_than_it_synced() {
    run(|| async {
        let rt = SimRt::default();
        let disk = SimStorage::new(1);
        let log = open_log(&disk, 0).await;
        log.append(&batch("A", 2), 1).await.unwrap();
        log.wait_written(2).await.unwrap();
        let synced = log.offsets().synced;
        assert!(synced < 2, "setup: written, not synced");
        let net = net(2);
        let init = LeaderInit {
            epoch: 2,
            followers: vec![1],
            min_insync: 1,
            hw: 2, // known from the previous leader
            ..leader_init(&disk, 0, log)
        };
        let leader = start_leader(init, &rt, net.clone()).await;
        let status = leader.status();
        leader.stop();
        assert_eq!(status.hw, 2);
        assert!(
            status.hw_synced <= synced,
            "durable watermark {} beyond what the replica synced ({synced})",
            status.hw_synced
        );
    });
}

/// Describe's view of a follower (Metadata's `followers`): nothing behind once an
/// `all+fsync` produce is acknowledged; once it falls silent, the records and the time it is
/// behind grow, past the lag time it leaves the in-sync set, once its disk fails a write it
/// shows as failed, and once it reopened its log it is back in sync.
#[test]
fn status_reports_how_far_each_follower_is_behind() {
    run(|| async {
        let rt = SimRt::default();
        rt.start_ticking();
        let disks = [SimStorage::new(1), SimStorage::new(2)];
        let net = net(2);
        glommio::spawn_local(pump(Rc::clone(&net))).detach();
        let llog = open_log(&disks[0], 0).await;
        let init = LeaderInit {
            followers: vec![1],
            ..leader_init(&disks[0], 0, llog)
        };
        let leader = net.lead(init, &rt).await;
        let follower = net.follow(&disks[1], 1, &rt).await;
        settle(&rt, 10_000).await;

        leader
            .produce(&batch("A", 3), Acks::AllFsync, Duration::from_secs(5))
            .await
            .unwrap();
        let caught_up = leader.status();

        net.up.borrow_mut()[1] = false; // the follower falls silent
        leader
            .produce(&batch("B", 2), Acks::Leader, Duration::from_secs(5))
            .await
            .unwrap();
        settle(&rt, 100_000).await;
        let behind = leader.status();
        settle(&rt, BOUNDS.time_us).await;
        let left = leader.status();

        // Back, but its disk fails the next write: its log fail-stops and it says so.
        disks[1].inject(Fault {
            op: Op::Write,
            path_contains: Some(".log".into()),
            errno: libc::EIO,
            skip: 0,
            times: 1,
        });
        net.up.borrow_mut()[1] = true;
        leader
            .produce(&batch("C", 1), Acks::Leader, Duration::from_secs(5))
            .await
            .unwrap();
        settle(&rt, BOUNDS.time_us).await;
        let failed = leader.status();

        // The disk works again (the fault fired once): at a probe a backoff later, the
        // follower reopens its log, catches up and is back in the set.
        for _ in 0..100 {
            if leader.status().isr == [0, 1] {
                break;
            }
            settle(&rt, REOPEN_BACKOFF_MIN.as_micros() as u64 / 10).await;
        }
        let rejoined = leader.status();
        let reopens = follower.reopens();

        stop_all(&rt, &net, &leader);
        follower.stop();
        assert_eq!(
            caught_up.followers,
            vec![ReplicaLag {
                shard: 1,
                state: ReplicaState::InSync,
                records_behind: 0,
                records_behind_synced: 0,
                time_behind_ms: 0,
            }]
        );
        assert_eq!(
            (caught_up.isr, caught_up.log_end, caught_up.hw_synced),
            (vec![0, 1], 3, 3)
        );

        let [silent] = &behind.followers[..] else {
            panic!("one follower: {:?}", behind.followers)
        };
        assert_eq!(silent.state, ReplicaState::InSync, "{silent:?}");
        assert_eq!(
            (silent.records_behind, silent.records_behind_synced),
            (2, 2)
        );
        assert!(
            (100..BOUNDS.time_us / 1000).contains(&silent.time_behind_ms),
            "silent for 100 ms: {silent:?}"
        );

        let [gone] = &left.followers[..] else {
            panic!("one follower: {:?}", left.followers)
        };
        assert_eq!(gone.state, ReplicaState::CatchingUp, "{gone:?}");
        assert!(gone.time_behind_ms > BOUNDS.time_us / 1000, "{gone:?}");
        assert_eq!(left.isr, vec![0]);

        let [broken] = &failed.followers[..] else {
            panic!("one follower: {:?}", failed.followers)
        };
        assert_eq!(broken.state, ReplicaState::Failed, "{broken:?}");
        assert_eq!(failed.isr, vec![0]);

        assert_eq!(reopens, 1);
        let [back] = &rejoined.followers[..] else {
            panic!("one follower: {:?}", rejoined.followers)
        };
        assert_eq!(
            (back.state, back.records_behind, rejoined.isr.as_slice()),
            (ReplicaState::InSync, 0, &[0, 1][..]),
            "{rejoined:?}"
        );
    });
}

/// A produce with `acks=none` has nobody waiting for its write, yet the high watermark
/// follows the write at once (a fetch without a wait reads it as it is), not at the
/// leader's next 50 ms tick.
#[test]
fn the_watermark_follows_an_acks_none_write_without_waiting_for_the_tick() {
    run(|| async {
        let rt = SimRt::default();
        rt.start_ticking();
        let disk = SimStorage::new(1);
        let log = open_log(&disk, 0).await;
        let leader = start_leader(leader_init(&disk, 0, log), &rt, net(1)).await;
        settle(&rt, 60_000).await; // past the first tick
        leader
            .produce(&batch("A", 3), Acks::None, Duration::from_secs(1))
            .await
            .unwrap();
        let start = rt.now_us();
        let mut turns = 0;
        while leader.status().hw < 3 && turns < 10_000 {
            futures_lite::future::yield_now().await;
            turns += 1;
        }
        let waited_us = rt.now_us() - start;
        let fetched = leader.fetch(0, 1 << 20, Duration::ZERO).await.unwrap();
        rt.stop_ticking();
        leader.stop();
        assert!(
            waited_us < 5_000,
            "the watermark reached the acks=none write after {waited_us} us of virtual time"
        );
        assert_eq!(records(&fetched.records).len(), 3);
    });
}

/// A follower the leader refused (here: ahead of the leader after a probe, which cannot
/// follow this lineage) is out for the rest of the term, and the leader stops probing it:
/// one refusal and one error line, not one a second.
#[test]
fn a_refused_follower_is_not_probed_again_in_the_term() {
    run(|| async {
        let (rt, net, leader) = lead_for_a_silent_follower().await;
        leader
            .produce(&batch("A", 2), Acks::Leader, Duration::from_secs(5))
            .await
            .unwrap();
        let Some(&probe) = net.probes_to(1).last() else {
            panic!("the leader never probed its follower");
        };
        answer_probe(&leader, probe, 10);
        let before = net.probes_to(1).len();
        settle(&rt, 5_000_000).await;
        let after = net.probes_to(1).len();
        let status = leader.status();
        stop_all(&rt, &net, &leader);
        assert_eq!(status.isr, vec![0]);
        assert_eq!(status.followers[0].state, ReplicaState::Failed);
        assert_eq!(after, before, "a refused follower was probed again");
    });
}

/// A follower whose truncation of a divergent tail fails (its disk fails the zeroing
/// writes) is left with its closed log. It must treat that log as failed: retry at the
/// reopen backoff (1 s, doubling), not at every probe, and never serve or report from the
/// closed log as healthy. Once the disk works again it truncates, catches up and rejoins.
#[test]
fn a_failed_truncation_is_retried_at_the_reopen_backoff_and_the_follower_rejoins() {
    run(|| async {
        let rt = SimRt::default();
        rt.start_ticking();
        let disks = [SimStorage::new(1), SimStorage::new(2)];
        // The follower holds A and B (epoch 1); the new leader (epoch 2) only A.
        prepare(&disks[0], 0, &[batch("A", 2)]).await;
        let net = net(2);
        glommio::spawn_local(pump(Rc::clone(&net))).detach();
        let follower = follower_with_a_and_b(&disks[1], &rt, &net).await;
        net.followers.borrow_mut()[1] = Some(Rc::clone(&follower));
        fail_segment_writes(&disks[1]);
        let leader = net.lead_epoch_2(&disks[0], 1, &rt).await;

        // 30 s of a disk that fails every write: the first truncation fails at once, and
        // with a 1 s backoff doubling (each reopen waits for the next probe, a second
        // apart) the retries come at about 2, 5, 10 and 19 s: 5 failed writes, the sixth
        // at about 36 s. At a probe every second there would be about 30.
        settle(&rt, 30_000_000).await;
        let attempts = disks[1].stats().faults_fired;
        let failed = leader.status();

        disks[1].clear_faults();
        for _ in 0..200 {
            if leader.status().isr == [0, 1] {
                break;
            }
            settle(&rt, 1_000_000).await;
        }
        let rejoined = leader.status();
        leader
            .produce(&batch("C", 1), Acks::AllFsync, Duration::from_secs(5))
            .await
            .unwrap();
        let hw = leader.hw();
        let l_bytes = leader.log().read(0, 1 << 20, hw).await.unwrap();
        let f_bytes = follower.log().read(0, 1 << 20, hw).await.unwrap();
        eprintln!(
            "write attempts failed in 30 s: {attempts}; isr while failing {:?}, after {:?}; \
             truncations {}, reopens {}; leader {:?} follower {:?}",
            failed.isr,
            rejoined.isr,
            follower.truncations(),
            follower.reopens(),
            records(&l_bytes),
            records(&f_bytes)
        );
        stop_all(&rt, &net, &leader);
        follower.stop();
        assert_eq!(
            failed.isr,
            vec![0],
            "a follower that cannot truncate is in sync"
        );
        assert_eq!(failed.followers[0].state, ReplicaState::Failed);
        assert!(
            (1..=8).contains(&attempts),
            "{attempts} failed writes in 30 s: the truncation is retried without backoff"
        );
        assert_eq!(rejoined.isr, vec![0, 1], "the follower never rejoined");
        assert_eq!(hw, 3);
        assert_eq!(records(&l_bytes), records(&f_bytes));
        assert_eq!(follower.truncations(), 1);
    });
}

/// `lead_for_a_silent_follower`, with the follower's probe answered (at offset 0): the
/// leader streams to it, and nothing answers its `Append`s.
async fn stream_to_a_silent_follower() -> (SimRt, Rc<Net>, Rc<Leader<SimStorage>>) {
    let (rt, net, leader) = lead_for_a_silent_follower().await;
    let probe = loop {
        if let Some(&probe) = net.probes_to(1).first() {
            break probe;
        }
        settle(&rt, 1_000).await;
    };
    answer_probe(&leader, probe, 0);
    (rt, net, leader)
}

/// Produces `batches` batches of `records` records of `value_bytes` each, one after the other
/// (`Acks::Leader`); returns their bytes.
async fn produce_batches(
    leader: &Rc<Leader<SimStorage>>,
    batches: usize,
    records: usize,
    value_bytes: usize,
) -> u64 {
    let value = vec![b'v'; value_bytes];
    let mut produced = 0;
    for _ in 0..batches {
        let mut builder = BatchBuilder::new();
        for _ in 0..records {
            builder.append(1_700_000_000_000, b"", &value, &[]).unwrap();
        }
        let batch = builder.seal().unwrap().to_vec();
        produced += batch.len() as u64;
        leader
            .produce(&batch, Acks::Leader, Duration::from_secs(5))
            .await
            .unwrap();
    }
    produced
}

/// A follower that stops answering holds at most the leader's bounds on unanswered
/// `Append`s: so many messages, and so many bytes plus the `Append` that crossed the bound,
/// never everything the leader takes meanwhile.
#[test]
fn a_follower_that_stops_answering_gets_no_more_than_the_in_flight_bounds() {
    run(|| async {
        let (rt, net, leader) = stream_to_a_silent_follower().await;
        // 6 MiB in batches of 600 KiB: more than the byte bound, in fewer batches than the
        // count bound, and under the lag bounds (the follower stays in the session).
        produce_batches(&leader, 10, 4, 150 << 10).await;
        settle(&rt, 50_000).await;
        let appends = net.appends_to(1);
        let bytes: u64 = appends.iter().sum();
        stop_all(&rt, &net, &leader);
        assert!(
            appends.len() <= APPENDS_IN_FLIGHT_MAX,
            "{} Appends unanswered",
            appends.len()
        );
        assert!(
            (APPEND_BYTES_IN_FLIGHT_MAX..=APPEND_BYTES_IN_FLIGHT_MAX + APPEND_BYTES_MAX as u64)
                .contains(&bytes),
            "{bytes} bytes unanswered: streaming stops at the byte bound, not before or long after"
        );
    });
}

/// A producer's whole window of batches goes to a follower whose answers are slow, up to the
/// byte bound, without waiting for them: the count bound must not bind first, or the batches
/// behind it leave the leader's memory before they are sent, and the leader reads its own
/// disk to replicate them.
#[test]
fn a_window_of_batches_reaches_a_slow_follower_from_the_leaders_memory() {
    run(|| async {
        let (rt, net, leader) = stream_to_a_silent_follower().await;
        // 48 batches of 64 KiB: 3 MiB, under the byte bound, as a producer keeping 48 in
        // flight sends them. The follower answers none of them.
        let produced = produce_batches(&leader, 48, 16, 4 << 10).await;
        assert!(produced < APPEND_BYTES_IN_FLIGHT_MAX);
        settle(&rt, 50_000).await;
        let sent: u64 = net.appends_to(1).iter().sum();
        let disk_reads = leader.log().stats().disk_reads;
        stop_all(&rt, &net, &leader);
        assert_eq!(sent, produced, "every batch sent while none is answered");
        assert_eq!(disk_reads, 0, "replicated from the leader's memory");
    });
}
