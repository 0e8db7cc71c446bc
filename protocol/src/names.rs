//! Rules for the names clients choose. Topic names become directory names, so they are a
//! path-injection surface: the rule admits only a plain, portable file-name alphabet.

use crate::limits::{GROUP_NAME_BYTES_MAX, TOPIC_NAME_BYTES_MAX};

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} bytes, at most {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("name may not be '.' or '..'")]
    DotName,
    #[error("byte {at} ({byte:#04x}) is not allowed: use ASCII letters, digits, '.', '_' or '-'")]
    BadByte { at: usize, byte: u8 },
}

/// A topic name: 1..=200 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), NameError> {
    validate(name, TOPIC_NAME_BYTES_MAX, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
    })?;
    if name == "." || name == ".." {
        return Err(NameError::DotName);
    }
    Ok(())
}

/// A consumer-group name: 1..=200 bytes of printable ASCII without spaces.
pub fn validate_group_name(name: &str) -> Result<(), NameError> {
    validate(name, GROUP_NAME_BYTES_MAX, |b| b.is_ascii_graphic())
}

fn validate(name: &str, max: usize, allowed: impl Fn(u8) -> bool) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            len: name.len(),
            max,
        });
    }
    match name.bytes().enumerate().find(|&(_, byte)| !allowed(byte)) {
        Some((at, byte)) => Err(NameError::BadByte { at, byte }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_topic_names_are_accepted() {
        for name in ["orders", "a", "metrics.cpu-0_raw", "...x", &"t".repeat(200)] {
            assert_eq!(validate_topic_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn path_like_topic_names_are_rejected() {
        assert_eq!(validate_topic_name(""), Err(NameError::Empty));
        assert_eq!(validate_topic_name("."), Err(NameError::DotName));
        assert_eq!(validate_topic_name(".."), Err(NameError::DotName));
        assert_eq!(
            validate_topic_name("../etc"),
            Err(NameError::BadByte { at: 2, byte: b'/' })
        );
        assert_eq!(
            validate_topic_name("a\0b"),
            Err(NameError::BadByte { at: 1, byte: 0 })
        );
        assert_eq!(
            validate_topic_name("a\\b"),
            Err(NameError::BadByte { at: 1, byte: b'\\' })
        );
        assert_eq!(
            validate_topic_name("a b"),
            Err(NameError::BadByte { at: 1, byte: b' ' })
        );
        // A Cyrillic 'а' that looks like a Latin one.
        assert!(matches!(
            validate_topic_name("\u{430}"),
            Err(NameError::BadByte { at: 0, .. })
        ));
        assert_eq!(
            validate_topic_name(&"t".repeat(201)),
            Err(NameError::TooLong { len: 201, max: 200 })
        );
    }

    #[test]
    fn group_names_allow_punctuation_but_not_spaces() {
        assert_eq!(validate_group_name("billing/worker:1"), Ok(()));
        assert_eq!(
            validate_group_name("a b"),
            Err(NameError::BadByte { at: 1, byte: b' ' })
        );
        assert_eq!(validate_group_name(""), Err(NameError::Empty));
    }
}
