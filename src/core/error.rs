//! The one error type of the extension: every refusal and failure, with its Mixpanel reason
//! code (where there is one), its SQLSTATE (a typed `SqlState`, chosen here only), a message
//! naming the values and a hint. Plain Rust, unit-tested; `crate::pg::raise` is the one place
//! that turns an error into a PostgreSQL ERROR. The ingest path records the same reason code
//! and message in `identity_merge.rejections` instead of raising.

use crate::core::model::Op;

/// The SQLSTATEs the extension raises (docs/errors.md lists each with its causes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqlState {
    /// 22004
    NullValueNotAllowed,
    /// 22023
    InvalidParameterValue,
    /// 22001
    StringDataRightTruncation,
    /// 55000
    ObjectNotInPrerequisiteState,
    /// 54000
    ProgramLimitExceeded,
    /// 42704
    UndefinedObject,
    /// 42710
    DuplicateObject,
    /// 42P01
    UndefinedTable,
    /// 42703
    UndefinedColumn,
    /// 42804
    DatatypeMismatch,
    /// 42501
    InsufficientPrivilege,
    /// 0A000
    FeatureNotSupported,
    /// 40001
    SerializationFailure,
    /// 39P01
    TriggerProtocolViolated,
    /// XX000: only for a bug (a statement of the extension's own that PostgreSQL refused).
    InternalError,
}

impl SqlState {
    /// The five characters.
    pub fn code(self) -> &'static str {
        match self {
            SqlState::NullValueNotAllowed => "22004",
            SqlState::InvalidParameterValue => "22023",
            SqlState::StringDataRightTruncation => "22001",
            SqlState::ObjectNotInPrerequisiteState => "55000",
            SqlState::ProgramLimitExceeded => "54000",
            SqlState::UndefinedObject => "42704",
            SqlState::DuplicateObject => "42710",
            SqlState::UndefinedTable => "42P01",
            SqlState::UndefinedColumn => "42703",
            SqlState::DatatypeMismatch => "42804",
            SqlState::InsufficientPrivilege => "42501",
            SqlState::FeatureNotSupported => "0A000",
            SqlState::SerializationFailure => "40001",
            SqlState::TriggerProtocolViolated => "39P01",
            SqlState::InternalError => "XX000",
        }
    }
}

/// Mixpanel's refusal reason codes, plus the codes this extension adds for bad input and
/// Simplified ID Merge (documented in docs/errors.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    SameIds,
    AnonNonGuid,
    AnonAssigned,
    AliasExists,
    ManyIds,
    NullId,
    InvalidId,
    DeviceLinked,
    UserIdIsDevice,
    IgnoredInSimplified,
    IgnoredInLegacy,
    LegacyAliasAssigned,
    LegacyAliasIsTarget,
    UnknownId,
    MalformedEvent,
    /// A Mixpanel identity mapping (mp_import_mixpanel): the distinct_id has rows with two
    /// different resolved ids.
    MappedTwice,
    /// A Mixpanel identity mapping whose resolved id is itself mapped to another id.
    MappingChain,
    /// A Mixpanel identity mapping that contradicts the project's clusters.
    ImportConflict,
    /// A row skipped by an attachment's insert_id deduplication (mp_dedup_insert_id).
    DuplicateInsertId,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::SameIds => "errSameIDs",
            Reason::AnonNonGuid => "errAnonDistinctIdNonGUIDForm",
            Reason::AnonAssigned => "errAnonDistinctIdAssignedAlready",
            Reason::AliasExists => "errAliasAlreadyExists",
            Reason::ManyIds => "errManyIDs",
            Reason::NullId => "errNullID",
            Reason::InvalidId => "errInvalidID",
            Reason::DeviceLinked => "errDeviceLinkedToOtherUser",
            Reason::UserIdIsDevice => "errUserIdIsDevice",
            Reason::IgnoredInSimplified => "errIgnoredInSimplified",
            Reason::IgnoredInLegacy => "errIgnoredInLegacy",
            Reason::LegacyAliasAssigned => "errLegacyAliasAssigned",
            Reason::LegacyAliasIsTarget => "errLegacyAliasIsTarget",
            Reason::UnknownId => "errUnknownID",
            Reason::MalformedEvent => "errMalformedEvent",
            Reason::MappedTwice => "errMappedTwice",
            Reason::MappingChain => "errMappingChain",
            Reason::ImportConflict => "errImportConflict",
            Reason::DuplicateInsertId => "errDuplicateInsertId",
        }
    }
}

/// Why an id is not a valid id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadIdKind {
    Empty,
    Whitespace,
    TooLong,
    Nul,
    Blocked,
}

impl BadIdKind {
    fn describe(self) -> &'static str {
        match self {
            BadIdKind::Empty => "is empty",
            BadIdKind::Whitespace => "is only whitespace",
            BadIdKind::TooLong => "is longer than 255 characters",
            BadIdKind::Nul => "contains a NUL character",
            BadIdKind::Blocked => "is on the project's list of blocked ids",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityError {
    NullId {
        field: &'static str,
    },
    InvalidId {
        field: &'static str,
        value: String,
        kind: BadIdKind,
    },
    Refused {
        reason: Reason,
        op: Op,
        a: String,
        b: String,
    },
    ManyIds {
        op: Op,
        a: String,
        b: String,
        size: i64,
        limit: i64,
    },
    UnknownProject {
        token: String,
    },
    /// `mp_explain(id, project)` whose project is unknown: likely meant as the two-id form.
    UnknownExplainProject {
        token: String,
    },
    ProjectExists {
        token: String,
    },
    ProjectHasData {
        token: String,
    },
    WrongMode {
        op: &'static str,
        token: String,
        mode: crate::core::model::Mode,
    },
    InvalidArgument {
        what: &'static str,
        value: String,
        hint: &'static str,
    },
    /// An identity event (row or JSON body) whose fields are missing or of the wrong type.
    MalformedEvent {
        field: String,
        problem: String,
    },
    /// A `$identify` / `$create_alias` / `$merge` event in a Simplified project (recorded only).
    Ignored {
        event: String,
        token: String,
        mode: crate::core::model::Mode,
    },
    /// Concurrent writers kept moving the clusters under us; safe to retry the transaction.
    Contention {
        op: Op,
        a: String,
        b: String,
    },
    /// A REPEATABLE READ / SERIALIZABLE transaction's snapshot predates a join it collides
    /// with; safe to retry the transaction.
    SerializationFailure {
        op: Op,
        a: String,
        b: String,
    },
    /// A statement's identity events were written early (batch.rs) by a subtransaction that
    /// then rolled back while the statement's rows stayed: the commit is refused rather than
    /// keeping rows whose identity events were lost; safe to retry the transaction.
    BatchRolledBack {
        events: usize,
    },
    /// `identity_merge.stamp_event` used other than as `mp_attach` puts it on a table.
    TriggerMisuse {
        problem: String,
    },
    /// A column of an event table the trigger reads or writes has a type it cannot handle.
    WrongColumnType {
        table: String,
        column: String,
        found: String,
        expected: &'static str,
    },
    /// A column named by an attachment is gone (dropped or renamed).
    MissingColumn {
        table: String,
        column: String,
    },
    /// A stamp or filled-in distinct_id longer than the column's varchar(n).
    ValueTooLong {
        table: String,
        column: String,
        value: String,
        limit: i32,
    },
    /// The caller does not own the event table (nor is a member of its owner role).
    NotOwner {
        table: String,
    },
    /// A function given NULL where it needs a value (never a silent no-op).
    NullArgument {
        function: &'static str,
        argument: &'static str,
    },
    /// An administrator's function that works on a user's table as the table's owner
    /// (src/pg/owner.rs) called by a role that may not act as that owner.
    CannotActAsOwner {
        function: &'static str,
        table: String,
        owner: String,
        role: String,
    },
    /// A registration that does not match the table's stamping trigger.
    AttachmentMismatch {
        table: String,
        problem: String,
    },
    /// An id the project never saw, where one is required (mp_explain).
    UnknownId {
        id: String,
        token: String,
    },
    /// A merge_log.seq that names no join.
    UnknownJoin {
        seq: i64,
    },
    /// A row of a Mixpanel identity mapping that mp_import_mixpanel does not import
    /// (`reason`: MappedTwice, MappingChain, ImportConflict); `other` is the second resolved
    /// id, the id the resolved id maps to, or the person the distinct_id already belongs to.
    BadMapping {
        reason: Reason,
        distinct_id: String,
        resolved: String,
        other: String,
    },
    /// A row whose insert_id its table already holds, skipped (recorded, never raised).
    DuplicateInsertId {
        table: String,
        insert_id: String,
    },
    /// One of the extension's own tables or indexes is missing (dropped by hand).
    MissingObject {
        what: String,
    },
    /// `mp_ingest` cannot move this staging table into this attached table (core/staged.rs).
    Staging {
        staging: String,
        target: String,
        problem: StagingProblem,
    },
    /// A function that runs on one server only, called once the identity state is distributed.
    NotOnCitus {
        function: &'static str,
        hint: &'static str,
    },
    /// A statement of the extension's own failed where PostgreSQL raised no error of its own
    /// (a bug: no input reaches it).
    Internal {
        what: String,
    },
}

/// Why `mp_ingest` refuses a staging table and an attached table (each with its SQLSTATE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StagingProblem {
    /// The target has no stamping trigger registered (55000).
    NotAttached,
    /// Staging and target are one table (22023).
    SameTable,
    /// The staging relation is not an ordinary table (0A000): its rows have no order to apply.
    NotATable { kind: &'static str },
    /// A staging column the target does not have (42703).
    UnknownColumn { column: String },
    /// A staging column whose type is not the target column's (42804).
    TypeMismatch {
        column: String,
        staging_type: String,
        target_type: String,
    },
    /// A column the trigger reads or writes is of a type it cannot handle (42804): the target
    /// was retyped since it was attached.
    WrongType {
        column: String,
        found: String,
        expected: &'static str,
    },
    /// A column the stamp is computed from is missing in staging while the target gives it a
    /// default (0A000): the stamp would be computed from another value than the row gets.
    DefaultedColumn { column: String },
    /// The target is distributed by Citus (0A000): its shards' triggers queue identity events.
    Distributed,
}

impl StagingProblem {
    pub fn sqlstate(&self) -> SqlState {
        match self {
            StagingProblem::NotAttached => SqlState::ObjectNotInPrerequisiteState,
            StagingProblem::SameTable => SqlState::InvalidParameterValue,
            StagingProblem::NotATable { .. }
            | StagingProblem::DefaultedColumn { .. }
            | StagingProblem::Distributed => SqlState::FeatureNotSupported,
            StagingProblem::UnknownColumn { .. } => SqlState::UndefinedColumn,
            StagingProblem::TypeMismatch { .. } | StagingProblem::WrongType { .. } => {
                SqlState::DatatypeMismatch
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            StagingProblem::NotAttached => "the target table is not attached to identity_merge".into(),
            StagingProblem::SameTable => "the staging table and the target table are the same table".into(),
            StagingProblem::NotATable { kind } => format!("the staging relation is a {kind}, not a table"),
            StagingProblem::UnknownColumn { column } => {
                format!("column {} of the staging table does not exist in the target table", show(column))
            }
            StagingProblem::TypeMismatch { column, staging_type, target_type } => format!(
                "column {} is of type {staging_type} in the staging table and {target_type} in the target table",
                show(column)
            ),
            StagingProblem::WrongType { column, found, expected } => format!(
                "column {} of the target table is of type {found}; identity_merge needs {expected}",
                show(column)
            ),
            StagingProblem::DefaultedColumn { column } => format!(
                "column {} is missing from the staging table and has a default in the target table",
                show(column)
            ),
            StagingProblem::Distributed => "the target table is distributed by Citus".into(),
        }
    }

    fn hint(&self) -> &'static str {
        match self {
            StagingProblem::NotAttached => "Attach it with mp_attach first.",
            StagingProblem::SameTable => "Load the rows into a staging table, e.g. CREATE TEMP TABLE staging (LIKE events), then mp_ingest('staging', 'events').",
            StagingProblem::NotATable { .. } => "Stage the rows in an ordinary table (CREATE TABLE ... (LIKE events), temporary or unlogged is fine).",
            StagingProblem::UnknownColumn { .. } => "Create the staging table with CREATE TABLE staging (LIKE events), or drop the extra column.",
            StagingProblem::TypeMismatch { .. } => "Create the staging table with CREATE TABLE staging (LIKE events): its columns then have the target's types.",
            StagingProblem::WrongType { .. } => "Change the column's type back (ids are text or varchar, properties jsonb, json or text), or mp_detach the table.",
            StagingProblem::DefaultedColumn { .. } => "Add the column to the staging table (CREATE TABLE staging (LIKE events INCLUDING DEFAULTS) fills it as the target would).",
            StagingProblem::Distributed => "On Citus, load with INSERT INTO events SELECT * FROM staging: the shards' triggers queue the identity events (docs/scaling.md).",
        }
    }
}

/// A value as a SQL literal, for hints.
pub fn quote(v: &str) -> String {
    let short: String = v.chars().take(80).collect();
    format!("'{}'", short.replace('\'', "''"))
}

/// Shortens a value for a message: ids may be 255 characters, junk may be longer.
fn show(v: &str) -> String {
    let mut s: String = v.chars().take(80).collect();
    if v.chars().count() > 80 {
        s.push('…');
    }
    format!("{s:?}")
}

impl IdentityError {
    /// A whole project's write lock (or, on Citus, every node's) refused to a deadlock's
    /// victim; `what` names what was being written (the project's token, an id). Retryable.
    pub fn project_contention(what: &str) -> IdentityError {
        IdentityError::Contention {
            op: Op::Merge,
            a: what.to_string(),
            b: String::new(),
        }
    }

    pub fn refused(reason: Reason, op: Op, a: &str, b: &str) -> Self {
        IdentityError::Refused {
            reason,
            op,
            a: a.to_string(),
            b: b.to_string(),
        }
    }

    /// The reason code recorded in rejections and quoted in messages, where there is one.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            IdentityError::NullId { .. } => Some(Reason::NullId),
            IdentityError::InvalidId { .. } => Some(Reason::InvalidId),
            IdentityError::Refused { reason, .. } => Some(*reason),
            IdentityError::ManyIds { .. } => Some(Reason::ManyIds),
            IdentityError::MalformedEvent { .. } => Some(Reason::MalformedEvent),
            IdentityError::Ignored {
                mode: crate::core::model::Mode::Legacy,
                ..
            } => Some(Reason::IgnoredInLegacy),
            IdentityError::Ignored { .. } => Some(Reason::IgnoredInSimplified),
            IdentityError::UnknownId { .. } => Some(Reason::UnknownId),
            IdentityError::BadMapping { reason, .. } => Some(*reason),
            IdentityError::DuplicateInsertId { .. } => Some(Reason::DuplicateInsertId),
            _ => None,
        }
    }

    /// The SQLSTATE it is raised with.
    pub fn sqlstate(&self) -> SqlState {
        use SqlState as S;
        match self {
            IdentityError::NullId { .. } => S::NullValueNotAllowed,
            IdentityError::InvalidId { .. }
            | IdentityError::InvalidArgument { .. }
            | IdentityError::MalformedEvent { .. } => S::InvalidParameterValue,
            IdentityError::Refused { .. }
            | IdentityError::ProjectHasData { .. }
            | IdentityError::AttachmentMismatch { .. } => S::ObjectNotInPrerequisiteState,
            IdentityError::ManyIds { .. } => S::ProgramLimitExceeded,
            IdentityError::UnknownProject { .. }
            | IdentityError::UnknownExplainProject { .. }
            | IdentityError::UnknownId { .. }
            | IdentityError::UnknownJoin { .. } => S::UndefinedObject,
            IdentityError::ProjectExists { .. } => S::DuplicateObject,
            IdentityError::WrongMode { .. } | IdentityError::Ignored { .. } => {
                S::FeatureNotSupported
            }
            IdentityError::Contention { .. }
            | IdentityError::SerializationFailure { .. }
            | IdentityError::BatchRolledBack { .. } => S::SerializationFailure,
            IdentityError::TriggerMisuse { .. } => S::TriggerProtocolViolated,
            IdentityError::WrongColumnType { .. } => S::DatatypeMismatch,
            IdentityError::MissingColumn { .. } => S::UndefinedColumn,
            IdentityError::ValueTooLong { .. } => S::StringDataRightTruncation,
            IdentityError::NotOwner { .. } => S::InsufficientPrivilege,
            IdentityError::CannotActAsOwner { .. } => S::InsufficientPrivilege,
            IdentityError::NullArgument { .. } => S::NullValueNotAllowed,
            IdentityError::MissingObject { .. } => S::UndefinedTable,
            IdentityError::Staging { problem, .. } => problem.sqlstate(),
            IdentityError::BadMapping {
                reason: Reason::ImportConflict,
                ..
            } => S::ObjectNotInPrerequisiteState,
            IdentityError::BadMapping { .. } => S::InvalidParameterValue,
            IdentityError::DuplicateInsertId { .. } => S::ObjectNotInPrerequisiteState,
            IdentityError::NotOnCitus { .. } => S::FeatureNotSupported,
            IdentityError::Internal { .. } => S::InternalError,
        }
    }

    /// Transient: the transaction may simply be retried (raised even on the ingest path,
    /// which records every other refusal instead).
    pub fn is_retryable(&self) -> bool {
        self.sqlstate() == SqlState::SerializationFailure
    }

    pub fn message(&self) -> String {
        match self {
            IdentityError::NullId { field } => format!("errNullID: {field} is NULL"),
            IdentityError::InvalidId { field, value, kind } => {
                format!("errInvalidID: {field} {} {}", show(value), kind.describe())
            }
            IdentityError::Refused { reason, op, a, b } => {
                let (fa, fb) = op.fields();
                let what = match reason {
                    Reason::SameIds => "are the same id",
                    Reason::AnonNonGuid => "refused: anon_id is not a UUID v4 (optionally prefixed \"$device:\")",
                    Reason::AnonAssigned => {
                        "refused: anon_id is already merged into a cluster with another identified id"
                    }
                    Reason::AliasExists => "refused: alias already belongs to a different cluster",
                    Reason::LegacyAliasAssigned => {
                        "refused: alias already points to a distinct_id (a legacy alias maps to one id, once)"
                    }
                    Reason::LegacyAliasIsTarget => {
                        "refused: alias is an original distinct_id that other aliases point to"
                    }
                    Reason::DeviceLinked => "refused: the device is already linked to another user",
                    Reason::UserIdIsDevice => "refused: a $user_id may not start with \"$device:\"",
                    _ => "refused",
                };
                format!("{}: {} {fa} {} and {fb} {} {what}", reason.code(), op.as_str(), show(a), show(b))
            }
            IdentityError::ManyIds { op, a, b, size, limit } => {
                let (fa, fb) = op.fields();
                format!(
                    "errManyIDs: {} {fa} {} and {fb} {} would make a cluster of {size} ids, over the limit of {limit}",
                    op.as_str(),
                    show(a),
                    show(b)
                )
            }
            IdentityError::UnknownProject { token } | IdentityError::UnknownExplainProject { token } => {
                format!("unknown project token {}", show(token))
            }
            IdentityError::ProjectExists { token } => format!("project {} already exists", show(token)),
            IdentityError::ProjectHasData { token } => {
                format!("project {} already holds identities; its mode can no longer change", show(token))
            }
            IdentityError::WrongMode { op, token, mode } => {
                format!("{op} is not available in project {}, which uses {}", show(token), mode.system_name())
            }
            IdentityError::InvalidArgument { what, value, .. } => format!("invalid {what}: {}", show(value)),
            IdentityError::MalformedEvent { field, problem } => format!("errMalformedEvent: {field} {problem}"),
            IdentityError::Ignored { event, token, mode } => format!(
                "{}: event {} has no identity meaning in {} project {}; ignored",
                self.reason().unwrap_or(Reason::IgnoredInSimplified).code(),
                show(event),
                mode.system_name(),
                show(token)
            ),
            IdentityError::Contention { op, a, b } => {
                format!("{} of {} and {} kept conflicting with concurrent merges", op.as_str(), show(a), show(b))
            }
            IdentityError::SerializationFailure { op, a, b } => format!(
                "could not serialize access: {} of {} and {} collides with a join committed after this transaction's snapshot",
                op.as_str(),
                show(a),
                show(b)
            ),
            IdentityError::BatchRolledBack { events } => format!(
                "could not commit: the joins of {events} identity events of an earlier statement were written by a subtransaction that rolled back, and the statement's rows remain"
            ),
            IdentityError::TriggerMisuse { problem } => format!("identity_merge.stamp_event {problem}"),
            IdentityError::WrongColumnType { table, column, found, expected } => format!(
                "column {} of {table} is of type {found}; identity_merge needs {expected}",
                show(column)
            ),
            IdentityError::MissingColumn { table, column } => {
                format!("column {} of {table} does not exist", show(column))
            }
            IdentityError::ValueTooLong { table, column, value, limit } => format!(
                "value {} too long for column {} of {table} (character varying({limit}))",
                show(value),
                show(column)
            ),
            IdentityError::NotOwner { table } => format!("must be owner of table {table}"),
            IdentityError::NullArgument { function, argument } => {
                format!("{function}: argument {argument} is NULL")
            }
            IdentityError::CannotActAsOwner { function, table, owner, role } => format!(
                "{function} works on table {table} as its owner {owner}, and role {role} may not act as {owner}"
            ),
            IdentityError::AttachmentMismatch { table, problem } => format!("table {table}: {problem}"),
            IdentityError::MissingObject { what } => format!("{what} is missing"),
            IdentityError::DuplicateInsertId { table, insert_id } => format!(
                "errDuplicateInsertId: row with insert_id {} skipped: {table} already holds a row with this insert_id",
                show(insert_id)
            ),
            IdentityError::BadMapping { reason, distinct_id, resolved, other } => {
                let why = match reason {
                    Reason::MappedTwice => format!("the distinct_id is also mapped to {}", show(other)),
                    Reason::MappingChain => {
                        format!("the resolved id is itself mapped to {} (a chain)", show(other))
                    }
                    _ => format!("the distinct_id already belongs to person {} in this project", show(other)),
                };
                format!(
                    "{}: mapping of distinct_id {} to resolved_distinct_id {} not imported: {why}",
                    reason.code(),
                    show(distinct_id),
                    show(resolved)
                )
            }
            IdentityError::UnknownJoin { seq } => format!("no logged join has seq {seq}"),
            IdentityError::UnknownId { id, token } => {
                format!("errUnknownID: id {} was never seen in project {}", show(id), show(token))
            }
            IdentityError::Staging { staging, target, problem } => {
                format!("mp_ingest({staging}, {target}): {}", problem.describe())
            }
            IdentityError::NotOnCitus { function, .. } => {
                format!("{function} runs on one server: the identity state is distributed by Citus")
            }
            IdentityError::Internal { what } => format!("identity_merge internal error: {what}"),
        }
    }

    pub fn hint(&self) -> String {
        match self {
            IdentityError::NullId { .. } => "Pass a non-NULL distinct_id.".into(),
            IdentityError::InvalidId { kind: BadIdKind::Blocked, .. } => {
                "Placeholder values are never identities; send the real id. The list is identity_merge.projects.blocked_ids.".into()
            }
            IdentityError::InvalidId { .. } => "An id is 1 to 255 characters of text, not blank, without NUL.".into(),
            IdentityError::Refused { reason: Reason::SameIds, .. } => "The two ids must differ.".into(),
            IdentityError::Refused { reason: Reason::AnonNonGuid, .. } => {
                "Send the SDK's UUID v4 device id, or SET identity_merge.anon_id_format = 'any'.".into()
            }
            IdentityError::Refused { reason: Reason::AnonAssigned, .. } => {
                "This anon id already belongs to another user; use mp_merge to join two identified users deliberately.".into()
            }
            IdentityError::Refused { reason: Reason::AliasExists, .. } => {
                "An alias may be used once; mp_merge joins two existing clusters.".into()
            }
            IdentityError::Refused { reason: Reason::DeviceLinked, .. } => {
                "In Simplified ID Merge a device links to its first user only.".into()
            }
            IdentityError::Refused { reason: Reason::LegacyAliasAssigned | Reason::LegacyAliasIsTarget, .. } => {
                "Legacy aliases are final: events of this id keep the person it already maps to (or is).".into()
            }
            IdentityError::Refused { .. } => "See docs/errors.md for this reason code.".into(),
            IdentityError::ManyIds { .. } => {
                "A cluster holds at most max_cluster_size ids (see mp_project_settings); this join was not made.".into()
            }
            IdentityError::UnknownProject { .. } => "Create it with mp_create_project(token, mode).".into(),
            IdentityError::UnknownExplainProject { token } => format!(
                "mp_explain(id, project) explains one id in a project; to explain how two ids are joined, name the project too: mp_explain(id_a, {}, project).",
                crate::core::error::quote(token)
            ),
            IdentityError::ProjectExists { .. } => "Pick another token or use the existing project.".into(),
            IdentityError::ProjectHasData { .. } => "Create a new project for the other mode.".into(),
            IdentityError::WrongMode { mode: crate::core::model::Mode::Legacy, .. } => {
                "Legacy projects only alias: mp_alias(new_id, original_id), or $create_alias events.".into()
            }
            IdentityError::WrongMode { .. } => {
                "Simplified projects link ids through $device_id and $user_id on events.".into()
            }
            IdentityError::InvalidArgument { hint, .. } => (*hint).into(),
            IdentityError::Ignored { mode: crate::core::model::Mode::Legacy, .. } => {
                "In a legacy project only $create_alias joins ids.".into()
            }
            IdentityError::Ignored { .. } => "Send $device_id and $user_id on events instead.".into(),
            IdentityError::MalformedEvent { .. } => {
                "Identity events carry their ids as strings (numbers are accepted) in the fields the Mixpanel API names.".into()
            }
            IdentityError::Contention { .. }
            | IdentityError::SerializationFailure { .. }
            | IdentityError::BatchRolledBack { .. } => "Retry the transaction.".into(),
            IdentityError::TriggerMisuse { .. } => {
                "Put the trigger on a table with mp_attach(table, project, distinct_id_column, canonical_column).".into()
            }
            IdentityError::WrongColumnType { .. } => {
                "Ids are text or varchar columns, properties jsonb, json or text; change the column's type back or mp_detach the table (see docs/functions.md, mp_attach).".into()
            }
            IdentityError::MissingColumn { .. } => {
                "Re-attach the table with mp_attach, naming its current columns, or mp_detach it.".into()
            }
            IdentityError::ValueTooLong { .. } => {
                "Ids may be 255 characters: use text or varchar(255) or longer.".into()
            }
            IdentityError::NullArgument { argument, .. } => {
                format!("Pass a value for {argument} (NULL is not a default).")
            }
            IdentityError::CannotActAsOwner { owner, .. } => format!(
                "The table's triggers, indexes and policies are its owner's code and run with its owner's rights: run this as {owner}, as a member of {owner}, or as a superuser."
            ),
            IdentityError::NotOwner { .. } => {
                "Only the table's owner (or a member of the owning role) may attach or register it.".into()
            }
            IdentityError::AttachmentMismatch { .. } => {
                "Attach tables with mp_attach; it registers exactly what its trigger says.".into()
            }
            IdentityError::MissingObject { .. } => {
                "An object of the extension was dropped: reinstall it (DROP EXTENSION identity_merge; CREATE EXTENSION identity_merge) or restore it from a dump.".into()
            }
            IdentityError::Staging { problem, .. } => problem.hint().into(),
            IdentityError::NotOnCitus { hint, .. } => (*hint).into(),
            IdentityError::Internal { .. } => "Please report this as a bug of identity_merge.".into(),
            IdentityError::DuplicateInsertId { .. } => {
                "Mixpanel's rule for /import: one event per insert_id. The skipped row is source_row; mp_dedup_insert_id(table, false) turns it off.".into()
            }
            IdentityError::BadMapping { reason: Reason::MappedTwice, .. } => {
                "Mixpanel resolves an id to one person: fix the export (neither mapping of the id is imported), then import again.".into()
            }
            IdentityError::BadMapping { reason: Reason::MappingChain, .. } => {
                "A resolved_distinct_id resolves to itself in a consistent export: fix the row (or map the id to the end of the chain), then import again.".into()
            }
            IdentityError::BadMapping { .. } => {
                "The project's own joins stand; if Mixpanel is right, join the two people deliberately with mp_merge(resolved_distinct_id, distinct_id).".into()
            }
            IdentityError::UnknownJoin { .. } => {
                "Joins are the rows of identity_merge.merge_log (mp_explain shows their seq).".into()
            }
            IdentityError::UnknownId { .. } => {
                "Only ids some identity operation joined are in the graph; an id never seen is alone (mp_resolve answers itself).".into()
            }
        }
    }
}

impl std::fmt::Display for IdentityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for IdentityError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_value_and_reason() {
        let e = IdentityError::refused(Reason::AnonAssigned, Op::Identify, "U2", "abc");
        assert!(e.message().starts_with("errAnonDistinctIdAssignedAlready:"));
        assert!(e.message().contains("\"U2\"") && e.message().contains("\"abc\""));
        assert_eq!(e.sqlstate().code(), "55000");
        let e = IdentityError::InvalidId {
            field: "alias",
            value: "null".into(),
            kind: BadIdKind::Blocked,
        };
        assert_eq!(e.sqlstate().code(), "22023");
        assert!(e.message().contains("\"null\"") && e.message().contains("blocked"));
        assert!(!e.hint().is_empty());
    }

    #[test]
    fn long_values_are_shortened() {
        let e = IdentityError::InvalidId {
            field: "x",
            value: "y".repeat(1000),
            kind: BadIdKind::TooLong,
        };
        assert!(e.message().len() < 200);
    }
}
