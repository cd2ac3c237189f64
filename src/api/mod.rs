//! The SQL surface: every function, trigger and hook.

pub mod attach;
pub mod backfill;
pub mod check;
pub mod dedup;
pub mod explain;
pub mod hooks;
pub mod http;
pub mod identity;
pub mod ingest;
pub mod mixpanel;
pub mod owner;
pub mod people;
pub mod queue;
pub mod records;
pub mod retract;
pub mod stamp;
pub mod worker;
