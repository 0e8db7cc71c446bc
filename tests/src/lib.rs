//! Shared helpers for the integration tests in `tests/it/`.
#![forbid(unsafe_code)]
