//! The real `ringmq` binary with replication factor 2 over 2 shards whose data directories
//! sit on two different filesystems (shard 0 on the normal disk, shard 1 on a loop-mounted
//! ext4 image): killed with SIGKILL under load with `acks=all`, restarted, read back in
//! full. Every acknowledged record must be there, and on the follower's replica too (its
//! directory, copied after the kill, served alone by a one-shard broker: were `all` only
//! `leader`, the follower's lag would show). Needs root (mount) and 2 cores; otherwise it
//! prints why it skipped.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{Acks, Client, ClientConfig};

mod common;

const PARTITIONS: u32 = 2;

/// A loop-mounted ext4 image, unmounted on drop.
struct LoopMount {
    dir: PathBuf,
}

impl LoopMount {
    fn new(image: &Path, dir: &Path) -> Result<LoopMount, String> {
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = cmd.output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        };
        std::fs::File::create(image)
            .and_then(|f| f.set_len(256 << 20))
            .map_err(|e| e.to_string())?;
        // No lazy init: a background zeroing thread would slow the first writes by seconds.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(image))?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(dir))?;
        Ok(LoopMount {
            dir: dir.to_path_buf(),
        })
    }
}

/// The follower's filesystem frozen (`fsfreeze`): its writes block. Thawed on drop.
struct Frozen<'a> {
    dir: &'a Path,
}

impl<'a> Frozen<'a> {
    fn new(dir: &'a Path) -> Frozen<'a> {
        let status = Command::new("fsfreeze")
            .arg("-f")
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "fsfreeze -f {}", dir.display());
        Frozen { dir }
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(self.dir).status();
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// Starts the broker with the profile at `config`; its log goes to stderr with
/// `RINGMQ_TEST_LOG` set.
fn serve(config: &Path, data: &Path) -> (Child, String) {
    let stderr = if std::env::var_os("RINGMQ_TEST_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    common::serve_profile(config, data, stderr)
}

/// Copies a directory tree (a replica's files).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Copies the follower's replicas (from `follower_data`) over the one-shard broker's in
/// `solo_data` (whose catalogue holds topic `t` with replication factor 1).
fn copy_follower(solo_data: &Path, follower_data: &Path) {
    for partition in 0..PARTITIONS {
        let replica = solo_data.join("shard-0").join(format!("t-{partition}"));
        std::fs::remove_dir_all(&replica).unwrap();
        copy_dir(&follower_data.join(format!("t-{partition}")), &replica);
    }
}

/// Serves the copy of the follower's replicas alone and reads every record back.
fn read_back_follower_copy(
    solo_config: &Path,
    solo_data: &Path,
    acked: &BTreeSet<(u32, u64)>,
) -> BTreeSet<(u32, u64)> {
    let (mut solo, address) = serve(solo_config, solo_data);
    let seen = common::read_back(&address, PARTITIONS, acked);
    solo.kill().unwrap();
    solo.wait().unwrap();
    seen
}

#[test]
fn kill_9_with_acks_all_over_two_filesystems_loses_nothing_acknowledged() {
    let root = is_root();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !root || cores < 2 {
        println!("SKIPPED: needs root (loop mount) and 2 cores; root={root} cores={cores}");
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let mount = match LoopMount::new(
        &scratch.path().join("disk1.img"),
        &scratch.path().join("disk1"),
    ) {
        Ok(mount) => mount,
        Err(error) => {
            println!("SKIPPED: cannot loop-mount an ext4 image: {error}");
            return;
        }
    };
    let data = scratch.path().join("disk0");
    let tiny = std::fs::read_to_string(common::TINY).unwrap();
    let profile = format!(
        "{}\n[[shard]]\ncore = 1\ndata_dir = \"{}\"\n",
        tiny.replace("cores = \"all\"", "cores = [0, 1]"),
        mount.dir.join("shard-1").display()
    );
    let config = scratch.path().join("profile.toml");
    std::fs::write(&config, profile).unwrap();

    // The one-shard broker that serves copies of the follower's replicas.
    let solo_config = scratch.path().join("solo.toml");
    std::fs::write(&solo_config, tiny.replace("cores = \"all\"", "cores = [0]")).unwrap();
    let solo_data = scratch.path().join("solo");
    {
        let (mut solo, solo_address) = serve(&solo_config, &solo_data);
        Client::connect(&solo_address, ClientConfig::default())
            .unwrap()
            .create_topic("t", PARTITIONS, 1)
            .unwrap();
        solo.kill().unwrap();
        solo.wait().unwrap();
    }

    let (mut broker, mut address) = serve(&config, &data);
    Client::connect(&address, ClientConfig::default())
        .unwrap()
        .create_topic("t", PARTITIONS, 2)
        .unwrap();
    let mut client = Client::connect(&address, ClientConfig::default()).unwrap();
    let topic = client.metadata().unwrap().topic("t").unwrap().clone();
    assert_eq!(topic.replication_factor, 2);
    assert_eq!(topic.min_insync, 2);
    for partition in &topic.partitions {
        assert_eq!(partition.replicas.len(), 2, "replicas on both shards");
    }
    // Partitions led by shard 0 (their follower on the loop-mounted filesystem).
    let led_by_0: Vec<u32> = topic
        .partitions
        .iter()
        .filter(|p| p.leader_shard == 0)
        .map(|p| p.partition)
        .collect();
    assert!(!led_by_0.is_empty());

    let mut acked_total = 0;
    let mut acked_all = BTreeSet::new();
    let mut next_seq = 0u64;
    // Cycles 0 and 1 kill under load; cycle 2 first freezes the follower's filesystem for a
    // while (nothing new reaches the follower's replica: `all` must acknowledge nothing
    // meanwhile), then kills.
    let cycles = 3u64;
    for cycle in 0..cycles {
        let acked: Arc<Mutex<BTreeSet<(u32, u64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let acks = if cycle % 2 == 0 {
            Acks::All
        } else {
            Acks::AllFsync
        };
        // Cycle 2 freezes the follower's filesystem of the partitions led by shard 0: only
        // they could still take (and wrongly acknowledge) writes.
        let partitions = if cycle == 2 {
            led_by_0.clone()
        } else {
            (0..PARTITIONS).collect()
        };
        let producer_thread =
            common::spawn_producer(&address, acks, next_seq, partitions, &acked, &stop);
        // Kill under load: once acknowledgements flow (the follower has joined), a little later.
        let flowing = Instant::now() + Duration::from_secs(20);
        while acked.lock().unwrap().is_empty() && Instant::now() < flowing {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300 + 300 * (cycle % 2)));
        let follower_data = mount.dir.join("shard-1");
        if cycle == 2 {
            let frozen = Frozen::new(&mount.dir);
            std::thread::sleep(Duration::from_millis(800));
            broker.kill().unwrap(); // SIGKILL
            std::thread::sleep(Duration::from_millis(200));
            // What the follower completed writing; its writes blocked on the frozen
            // filesystem (they hold the dying process until the thaw) never completed.
            copy_follower(&solo_data, &follower_data);
            drop(frozen);
        } else {
            broker.kill().unwrap(); // SIGKILL
        }
        broker.wait().unwrap();
        if cycle != 2 {
            copy_follower(&solo_data, &follower_data);
        }
        stop.store(true, Ordering::Relaxed);
        next_seq = producer_thread.join().unwrap() + 1000;
        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "cycle {cycle}: nothing was acknowledged before the kill"
        );
        acked_total += acked.len();
        acked_all.extend(acked.iter().copied());

        // `all`: the follower wrote every acknowledged record (kill -9 keeps written data).
        let on_follower = read_back_follower_copy(&solo_config, &solo_data, &acked);
        common::assert_none_lost(
            &acked,
            &on_follower,
            &format!("cycle {cycle}, the follower's replica"),
        );

        (broker, address) = serve(&config, &data);
        let seen = common::read_back(&address, PARTITIONS, &acked);
        common::assert_none_lost(&acked, &seen, &format!("cycle {cycle}"));
    }
    // Both filesystems hold a replica of each partition.
    for partition in 0..PARTITIONS {
        assert!(data.join("shard-0").join(format!("t-{partition}")).is_dir());
        assert!(
            mount
                .dir
                .join("shard-1")
                .join(format!("t-{partition}"))
                .is_dir()
        );
    }
    // Shard 0's disk is replaced (its replicas gone): at restart the follower's replicas,
    // the most advanced, lead, and every acknowledged record is still served.
    broker.kill().unwrap();
    broker.wait().unwrap();
    for partition in 0..PARTITIONS {
        std::fs::remove_dir_all(data.join("shard-0").join(format!("t-{partition}"))).unwrap();
    }
    (broker, address) = serve(&config, &data);
    let seen = common::read_back(&address, PARTITIONS, &acked_all);
    common::assert_none_lost(&acked_all, &seen, "shard 0's replicas gone");
    let mut client = Client::connect(&address, ClientConfig::default()).unwrap();
    let metadata = client.metadata().unwrap().clone();
    for partition in &metadata.topic("t").unwrap().partitions {
        assert_eq!(
            partition.leader_shard, 1,
            "the replica that has the data leads"
        );
    }
    broker.kill().unwrap();
    broker.wait().unwrap();
    eprintln!(
        "R1-repl kill-9 rf=2 acks=all,all+fsync cycles={cycles} (one with the follower's \
         filesystem frozen) acked={acked_total} lost=0, all on the follower"
    );
}

/// Whether this process runs as root (it may mount).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
