//! The durable point of a log: a position below which every byte was synced.
//!
//! Recovery uses it to tell a torn tail from corruption: an invalid batch at or above the
//! durable point can be the remains of a write that never completed, and the log ends before
//! it (see `recovery`); an invalid batch below it is corruption of data that was synced, and
//! marks the log damaged.
//! A stale checkpoint (one older than the last sync) only weakens that check; it never makes
//! recovery unsafe. A torn checkpoint fails its crc and counts as absent.
//!
//! File `checkpoint`, one block: magic "RMQC", version, segment base offset, position,
//! next offset, crc32c of the preceding 32 bytes.

pub(crate) const CHECKPOINT_FILE: &str = "checkpoint";

const MAGIC: [u8; 4] = *b"RMQC";
const VERSION: u32 = 1;

/// Everything before `position` in segment `segment_base` (and every earlier segment) is
/// durable; the offsets below `next_offset` are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub segment_base: u64,
    pub position: u64,
    pub next_offset: u64,
}

impl Checkpoint {
    pub fn encode(&self, block_bytes: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(block_bytes);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.segment_base.to_le_bytes());
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(&self.next_offset.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out.resize(block_bytes, 0);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        let word = |at: usize| -> Option<u64> {
            bytes
                .get(at..at + 8)?
                .try_into()
                .ok()
                .map(u64::from_le_bytes)
        };
        let body = bytes.get(..32)?;
        let stored: [u8; 4] = bytes.get(32..36)?.try_into().ok()?;
        if body.get(..4)? != MAGIC
            || body.get(4..8)? != VERSION.to_le_bytes()
            || crc32c::crc32c(body) != u32::from_le_bytes(stored)
        {
            return None;
        }
        Some(Checkpoint {
            segment_base: word(8)?,
            position: word(16)?,
            next_offset: word(24)?,
        })
    }

    /// Whether byte `position` of segment `segment_base` was durable at this checkpoint.
    pub fn covers(&self, segment_base: u64, position: u64) -> bool {
        segment_base < self.segment_base
            || (segment_base == self.segment_base && position < self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_roundtrips_and_rejects_damage() {
        let point = Checkpoint {
            segment_base: 1000,
            position: 8192,
            next_offset: 1234,
        };
        let bytes = point.encode(4096);
        assert_eq!(bytes.len(), 4096);
        assert_eq!(Checkpoint::decode(&bytes), Some(point));
        for at in 0..36 {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert_eq!(Checkpoint::decode(&bad), None, "flip at {at}");
        }
        assert_eq!(Checkpoint::decode(&[0; 4096]), None);
        assert_eq!(Checkpoint::decode(&bytes[..20]), None);
    }

    #[test]
    fn covers_earlier_segments_and_earlier_positions() {
        let point = Checkpoint {
            segment_base: 1000,
            position: 8192,
            next_offset: 1234,
        };
        assert!(point.covers(0, 1 << 30));
        assert!(point.covers(1000, 8191));
        assert!(!point.covers(1000, 8192));
        assert!(!point.covers(2000, 0));
    }
}
