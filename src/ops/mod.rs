//! Operator commands: topic creation, tailing the log, the spool's quarantine, draining and
//! inspecting a spool.

pub mod drain;
pub mod inspect;
pub mod quarantine;
pub mod tail;
pub mod topics;
