//! Operator commands: topic creation, tailing the log, the spool's quarantine, draining and
//! inspecting a spool, rolling restarts, the audit checker, sending JSON lines to a gateway.

pub mod audit;
pub mod drain;
pub mod drain_audit;
pub mod inspect;
pub mod quarantine;
pub mod rollout;
pub mod send;
pub mod tail;
pub mod topics;
