//! The engine: executing identity events.

pub mod batch;
