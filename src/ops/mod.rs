//! Operator commands: topic creation and tailing the log.

pub mod tail;
pub mod topics;
