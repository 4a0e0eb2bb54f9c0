//! Operator commands: topic creation, tailing the log, the spool's quarantine, rolling restarts.

pub mod quarantine;
pub mod rollout;
pub mod tail;
pub mod topics;
