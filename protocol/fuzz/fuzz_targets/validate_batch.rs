//! Feeds arbitrary bytes to batch validation. Half the inputs get a correct crc32c stamped
//! in (as a hostile producer would), so the fuzzer reaches the record walker instead of
//! stopping at the checksum. Whatever validates must iterate exactly its record count.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::batch::{BATCH_CRC_START, BatchView, Batches};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else { return };
    let mut bytes = bytes.to_vec();
    if mode & 1 == 1 && bytes.len() >= 64 {
        let len = bytes.len() as u32;
        bytes[16..20].copy_from_slice(&len.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[BATCH_CRC_START..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    if let Ok(batch) = BatchView::new(&bytes) {
        let mut count = 0;
        for record in batch.records() {
            count += 1;
            for (key, value) in record.headers {
                let _ = (key.len(), value.len());
            }
        }
        assert_eq!(count, batch.record_count() as usize);
    }
    for batch in Batches::new(&bytes).flatten() {
        assert_eq!(batch.records().count(), batch.record_count() as usize);
    }
});
