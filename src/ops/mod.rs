//! Operator commands: topic creation, tailing the log, the spool's quarantine.

pub mod quarantine;
pub mod tail;
pub mod topics;
