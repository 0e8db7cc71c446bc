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
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use engine::control::catalog::Catalog;
use engine::log::epochs::EpochCache;
use engine::log::sim::{Fault, Op, SimStorage};
use engine::log::{Durability, Log, LogConfig, Preallocate, Retention};
use engine::replication::state::LagBounds;
use engine::replication::{
    Follower, FollowerInit, FollowerStatus, Leader, LeaderInit, LocalFuture, ReplError,
    ReplMessage, ReplicaKey, Runtime, Transport,
};
use protocol::api::CreateTopicRequest;
use protocol::{Acks, BatchBuilder, Batches};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 2 << 20,
        index_interval_bytes: 4096,
        write_buffer_bytes: (1 << 20) + 8192,
        durability: Durability::Fdatasync,
        preallocate: Preallocate::Zero,
        retention: Retention::default(),
        group_commit_window_us: 0,
        group_commit_bytes: 64 << 10,
    }
}

const BOUNDS: LagBounds = LagBounds {
    time_us: 400_000,
    bytes: 8 << 20,
};

#[derive(Clone)]
struct SimRt {
    now: Rc<Cell<u64>>,
}

impl Runtime for SimRt {
    fn now_us(&self) -> u64 {
        self.now.get()
    }
    fn sleep(&self, duration: Duration) -> LocalFuture<()> {
        let now = Rc::clone(&self.now);
        let until = now.get() + duration.as_micros() as u64;
        Box::pin(async move {
            while now.get() < until {
                futures_lite::future::yield_now().await;
            }
        })
    }
    fn spawn(&self, task: LocalFuture<()>) {
        glommio::spawn_local(task).detach();
    }
}

async fn ticker(now: Rc<Cell<u64>>, stop: Rc<Cell<bool>>) {
    while !stop.get() {
        futures_lite::future::yield_now().await;
        now.set(now.get() + 20);
    }
}

async fn settle(rt: &SimRt, us: u64) {
    rt.sleep(Duration::from_micros(us)).await;
}

fn key() -> ReplicaKey {
    ReplicaKey {
        topic: "t".into(),
        topic_id: 1,
        partition: 0,
    }
}

fn dir(shard: u16) -> PathBuf {
    PathBuf::from(format!("/data{shard}/t-0"))
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

fn values(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    Batches::new(bytes)
        .flat_map(|b| {
            let b = b.unwrap();
            b.records()
                .map(|r| (r.offset, r.value.to_vec()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Shard-indexed nodes; `up[i]` false drops messages to shard i (not opened yet).
struct Net {
    leaders: RefCell<Vec<Option<Rc<Leader<SimStorage>>>>>,
    followers: RefCell<Vec<Option<Rc<Follower<SimStorage>>>>>,
    up: RefCell<Vec<bool>>,
    queue: RefCell<VecDeque<(u16, ReplMessage)>>,
    /// Every message sent, for inspection.
    sent: RefCell<Vec<(u16, ReplMessage)>>,
    stop: Cell<bool>,
}

struct NetHandle(Rc<Net>);
impl Transport for NetHandle {
    fn send(&self, to: u16, message: ReplMessage) -> LocalFuture<bool> {
        self.0.sent.borrow_mut().push((to, message.clone()));
        self.0.queue.borrow_mut().push_back((to, message));
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

fn run_local<F: std::future::Future<Output = ()> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .spawn(move || async move { f().await })
        .unwrap()
        .join()
        .unwrap();
}

/// Writes `batches` (all epoch 1) into a fresh log on `disk`, syncs, closes, and records
/// epoch 1 from 0 in its epoch cache: the state a replica has after a kill -9.
async fn prepare(disk: &SimStorage, shard: u16, batches: &[Vec<u8>]) {
    let (log, _) = Log::open(disk.clone(), &dir(shard), config())
        .await
        .unwrap();
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
    run_local(|| async {
        let rt = SimRt {
            now: Rc::new(Cell::new(0)),
        };
        let stop = Rc::new(Cell::new(false));
        glommio::spawn_local(ticker(Rc::clone(&rt.now), Rc::clone(&stop))).detach();
        let disks = [SimStorage::new(1), SimStorage::new(2)];
        let a = batch("A", 2);
        prepare(&disks[0], 0, std::slice::from_ref(&a)).await;
        prepare(&disks[1], 1, &[a.clone(), batch("B", 2)]).await;

        let net = net(2);
        glommio::spawn_local(pump(Rc::clone(&net))).detach();
        net.up.borrow_mut()[1] = false; // shard 1 still opening its replica
        let (llog, _) = Log::open(disks[0].clone(), &dir(0), config())
            .await
            .unwrap();
        let leader = Leader::start(
            LeaderInit {
                key: key(),
                shard: 0,
                epoch: restarted_epoch(), // the catalogue's epoch after the restart
                storage: disks[0].clone(),
                log: Rc::new(llog),
                followers: vec![1],
                min_insync: 2,
                bounds: BOUNDS,
                hw: 0,
            },
            Rc::new(rt.clone()),
            Rc::new(NetHandle(Rc::clone(&net))),
        )
        .await
        .unwrap();
        net.leaders.borrow_mut()[0] = Some(Rc::clone(&leader));
        let (flog, _) = Log::open(disks[1].clone(), &dir(1), config())
            .await
            .unwrap();
        let follower = Follower::start(
            FollowerInit {
                key: key(),
                shard: 1,
                storage: disks[1].clone(),
                config: config(),
                log: Rc::new(flog),
                known_hw: 0,
            },
            Rc::new(rt.clone()),
            Rc::new(NetHandle(Rc::clone(&net))),
        )
        .await
        .unwrap();
        net.followers.borrow_mut()[1] = Some(Rc::clone(&follower));

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
            values(&l_bytes),
            values(&f_bytes),
            follower.truncations()
        );
        stop.set(true);
        net.stop.set(true);
        leader.stop();
        follower.stop();
        assert!(
            result.is_ok(),
            "setup: acks=all produce should be acked here"
        );
        assert_eq!(
            values(&l_bytes),
            values(&f_bytes),
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
    run_local(|| async {
        let rt = SimRt {
            now: Rc::new(Cell::new(0)),
        };
        let stop = Rc::new(Cell::new(false));
        glommio::spawn_local(ticker(Rc::clone(&rt.now), Rc::clone(&stop))).detach();
        let disks = [SimStorage::new(1), SimStorage::new(2)];
        // The old leader's stamped batches A [0,2) and B [2,4), epoch 1.
        let (olog, _) = Log::open(disks[0].clone(), &dir(0), config())
            .await
            .unwrap();
        olog.append(&batch("A", 2), 1).await.unwrap();
        olog.append(&batch("B", 2), 1).await.unwrap();
        olog.wait_written(4).await.unwrap();
        let stamped = olog.read(0, 1 << 20, 4).await.unwrap();
        olog.close().await.unwrap();

        let net = net(2);
        net.up.borrow_mut()[0] = false; // record only
        let (flog, _) = Log::open(disks[1].clone(), &dir(1), config())
            .await
            .unwrap();
        let follower = Follower::start(
            FollowerInit {
                key: key(),
                shard: 1,
                storage: disks[1].clone(),
                config: config(),
                log: Rc::new(flog),
                known_hw: 0,
            },
            Rc::new(rt.clone()),
            Rc::new(NetHandle(Rc::clone(&net))),
        )
        .await
        .unwrap();
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
            batches: stamped.to_vec(),
            hw: 0,
            sync: true,
        });
        // The new leader (epoch 2, shard 2 in an RF=3 placement; here shard 0 again) has
        // only A: its epoch 2 starts at 2.
        follower.deliver(ReplMessage::Probe {
            key: key(),
            epoch: 2,
            from: 0,
            probe: 7,
            leader_epochs: vec![(1, 0), (2, 2)],
            leader_next: 2,
        });
        settle(&rt, 100_000).await;
        stop.set(true);
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
    run_local(|| async {
        let rt = SimRt {
            now: Rc::new(Cell::new(0)),
        };
        let stop = Rc::new(Cell::new(false));
        glommio::spawn_local(ticker(Rc::clone(&rt.now), Rc::clone(&stop))).detach();
        let disk = SimStorage::new(1);
        prepare(&disk, 0, &[batch("A", 2)]).await;
        let net = net(3);
        net.up.borrow_mut()[2] = false; // shard 2's replica: far behind / silent
        net.up.borrow_mut()[1] = false;
        let (llog, _) = Log::open(disk.clone(), &dir(0), config()).await.unwrap();
        let leader = Leader::start(
            LeaderInit {
                key: key(),
                shard: 0,
                epoch: 2,
                storage: disk.clone(),
                log: Rc::new(llog),
                followers: vec![1, 2],
                min_insync: 2,
                bounds: BOUNDS,
                hw: 2,
            },
            Rc::new(rt.clone()),
            Rc::new(NetHandle(Rc::clone(&net))),
        )
        .await
        .unwrap();
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
        stop.set(true);
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
/// 2) as the answer to its probe: "follower ahead of the leader after a probe" marks the
/// healthy follower failed for the rest of the term (until a broker restart).
#[test]
fn a_stale_report_does_not_fail_a_healthy_follower() {
    run_local(|| async {
        let rt = SimRt {
            now: Rc::new(Cell::new(0)),
        };
        let stop = Rc::new(Cell::new(false));
        glommio::spawn_local(ticker(Rc::clone(&rt.now), Rc::clone(&stop))).detach();
        let disks = [SimStorage::new(1), SimStorage::new(2), SimStorage::new(3)];
        let (olog, _) = Log::open(disks[2].clone(), &dir(2), config())
            .await
            .unwrap();
        olog.append(&batch("A", 2), 1).await.unwrap();
        olog.append(&batch("B", 2), 1).await.unwrap();
        olog.wait_written(4).await.unwrap();
        let stamped = olog.read(0, 1 << 20, 4).await.unwrap();
        olog.close().await.unwrap();
        // New leader (shard 0): A only, epoch 2 from 2.
        prepare(&disks[0], 0, &[batch("A", 2)]).await;

        let net = net(3);
        glommio::spawn_local(pump(Rc::clone(&net))).detach();
        net.up.borrow_mut()[1] = false;
        let (flog, _) = Log::open(disks[1].clone(), &dir(1), config())
            .await
            .unwrap();
        let follower = Follower::start(
            FollowerInit {
                key: key(),
                shard: 1,
                storage: disks[1].clone(),
                config: config(),
                log: Rc::new(flog),
                known_hw: 0,
            },
            Rc::new(rt.clone()),
            Rc::new(NetHandle(Rc::clone(&net))),
        )
        .await
        .unwrap();
        net.followers.borrow_mut()[1] = Some(Rc::clone(&follower));
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
        let (llog, _) = Log::open(disks[0].clone(), &dir(0), config())
            .await
            .unwrap();
        let leader = Leader::start(
            LeaderInit {
                key: key(),
                shard: 0,
                epoch: 2,
                storage: disks[0].clone(),
                log: Rc::new(llog),
                followers: vec![1],
                min_insync: 2,
                bounds: BOUNDS,
                hw: 2,
            },
            Rc::new(rt.clone()),
            Rc::new(NetHandle(Rc::clone(&net))),
        )
        .await
        .unwrap();
        net.leaders.borrow_mut()[0] = Some(Rc::clone(&leader));
        follower.deliver(ReplMessage::Append {
            key: key(),
            epoch: 1,
            from: 2,
            probe: 1,
            base: 0,
            batches: stamped.to_vec(),
            hw: 0,
            sync: true,
        });
        // The new leader's first probe (id 1), as it would arrive right behind.
        follower.deliver(ReplMessage::Probe {
            key: key(),
            epoch: 2,
            from: 0,
            probe: 1,
            leader_epochs: vec![(1, 0), (2, 2)],
            leader_next: 2,
        });
        settle(&rt, 1_000).await;
        net.up.borrow_mut()[1] = true;
        settle(&rt, 3_000_000).await;
        let status = leader.status();
        let view = leader_follower(&leader);
        eprintln!(
            "leader status {status:?}; follower log {:?}; view {view:?}",
            follower.log().offsets()
        );
        stop.set(true);
        net.stop.set(true);
        leader.stop();
        follower.stop();
        assert_eq!(
            status.isr,
            vec![0, 1],
            "healthy, caught-up follower left out of the in-sync set"
        );
    });
}

fn leader_follower(leader: &Leader<SimStorage>) -> String {
    format!("{:?}", leader.stats())
}

/// A follower that held A [0,2) and B [2,4) in epoch 1, started on `disks[1]`.
async fn follower_with_a_and_b(
    disk: &SimStorage,
    rt: &SimRt,
    net: &Rc<Net>,
) -> Rc<Follower<SimStorage>> {
    prepare(disk, 1, &[batch("A", 2), batch("B", 2)]).await;
    let (flog, _) = Log::open(disk.clone(), &dir(1), config()).await.unwrap();
    Follower::start(
        FollowerInit {
            key: key(),
            shard: 1,
            storage: disk.clone(),
            config: config(),
            log: Rc::new(flog),
            known_hw: 0,
        },
        Rc::new(rt.clone()),
        Rc::new(NetHandle(Rc::clone(net))),
    )
    .await
    .unwrap()
}

/// P5: a follower promoted while a probe's truncation is in progress hands over its log only
/// once the truncation finished: the new leader appends to the reopened log, not to the old
/// closed one (whose appends fail `Closed`, with no failover: the partition is stuck).
#[test]
fn a_promoted_follower_hands_over_its_log_after_a_truncation_in_progress() {
    run_local(|| async {
        let rt = SimRt {
            now: Rc::new(Cell::new(0)),
        };
        let stop = Rc::new(Cell::new(false));
        glommio::spawn_local(ticker(Rc::clone(&rt.now), Rc::clone(&stop))).detach();
        let disk = SimStorage::new(2);
        let net = net(3);
        let follower = follower_with_a_and_b(&disk, &rt, &net).await;
        // The leader of epoch 2 has A only: the follower cuts B.
        follower.deliver(ReplMessage::Probe {
            key: key(),
            epoch: 2,
            from: 0,
            probe: 1,
            leader_epochs: vec![(1, 0), (2, 2)],
            leader_next: 2,
        });
        // Let the follower start handling it, then promote it (epoch 3).
        let spins = 3;
        // (three polls: the follower task is inside the truncation, waiting for its I/O)
        for _ in 0..spins {
            futures_lite::future::yield_now().await;
        }
        follower.stop_and_join().await;
        let log = follower.log();
        let appended = log.append(&batch("X", 1), 3).await;
        eprintln!(
            "spins {spins}; truncations {}; log {:?}; append {:?}",
            follower.truncations(),
            log.offsets(),
            appended.as_ref().map(|a| a.base_offset)
        );
        stop.set(true);
        assert_eq!(
            appended.map(|a| a.base_offset).ok(),
            Some(2),
            "the promoted replica appends after the cut (not into the log being truncated, \
             where the cut would then drop the record)"
        );
        assert_eq!(follower.truncations(), 1);
    });
}

/// P6: an `Append` from a newer leader that never probed this replica changes nothing here:
/// it is answered `Resync` (to that leader, in its session), nothing is appended and the
/// replica's epoch stays.
#[test]
fn an_append_from_a_newer_epoch_without_a_probe_is_answered_resync_and_not_adopted() {
    run_local(|| async {
        let rt = SimRt {
            now: Rc::new(Cell::new(0)),
        };
        let stop = Rc::new(Cell::new(false));
        glommio::spawn_local(ticker(Rc::clone(&rt.now), Rc::clone(&stop))).detach();
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
        stop.set(true);
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
    run_local(|| async {
        let rt = SimRt {
            now: Rc::new(Cell::new(0)),
        };
        let disk = SimStorage::new(1);
        let (log, _) = Log::open(disk.clone(), &dir(0), config()).await.unwrap();
        log.append(&batch("A", 2), 1).await.unwrap();
        log.wait_written(2).await.unwrap();
        let synced = log.offsets().synced;
        assert!(synced < 2, "setup: written, not synced");
        let net = net(2);
        let leader = Leader::start(
            LeaderInit {
                key: key(),
                shard: 0,
                epoch: 2,
                storage: disk.clone(),
                log: Rc::new(log),
                followers: vec![1],
                min_insync: 1,
                bounds: BOUNDS,
                hw: 2, // known from the previous leader
            },
            Rc::new(rt.clone()),
            Rc::new(NetHandle(Rc::clone(&net))),
        )
        .await
        .unwrap();
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
