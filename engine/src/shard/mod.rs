//! Shards: mailboxes between cores and routing.

pub mod mailbox;
pub mod router;
