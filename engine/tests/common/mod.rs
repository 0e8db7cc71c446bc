//! The harness the replication tests share (`replication_cases`, `replication_sim`,
//! `produce_timeout`): a virtual clock, the one replica key they use, and starting a leader or
//! a follower of it on the simulated disk. Each test file brings its own transport, because
//! the scenarios need different deliveries (fixed order and dropped shards in the cases,
//! seeded delays per shard in the simulation).
#![allow(dead_code, unused_imports)]

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use engine::log::Log;
use engine::log::sim::SimStorage;
use engine::replication::state::LagBounds;
use engine::replication::{
    Follower, FollowerInit, Leader, LeaderInit, LocalFuture, ReplicaKey, Runtime, Transport,
};

#[path = "../log/common.rs"]
mod log_common;
pub use log_common::{records, run, small_config as config};

/// Lag bounds of every leader here: 400 ms of virtual time, 8 MiB.
pub const BOUNDS: LagBounds = LagBounds {
    time_us: 400_000,
    bytes: 8 << 20,
};

/// Virtual time in microseconds. It stands still until `start_ticking`, which advances it
/// 20 µs per executor turn until `stop_ticking`; a sleeping task yields until it passed.
#[derive(Clone, Default)]
pub struct SimRt {
    now: Rc<Cell<u64>>,
    ticking_stopped: Rc<Cell<bool>>,
}

impl SimRt {
    /// Spawns the ticker on the current executor.
    pub fn start_ticking(&self) {
        let (now, stopped) = (Rc::clone(&self.now), Rc::clone(&self.ticking_stopped));
        glommio::spawn_local(async move {
            while !stopped.get() {
                futures_lite::future::yield_now().await;
                now.set(now.get() + 20);
            }
        })
        .detach();
    }

    pub fn stop_ticking(&self) {
        self.ticking_stopped.set(true);
    }
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

/// Partition 0 of topic `t`, the only replica the tests run.
pub fn key() -> ReplicaKey {
    ReplicaKey {
        topic: "t".into(),
        topic_id: 1,
        partition: 0,
    }
}

/// The replica's directory on `shard`'s disk.
pub fn dir(shard: u16) -> PathBuf {
    PathBuf::from(format!("/data{shard}/t-0"))
}

/// Opens (recovers) the replica's log on `shard`'s disk.
pub async fn open_log(disk: &SimStorage, shard: u16) -> Rc<Log<SimStorage>> {
    Rc::new(
        Log::open(disk.clone(), &dir(shard), config())
            .await
            .expect("open log")
            .0,
    )
}

/// A leader term on `shard` over `log`: epoch 1, no followers, `min_insync` 1, watermark 0.
/// Callers change what their scenario needs with `..leader_init(..)`.
pub fn leader_init(
    disk: &SimStorage,
    shard: u16,
    log: Rc<Log<SimStorage>>,
) -> LeaderInit<SimStorage> {
    LeaderInit {
        key: key(),
        shard,
        epoch: 1,
        storage: disk.clone(),
        log,
        followers: vec![],
        min_insync: 1,
        bounds: BOUNDS,
        hw: 0,
    }
}

pub async fn start_leader(
    init: LeaderInit<SimStorage>,
    rt: &SimRt,
    transport: Rc<dyn Transport>,
) -> Rc<Leader<SimStorage>> {
    Leader::start(init, Rc::new(rt.clone()), transport)
        .await
        .expect("start leader")
}

/// A follower on `shard` over `log`, knowing no watermark.
pub async fn start_follower(
    disk: &SimStorage,
    shard: u16,
    log: Rc<Log<SimStorage>>,
    rt: &SimRt,
    transport: Rc<dyn Transport>,
) -> Rc<Follower<SimStorage>> {
    let init = FollowerInit {
        key: key(),
        shard,
        storage: disk.clone(),
        config: config(),
        log,
        known_hw: 0,
    };
    Follower::start(init, Rc::new(rt.clone()), transport)
        .await
        .expect("start follower")
}
