//! Operator commands: topic creation, tailing the log, the spool's quarantine, draining and
//! inspecting a spool, rolling restarts, the audit checker.

pub mod audit;
pub mod drain;
pub mod drain_audit;
pub mod inspect;
pub mod quarantine;
pub mod rollout;
pub mod tail;
pub mod topics;
