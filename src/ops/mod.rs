//! Operator commands: topic creation, tailing the log, the spool's quarantine, the audit.

pub mod audit;
pub mod quarantine;
pub mod tail;
pub mod topics;
