//! Settings named `identity_merge.*` (GUCs), registered when the library loads.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::PostgresGucEnum;

/// `identity_merge.anon_id_format`: how `$identify` checks `$anon_id`.
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

pub fn cluster_locks_per_transaction() -> usize {
    CLUSTER_LOCKS_PER_TRANSACTION.get().max(0) as usize
}

pub fn init() {
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
        c"identity_merge.stamp_cache_entries",
        c"How many id -> canonical id answers each backend keeps for the stamping trigger (0 disables).",
        c"About 100 bytes each. The cache is emptied whenever any session changes the identity graph.",
        &STAMP_CACHE_ENTRIES,
        0,
        100_000_000,
        GucContext::Userset,
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

pub fn anon_id_format_any() -> bool {
    ANON_ID_FORMAT.get() == AnonIdFormatGuc::Any
}
