//! Synchronisation: lock-manager locks, the shared ring of committed joins, the per-backend stamp cache.

pub mod cache;
pub mod locks;
pub mod placement;
pub mod ring;
pub mod stats;
