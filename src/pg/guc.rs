//! Settings named `identity_merge.*` (GUCs), registered when the library loads.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::PostgresGucEnum;

use crate::core::AnonIdFormat;

/// `identity_merge.anon_id_format`: how `$identify` checks `$anon_id`. The setting's face of
/// `core::AnonIdFormat` (its values are the variants' names in lower case, the same words as
/// `AnonIdFormat::as_str`; `anon_id_format` maps them and a test checks the names).
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum AnonIdFormatGuc {
    /// UUID v4, optionally prefixed `$device:` (Mixpanel's rule).
    Uuid,
    /// Any valid id.
    Any,
}

pub static ANON_ID_FORMAT: GucSetting<AnonIdFormatGuc> =
    GucSetting::<AnonIdFormatGuc>::new(AnonIdFormatGuc::Uuid);

/// `identity_merge.stamp_cache_entries`: ids each backend remembers for the stamping trigger.
pub static STAMP_CACHE_ENTRIES: GucSetting<i32> = GucSetting::<i32>::new(1_000_000);

/// `identity_merge.cluster_locks_per_transaction`: cluster locks a transaction takes before it
/// locks the whole project instead (locks.rs).
pub static CLUSTER_LOCKS_PER_TRANSACTION: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// `identity_merge.batch_threshold`: identity events a statement applies one by one before it
/// applies the rest in memory and writes them once (batch.rs); 0: never.
pub static BATCH_THRESHOLD: GucSetting<i32> = GucSetting::<i32>::new(16);

/// `identity_merge.publish_joins`: this session's committed joins reach other sessions' stamp
/// caches through the shared ring (ring.rs); off: they send the change signal, which empties
/// every cache, as before 0.1.10.
pub static PUBLISH_JOINS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `identity_merge.worker`: the maintenance worker runs (one per database with the extension;
/// only when the library is in shared_preload_libraries).
pub static WORKER: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `identity_merge.worker_naptime`: milliseconds a maintenance worker sleeps between passes when
/// no commit woke it.
pub static WORKER_NAPTIME: GucSetting<i32> = GucSetting::<i32>::new(5000);

/// `identity_merge.worker_batch`: stale canonical ids (or queued events) one pass of the worker
/// takes, in one transaction.
pub static WORKER_BATCH: GucSetting<i32> = GucSetting::<i32>::new(500);

pub fn batch_threshold() -> usize {
    BATCH_THRESHOLD.get().max(0) as usize
}

pub fn cluster_locks_per_transaction() -> usize {
    CLUSTER_LOCKS_PER_TRANSACTION.get().max(0) as usize
}

pub fn init() {
    define();
    // No other identity_merge.* name can be set (a typo is an error, not a silent placeholder).
    // SAFETY: called once, at library load, with a static C string.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"identity_merge".as_ptr()) };
}

fn define() {
    GucRegistry::define_int_guc(
        c"identity_merge.cluster_locks_per_transaction",
        c"Cluster locks a transaction takes before it locks its whole project for writing instead.",
        c"Each identity operation locks two clusters until commit, in PostgreSQL's shared lock table \
(sized by max_locks_per_transaction). A transaction past this many (a bulk INSERT carrying many identity \
events) takes one exclusive lock of the project instead; the project's other writers then wait for it to end.",
        &CLUSTER_LOCKS_PER_TRANSACTION,
        0,
        1_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"identity_merge.batch_threshold",
        c"Identity events a statement applies one by one before it applies the rest in memory and writes them when it ends (0: never).",
        c"A statement that reaches this many identity events (a bulk INSERT or COPY with $identify rows) takes its project \
exclusively when no other transaction writes it, decides the rest with the same rules in memory, stamps its rows with the \
result at once, and writes the joins in bulk at its end. The project's other writers wait for that transaction to end.",
        &BATCH_THRESHOLD,
        0,
        1_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"identity_merge.publish_joins",
        c"Whether this session's committed joins reach other sessions' stamp caches through the shared ring (off: they empty every cache).",
        c"On: a committed join publishes the canonical ids it absorbed in shared memory, and other sessions probe only \
the answers that named them. Off: the join sends the change signal at commit and every session empties its stamp cache, \
as before 0.1.10. Superusers only: a session that turns it off slows every other session's stamping.",
        &PUBLISH_JOINS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"identity_merge.stamp_cache_entries",
        c"How many id -> canonical id answers each backend keeps for the stamping trigger (0 disables).",
        c"About 20 bytes each plus the lengths of the id and its canonical id. Other sessions' joins reach it through the shared ring; their other changes empty it.",
        &STAMP_CACHE_ENTRIES,
        0,
        100_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"identity_merge.worker",
        c"Whether the maintenance worker runs: it applies this node's Citus queue and restamps keep_fresh tables.",
        c"Only when identity_merge is in shared_preload_libraries: a launcher starts one worker per database with the \
extension. Off: nothing is automatic (mp_apply_pending, mp_restamp, as without preloading).",
        &WORKER,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"identity_merge.worker_naptime",
        c"Milliseconds a maintenance worker sleeps when no commit wakes it.",
        c"A commit that queues identity events or makes stamps of a keep_fresh table stale wakes the worker at once; \
this is the pause between passes otherwise (it also bounds how late a missed wake-up is noticed).",
        &WORKER_NAPTIME,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"identity_merge.worker_batch",
        c"Stale canonical ids a maintenance worker restamps in one transaction.",
        c"Each pass takes at most this many queued stale canonical ids, restamps the rows stamped with them in every \
keep_fresh table of their project, and commits; it goes on at once while more wait.",
        &WORKER_BATCH,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"identity_merge.anon_id_format",
        c"How $identify checks $anon_id: 'uuid' (UUID v4, optionally $device:-prefixed) or 'any'.",
        c"'any' lifts Mixpanel's UUID v4 rule for anon ids (errAnonDistinctIdNonGUIDForm) in every project; \
a project can also lift it for itself with mp_set_project_setting(token, 'anon_id_format', 'any').",
        &ANON_ID_FORMAT,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// The session's anon id format.
pub fn anon_id_format() -> AnonIdFormat {
    match ANON_ID_FORMAT.get() {
        AnonIdFormatGuc::Uuid => AnonIdFormat::UuidV4,
        AnonIdFormatGuc::Any => AnonIdFormat::Any,
    }
}

/// Whether the session lifts Mixpanel's UUID rule for anon ids.
pub fn anon_id_format_any() -> bool {
    anon_id_format() == AnonIdFormat::Any
}
