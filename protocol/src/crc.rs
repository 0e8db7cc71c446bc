//! crc32c arithmetic the `crc32c` crate does not do fast enough: joining two crcs.
//!
//! A produce frame's body crc covers the record batch, and so does the batch's own crc. The
//! broker hashes the batch once and joins that crc with the rest of the body's
//! ([`combine`]). The crate's `crc32c_combine` squares 32x32 bit matrices once per bit of the
//! length: 6 us for a 64 KiB batch, more than the pass it saves. Here the same join is a few
//! polynomial multiplications modulo the Castagnoli polynomial, each a loop of at most 32
//! shifts: 26 ns for 64 KiB (`cargo bench -p ringmq-bench-harness --bench protocol --
//! crc32c_combine`).
//!
//! The representation is the crc's own (reflected): bit 31 holds the coefficient of x^0 and
//! bit 0 that of x^31.

/// The Castagnoli polynomial, reflected, without its x^32 term.
const POLY: u32 = 0x82F6_3B78;

/// The polynomial 1 (x^0).
const ONE: u32 = 1 << 31;

/// `a * b mod P`.
const fn multiply(a: u32, b: u32) -> u32 {
    let mut product = 0;
    let mut a = a;
    // `b * x^i mod P`, for i = 0, 1, 2, ...: one shift towards x^31 (right, reflected),
    // reduced when it carries out past x^31.
    let mut b_times_x_i = b;
    while a != 0 {
        if a & ONE != 0 {
            product ^= b_times_x_i;
        }
        a <<= 1;
        b_times_x_i = if b_times_x_i & 1 != 0 {
            (b_times_x_i >> 1) ^ POLY
        } else {
            b_times_x_i >> 1
        };
    }
    product
}

/// `x^(2^k) mod P` for k = 0..67, by repeated squaring of x: enough for any `u64` count of
/// bytes, whose bit i stands for x^(2^(i + 3)). Built at compile time, where an index out of
/// bounds fails the build instead of panicking.
#[allow(clippy::indexing_slicing)]
const X_POW_2K: [u32; 67] = {
    let mut table = [0; 67];
    table[0] = ONE >> 1; // x^1
    let mut k = 1;
    while k < table.len() {
        table[k] = multiply(table[k - 1], table[k - 1]);
        k += 1;
    }
    table
};

/// `x^(8 * bytes) mod P`: what appending `bytes` zero bytes multiplies a crc's register by.
fn x_pow_8n(bytes: u64) -> u32 {
    let mut power = ONE;
    let mut rest = bytes;
    // 8 * bytes = 2^3 * bytes, so bit i of `bytes` contributes x^(2^(i + 3)).
    for factor in X_POW_2K.iter().skip(3) {
        if rest == 0 {
            break;
        }
        if rest & 1 != 0 {
            power = multiply(power, *factor);
        }
        rest >>= 1;
    }
    power
}

/// The crc32c of `a` followed by `b`, from `crc32c(a)`, `crc32c(b)` and `b.len()`.
///
/// The crc's conditioning (register preset to all ones, result inverted) cancels out: the
/// crc of `a ++ b` is `crc(a)` carried through `b_len` zero bytes, xored with `crc(b)`.
pub fn combine(crc_a: u32, crc_b: u32, b_len: usize) -> u32 {
    multiply(crc_a, x_pow_8n(b_len as u64)) ^ crc_b
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Bytes that are not all alike, so a wrong shift cannot hide.
    fn bytes(len: usize, seed: u32) -> Vec<u8> {
        let mut state = seed | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect()
    }

    #[test]
    fn combine_is_the_crc_of_the_concatenation() {
        let whole = bytes(70_000, 7);
        for split in [0, 1, 2, 3, 7, 8, 31, 32, 1000, 4096, 65_536, 69_999, 70_000] {
            let (a, b) = whole.split_at(split);
            assert_eq!(
                combine(crc32c::crc32c(a), crc32c::crc32c(b), b.len()),
                crc32c::crc32c(&whole),
                "split at {split}"
            );
        }
    }

    #[test]
    fn combine_agrees_with_the_crate_on_every_length_up_to_a_few_blocks() {
        let data = bytes(5000, 99);
        for len in 0..data.len() {
            let crc_b = crc32c::crc32c(&data[..len]);
            assert_eq!(
                combine(0x1234_5678, crc_b, len),
                crc32c::crc32c_combine(0x1234_5678, crc_b, len),
                "length {len}"
            );
        }
        for len in [1 << 20, (1 << 30) + 12_345, u32::MAX as usize, 1 << 40] {
            assert_eq!(
                combine(0xdead_beef, 0x0bad_cafe, len),
                crc32c::crc32c_combine(0xdead_beef, 0x0bad_cafe, len),
                "length {len}"
            );
        }
    }

    #[test]
    fn multiply_is_polynomial_multiplication_mod_p() {
        let x = ONE >> 1;
        assert_eq!(multiply(ONE, 0x1357_9bdf), 0x1357_9bdf, "1 is the identity");
        assert_eq!(multiply(0x1357_9bdf, ONE), 0x1357_9bdf);
        assert_eq!(multiply(0, 0x1357_9bdf), 0);
        assert_eq!(multiply(x, x), ONE >> 2, "x * x = x^2");
        // x^31 * x = x^32, which is P's remaining terms.
        assert_eq!(multiply(1, x), POLY);
        assert_eq!(
            multiply(0xa5a5_0f0f, 0x3c3c_1234),
            multiply(0x3c3c_1234, 0xa5a5_0f0f)
        );
        assert_eq!(X_POW_2K[1], ONE >> 2);
        assert_eq!(X_POW_2K[4], multiply(X_POW_2K[3], X_POW_2K[3]));
    }
}
