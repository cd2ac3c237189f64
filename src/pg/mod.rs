//! PostgreSQL plumbing the glue modules share, each piece once: raising the core's errors
//! (the one place a SQLSTATE becomes an `ereport`), running as the extension's owner, running
//! under another resource owner, the backend's local transaction id, and finding the
//! extension's own schema and relations.

pub mod guc;
pub mod owner;
pub mod shmem;
pub mod statement;

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;

use crate::core::error::{IdentityError, SqlState};

fn error_code(state: SqlState) -> PgSqlErrorCode {
    use PgSqlErrorCode as C;
    match state {
        SqlState::NullValueNotAllowed => C::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        SqlState::InvalidParameterValue => C::ERRCODE_INVALID_PARAMETER_VALUE,
        SqlState::StringDataRightTruncation => C::ERRCODE_STRING_DATA_RIGHT_TRUNCATION,
        SqlState::ObjectNotInPrerequisiteState => C::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        SqlState::ProgramLimitExceeded => C::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        SqlState::UndefinedObject => C::ERRCODE_UNDEFINED_OBJECT,
        SqlState::DuplicateObject => C::ERRCODE_DUPLICATE_OBJECT,
        SqlState::UndefinedTable => C::ERRCODE_UNDEFINED_TABLE,
        SqlState::UndefinedColumn => C::ERRCODE_UNDEFINED_COLUMN,
        SqlState::DatatypeMismatch => C::ERRCODE_DATATYPE_MISMATCH,
        SqlState::InsufficientPrivilege => C::ERRCODE_INSUFFICIENT_PRIVILEGE,
        SqlState::FeatureNotSupported => C::ERRCODE_FEATURE_NOT_SUPPORTED,
        SqlState::SerializationFailure => C::ERRCODE_T_R_SERIALIZATION_FAILURE,
        SqlState::TriggerProtocolViolated => C::ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED,
        SqlState::InternalError => C::ERRCODE_INTERNAL_ERROR,
    }
}

/// Raises the error as a PostgreSQL ERROR with its SQLSTATE, message and hint.
pub fn raise(err: IdentityError) -> ! {
    pgrx::pg_sys::panic::ErrorReport::new(
        error_code(err.sqlstate()),
        err.message(),
        "identity_merge",
    )
    .set_hint(err.hint())
    .report(pgrx::PgLogLevel::ERROR);
    unreachable!("an ERROR does not return")
}

/// Unwraps or raises.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, IdentityError> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|e| raise(e))
    }
}

/// A failed statement of the extension's own, as an error of the one type.
pub fn internal(what: &str, err: impl std::fmt::Display) -> IdentityError {
    IdentityError::Internal {
        what: format!("{what}: {err}"),
    }
}

/// This backend's local transaction id: tells one transaction's per-backend state from the next.
pub fn local_xid() -> u32 {
    // SAFETY: MyProc is this backend's PGPROC, set up before any SQL function runs.
    unsafe {
        #[cfg(feature = "pg15")]
        {
            (*pg_sys::MyProc).lxid
        }
        #[cfg(any(feature = "pg17", feature = "pg18"))]
        {
            (*pg_sys::MyProc).vxid.lxid
        }
    }
}

/// PostgreSQL functions that only read this backend's state and cannot raise an ERROR (so
/// cannot longjmp over Rust frames), declared here to be called without pgrx's guard: the
/// stamping trigger calls them for every row, and the guard (a `sigsetjmp` and a thread
/// check per call) costs more than they do.
mod unguarded {
    use pgrx::pg_sys;
    extern "C" {
        pub fn ActiveSnapshotSet() -> bool;
        pub fn GetActiveSnapshot() -> pg_sys::Snapshot;
        pub fn GetCurrentSubTransactionId() -> pg_sys::SubTransactionId;
    }
}

/// The command id of the active snapshot (the running statement's), 0 when none is set.
pub fn active_command_id() -> u32 {
    // SAFETY: both read this backend's snapshot stack and raise nothing; the active snapshot,
    // when one is set, is valid while it is active.
    unsafe {
        if unguarded::ActiveSnapshotSet() {
            (*unguarded::GetActiveSnapshot()).curcid
        } else {
            0
        }
    }
}

/// The active snapshot (the running statement's), when one is set: compared, never read.
pub fn active_snapshot() -> Option<pg_sys::Snapshot> {
    // SAFETY: both read this backend's snapshot stack and raise nothing.
    unsafe { unguarded::ActiveSnapshotSet().then(|| unguarded::GetActiveSnapshot()) }
}

/// This backend's current subtransaction id.
pub fn current_subxact() -> u32 {
    // SAFETY: reads this backend's transaction state and raises nothing.
    unsafe { unguarded::GetCurrentSubTransactionId() }
}

/// The oid of schema identity_merge, if it exists.
pub fn schema_oid() -> Option<pg_sys::Oid> {
    // SAFETY: a catalog lookup by name; missing_ok = true returns InvalidOid instead of raising.
    let oid = unsafe { pg_sys::get_namespace_oid(c"identity_merge".as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// The oid of relation `name` in schema identity_merge, if it exists.
pub fn relation_oid(name: &CStr) -> Option<pg_sys::Oid> {
    let schema = schema_oid()?;
    // SAFETY: a catalog lookup by name and namespace; returns InvalidOid when absent.
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), schema) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// Whether relation `rel` has a column named `name` (a user column, not dropped); false for a
/// relation that does not exist.
pub fn has_column(rel: pg_sys::Oid, name: &CStr) -> bool {
    // SAFETY: a syscache lookup of a column by name; an unknown relation, a dropped column or
    // none of that name answers InvalidAttrNumber (0), a system column a negative number.
    unsafe { pg_sys::get_attnum(rel, name.as_ptr()) > 0 }
}

/// Like `relation_oid`, or the error that the extension's object is missing.
pub fn required_relation(name: &CStr) -> Result<pg_sys::Oid, IdentityError> {
    relation_oid(name).ok_or_else(|| IdentityError::MissingObject {
        what: format!("relation identity_merge.{}", name.to_string_lossy()),
    })
}

thread_local! {
    /// (oid of schema identity_merge, its owner): who the extension's own writes run as.
    static OWNER: std::cell::Cell<(pg_sys::Oid, pg_sys::Oid)> =
        const { std::cell::Cell::new((pg_sys::InvalidOid, pg_sys::InvalidOid)) };
}

fn owner_oid() -> Result<pg_sys::Oid, IdentityError> {
    let schema = schema_oid().ok_or_else(|| IdentityError::MissingObject {
        what: "schema identity_merge".into(),
    })?;
    let (cached_schema, owner) = OWNER.with(|o| o.get());
    if cached_schema == schema {
        return Ok(owner);
    }
    // A read-only select: Spi::get_one_with_args would mark the transaction as writing, which a
    // parallel worker (mp_resolve is parallel safe) may not do.
    let owner = pgrx::spi::Spi::connect(|c| -> Result<pg_sys::Oid, pgrx::spi::SpiError> {
        c.select(
            "SELECT nspowner FROM pg_catalog.pg_namespace WHERE oid OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[schema.into()],
        )?
        .first()
        .get::<pg_sys::Oid>(1)
        .map(|o| o.unwrap_or(pg_sys::InvalidOid))
    })
    .map_err(|e| internal("reading the owner of schema identity_merge", e))?;
    OWNER.with(|o| o.set((schema, owner)));
    Ok(owner)
}

/// Runs `f` as the owner of the extension's schema, the way PostgreSQL's foreign-key triggers
/// switch to the table owner: callers need EXECUTE on the mp_* functions (docs/security.md),
/// never privileges on the state tables, which only the functions change. An ERROR inside is
/// cleaned up by the (sub)transaction abort, which restores the user id.
pub fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner = owner_oid().unwrap_or_else(|e| raise(e));
    let (mut user, mut context) = (pg_sys::InvalidOid, 0);
    // SAFETY: reads and sets this backend's current user id and security context; the
    // previous ones are put back below, or by the abort of an ERROR raised inside `f`.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let r = f();
    // SAFETY: restores what was read above.
    unsafe { pg_sys::SetUserIdAndSecContext(user, context) };
    r
}

/// Which resource owner `with_resource_owner` runs under.
#[derive(Clone, Copy)]
pub enum Owner {
    /// The top transaction's (with TopTransactionContext as memory context): what is opened,
    /// pinned or registered lives until the transaction ends, not the statement.
    TopTransaction,
    /// The current (sub)transaction's: the owner locks are taken under.
    CurrentTransaction,
}

/// Runs `f` with another resource owner (and for `TopTransaction` memory context), restoring
/// both afterwards. An ERROR inside unwinds to an abort, which resets both anyway.
pub fn with_resource_owner<R>(owner: Owner, f: impl FnOnce() -> R) -> R {
    // SAFETY: swaps the backend's CurrentResourceOwner (and memory context) for ones that stay
    // valid for the whole transaction; restored below.
    let (saved_owner, saved_cx) = unsafe {
        let saved_owner = pg_sys::CurrentResourceOwner;
        let saved_cx = match owner {
            Owner::TopTransaction => {
                pg_sys::CurrentResourceOwner = pg_sys::TopTransactionResourceOwner;
                Some(pg_sys::MemoryContextSwitchTo(pg_sys::TopTransactionContext))
            }
            Owner::CurrentTransaction => {
                pg_sys::CurrentResourceOwner = pg_sys::CurTransactionResourceOwner;
                None
            }
        };
        (saved_owner, saved_cx)
    };
    let r = f();
    // SAFETY: puts back what was saved above.
    unsafe {
        pg_sys::CurrentResourceOwner = saved_owner;
        if let Some(cx) = saved_cx {
            pg_sys::MemoryContextSwitchTo(cx);
        }
    }
    r
}

/// For results of the extension's own statements, which fail only through a bug: unwraps, or
/// raises the bug as `IdentityError::Internal` (XX000) naming `what` was being done, instead of
/// a panic's message.
pub trait OrBug<T> {
    fn or_bug(self, what: &str) -> T;
}

impl<T, E: std::fmt::Display> OrBug<T> for Result<T, E> {
    fn or_bug(self, what: &str) -> T {
        self.unwrap_or_else(|e| raise(internal(what, e)))
    }
}

impl<T> OrBug<T> for Option<T> {
    fn or_bug(self, what: &str) -> T {
        self.unwrap_or_else(|| raise(internal(what, "unexpected NULL")))
    }
}

/// The name of the current role (the caller: read it before `as_owner`).
pub fn current_role_name() -> String {
    // SAFETY: looks up this backend's current user id in the role cache; noerr = true gives NULL
    // for a role dropped meanwhile, handled below.
    let name = unsafe { pg_sys::GetUserNameFromId(pg_sys::GetUserId(), true) };
    if name.is_null() {
        return String::new();
    }
    // SAFETY: a palloc'd NUL-terminated string.
    unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

/// The SQL name of a type, for messages.
pub fn type_name(typid: pg_sys::Oid) -> String {
    // SAFETY: format_type_be returns a palloc'd C string for any oid (unknown ones as "???").
    unsafe {
        CStr::from_ptr(pg_sys::format_type_be(typid))
            .to_string_lossy()
            .into_owned()
    }
}

/// A column type as `core::columns` sees it.
pub fn column_type(typid: pg_sys::Oid) -> crate::core::columns::ColumnType {
    use crate::core::columns::ColumnType;
    match typid {
        pg_sys::TEXTOID => ColumnType::Text,
        pg_sys::VARCHAROID => ColumnType::Varchar,
        pg_sys::JSONOID => ColumnType::Json,
        pg_sys::JSONBOID => ColumnType::Jsonb,
        _ => ColumnType::Other,
    }
}
