//! Starting the real `ringmq` binary for the tests in `cli/tests/`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The tiny profile the tests run with.
pub const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tuning/tiny.toml");

pub fn ringmq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringmq"))
}

/// Starts `ringmq serve` on free ports with the tiny profile over `data`, and waits for its
/// "serving on ADDRESS" line. `stderr` says where the broker's log goes.
pub fn serve(data: &Path, stderr: Stdio) -> (Child, String) {
    let mut child = ringmq()
        .args(["serve", "--config", TINY, "--port", "0", "--data-dir"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .strip_prefix("ringmq serving on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_string();
    (child, address)
}
