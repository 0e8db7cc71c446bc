//! Unsigned LEB128 and zigzag varints, as used inside record batches.
//!
//! Decoding takes a cursor over untrusted bytes and never panics: a varint that runs past the
//! end or past 32 bits is an error.

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VarintError {
    /// The bytes ended inside the varint.
    Truncated,
    /// More than 5 bytes, or a value above `u32::MAX`.
    Overflow,
}

/// Most bytes a `u32` takes in LEB128.
pub(crate) const VARINT_U32_BYTES_MAX: usize = 5;

/// Reads one LEB128 `u32` from the front of `bytes`; returns the value and the bytes used.
#[inline]
pub(crate) fn read_u32(bytes: &[u8]) -> Result<(u32, usize), VarintError> {
    // One-byte fast path: lengths and deltas under 128 are the common case.
    match bytes.first() {
        None => return Err(VarintError::Truncated),
        Some(&b) if b < 0x80 => return Ok((u32::from(b), 1)),
        Some(_) => {}
    }
    let mut value: u32 = 0;
    for (i, &b) in bytes.iter().take(VARINT_U32_BYTES_MAX).enumerate() {
        let bits = u32::from(b & 0x7f);
        // The fifth byte may carry only the top 4 bits of a u32.
        if i == VARINT_U32_BYTES_MAX - 1 && bits > 0x0f {
            return Err(VarintError::Overflow);
        }
        value |= bits << (7 * i);
        if b < 0x80 {
            return Ok((value, i + 1));
        }
    }
    if bytes.len() < VARINT_U32_BYTES_MAX {
        Err(VarintError::Truncated)
    } else {
        Err(VarintError::Overflow)
    }
}

/// Appends `value` in LEB128.
#[inline]
pub(crate) fn write_u32(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Bytes `write_u32` uses for `value`.
#[inline]
pub(crate) fn len_u32(value: u32) -> usize {
    match value {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        0x4000..0x20_0000 => 3,
        0x20_0000..0x1000_0000 => 4,
        _ => 5,
    }
}

/// Maps a signed value onto an unsigned one so small magnitudes stay short.
#[inline]
pub(crate) fn zigzag_encode(value: i32) -> u32 {
    ((value << 1) ^ (value >> 31)) as u32
}

#[inline]
pub(crate) fn zigzag_decode(value: u32) -> i32 {
    ((value >> 1) as i32) ^ -((value & 1) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn u32_roundtrip(value in any::<u32>()) {
            let mut out = Vec::new();
            write_u32(&mut out, value);
            prop_assert_eq!(out.len(), len_u32(value));
            prop_assert_eq!(read_u32(&out), Ok((value, out.len())));
        }

        #[test]
        fn zigzag_roundtrip(value in any::<i32>()) {
            prop_assert_eq!(zigzag_decode(zigzag_encode(value)), value);
        }
    }

    #[test]
    fn truncated_varint_is_rejected() {
        let mut out = Vec::new();
        write_u32(&mut out, u32::MAX);
        for end in 0..out.len() {
            assert_eq!(
                read_u32(&out[..end]),
                Err(VarintError::Truncated),
                "prefix {end}"
            );
        }
    }

    #[test]
    fn overlong_varint_is_rejected() {
        assert_eq!(
            read_u32(&[0xff, 0xff, 0xff, 0xff, 0x10]),
            Err(VarintError::Overflow)
        );
        assert_eq!(
            read_u32(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            Err(VarintError::Overflow)
        );
        assert_eq!(read_u32(&[0xff, 0xff, 0xff, 0xff, 0x0f]), Ok((u32::MAX, 5)));
    }

    #[test]
    fn zigzag_pins_small_values() {
        assert_eq!(zigzag_encode(0), 0);
        assert_eq!(zigzag_encode(-1), 1);
        assert_eq!(zigzag_encode(1), 2);
        assert_eq!(zigzag_encode(i32::MIN), u32::MAX);
    }
}
