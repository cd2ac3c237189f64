//! The identity rules of Original ID Merge, with no PostgreSQL types: what a valid id is,
//! which anon ids `$identify` accepts, which join is allowed, which canonical id survives,
//! and the size limit. Every path (SQL functions, the stamping trigger, the JSON API) asks
//! these functions, so each rule lives here once and is unit-tested with plain `cargo test`.

use crate::core::error::{BadIdKind, IdentityError, Reason};
pub use crate::core::model::{AnonIdFormat, Mode, Op};

/// Longest id accepted, in characters (Mixpanel's limit for distinct_id).
pub const MAX_ID_CHARS: usize = 255;

/// Default cluster size limit of an Original ID Merge project (Mixpanel: 500 ids per cluster).
pub const DEFAULT_MAX_CLUSTER_SIZE: i64 = 500;

/// Ids refused as identities, compared case-insensitively after trimming. Mixpanel's own
/// list followed by values that broken clients commonly send. A project may replace it
/// (`identity_merge.projects.blocked_ids`); this is the value a new project starts with.
pub const DEFAULT_BLOCKED_IDS: &[&str] = &[
    "00000000-0000-0000-0000-000000000000",
    "anon",
    "anonymous",
    "nil",
    "none",
    "null",
    "n/a",
    "na",
    "undefined",
    "unknown",
    "<nil>",
    "0",
    "-1",
    "true",
    "false",
    "[]",
    "{}",
    "[object object]",
    "nan",
    "guest",
    "distinctid",
    "distinct_id",
    "not_authenticated",
];

/// Prefix Mixpanel SDKs put on device ids used as distinct_ids.
pub const DEVICE_PREFIX: &str = "$device:";

/// The per-project settings the rules need.
#[derive(Clone, Debug)]
pub struct RuleSettings {
    /// The project's ID Merge system (legacy aliases follow their own rules).
    pub mode: Mode,
    pub max_cluster_size: i64,
    pub anon_id_format: AnonIdFormat,
    /// Lower-cased, trimmed blocked ids.
    pub blocked_ids: Vec<String>,
}

impl Default for RuleSettings {
    fn default() -> Self {
        RuleSettings {
            mode: Mode::Original,
            max_cluster_size: DEFAULT_MAX_CLUSTER_SIZE,
            anon_id_format: AnonIdFormat::UuidV4,
            blocked_ids: DEFAULT_BLOCKED_IDS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl RuleSettings {
    /// Settings for replaying joins that were accepted when made (a retraction recomputing a
    /// cluster, `mp_check`): the structural rules of `mode` decide the canonical ids, while the
    /// checks of ids and sizes, whose settings may have changed since, pass.
    pub fn replaying(mode: Mode) -> RuleSettings {
        RuleSettings {
            mode,
            max_cluster_size: i64::MAX,
            anon_id_format: AnonIdFormat::Any,
            blocked_ids: Vec::new(),
        }
    }

    /// Blocked ids match after trimming, case-insensitively (Unicode lowercase), compared
    /// char by char without building lowercased copies (this runs for every id of a backfill).
    fn is_blocked(&self, id: &str) -> bool {
        let id = id.trim();
        let ascii = id.is_ascii();
        let folded = || id.chars().flat_map(char::to_lowercase);
        self.blocked_ids.iter().any(|b| {
            let b = b.trim();
            if ascii && b.is_ascii() {
                // ASCII folds byte for byte: no iterator of folded chars for nearly every id.
                return b.len() == id.len() && b.eq_ignore_ascii_case(id);
            }
            b.chars().flat_map(char::to_lowercase).eq(folded())
        })
    }

    /// Checks one id: present, not blank, not too long, no NUL, not blocked.
    /// `field` names the argument in the error ("identified_id", "alias", ...).
    pub fn validate_id(&self, field: &'static str, id: Option<&str>) -> Result<(), IdentityError> {
        let id = id.ok_or(IdentityError::NullId { field })?;
        let kind = if id.is_empty() {
            Some(BadIdKind::Empty)
        } else if id.trim().is_empty() {
            Some(BadIdKind::Whitespace)
        } else if id.contains('\0') {
            Some(BadIdKind::Nul)
        } else if id.chars().count() > MAX_ID_CHARS {
            Some(BadIdKind::TooLong)
        } else if self.is_blocked(id) {
            Some(BadIdKind::Blocked)
        } else {
            None
        };
        match kind {
            Some(kind) => Err(IdentityError::InvalidId {
                field,
                value: id.to_string(),
                kind,
            }),
            None => Ok(()),
        }
    }

    fn check_anon_form(&self, anon: &str) -> bool {
        match self.anon_id_format {
            AnonIdFormat::Any => true,
            AnonIdFormat::UuidV4 => is_uuid_v4_anon(anon),
        }
    }
}

/// True for a UUID v4 in its hyphenated text form, optionally after `$device:`.
pub fn is_uuid_v4_anon(anon: &str) -> bool {
    let bare = anon.strip_prefix(DEVICE_PREFIX).unwrap_or(anon);
    // Only the canonical 36-character hyphenated form, as Mixpanel SDKs send it.
    if bare.len() != 36 {
        return false;
    }
    match uuid::Uuid::parse_str(bare) {
        Ok(u) => u.get_version_num() == 4 && u.get_variant() == uuid::Variant::RFC4122,
        Err(_) => false,
    }
}

/// Simplified ID Merge: a `$user_id` may not be a device id (`$device:` prefix). `device` is
/// the device it would link to, for the message.
pub fn check_user_id(user: &str, device: &str) -> Result<(), IdentityError> {
    if user.starts_with(DEVICE_PREFIX) {
        return Err(IdentityError::refused(
            Reason::UserIdIsDevice,
            Op::Link,
            user,
            device,
        ));
    }
    Ok(())
}

/// A project and the settings its rules use.
#[derive(Clone, Debug)]
pub struct Project {
    pub id: i32,
    pub token: String,
    pub mode: Mode,
    /// An attached table of the project keeps its stamps fresh: joins and splits queue their
    /// stale canonicals for the maintenance worker.
    pub keep_fresh: bool,
    /// The project's own anon_id_format; `settings.anon_id_format` also folds in the session's.
    pub anon_id_format: AnonIdFormat,
    pub settings: RuleSettings,
}

impl Project {
    /// The effective anon id format: `Any` when either the project or the session says so.
    pub fn with_session_format(mut self, session_any: bool) -> Project {
        self.refresh(session_any);
        self
    }

    /// `with_session_format` in place.
    pub fn refresh(&mut self, session_any: bool) {
        self.settings.anon_id_format = if session_any || self.anon_id_format == AnonIdFormat::Any {
            AnonIdFormat::Any
        } else {
            AnonIdFormat::UuidV4
        };
    }
}

/// What the store knows of the cluster an id is in. An id never seen is its own
/// one-id cluster (`exists = false`, `size = 1`, canonical = the id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    pub id: String,
    pub canonical: String,
    pub size: i64,
    pub identified: bool,
    pub exists: bool,
}

impl Side {
    pub fn new_id(id: &str) -> Side {
        Side {
            id: id.to_string(),
            canonical: id.to_string(),
            size: 1,
            identified: false,
            exists: false,
        }
    }
}

/// A join to write: the `kept` cluster absorbs the `absorbed` one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinPlan {
    pub kept: Side,
    pub absorbed: Side,
    pub size: i64,
    pub identified: bool,
}

impl JoinPlan {
    pub fn canonical(&self) -> &str {
        &self.kept.canonical
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The ids are already in one cluster: nothing to change (replays are safe).
    Together(String),
    Join(JoinPlan),
}

impl Outcome {
    pub fn canonical(&self) -> &str {
        match self {
            Outcome::Together(c) => c,
            Outcome::Join(p) => p.canonical(),
        }
    }
}

/// Checks that need no stored state: the ids themselves, equality, the anon id form.
/// `a` and `b` are in call order (identify: identified, anon; alias: alias, distinct_id;
/// merge: a, b).
pub fn precheck(
    op: Op,
    settings: &RuleSettings,
    a: Option<&str>,
    b: Option<&str>,
) -> Result<(), IdentityError> {
    let (fa, fb) = op.fields();
    settings.validate_id(fa, a)?;
    settings.validate_id(fb, b)?;
    let (a, b) = (a.unwrap(), b.unwrap());
    if a == b && op != Op::Merge {
        return Err(IdentityError::refused(Reason::SameIds, op, a, b));
    }
    if op == Op::Identify && !settings.check_anon_form(b) {
        return Err(IdentityError::refused(Reason::AnonNonGuid, op, a, b));
    }
    if op == Op::Link {
        check_user_id(a, b)?;
    }
    Ok(())
}

/// Decides an operation from the state of both ids' clusters. `a`, `b` in call order.
/// The identified side (identify), the alias target (alias) and the first id (merge)
/// keep their canonical; the other side is absorbed.
pub fn decide(
    op: Op,
    settings: &RuleSettings,
    a: &Side,
    b: &Side,
) -> Result<Outcome, IdentityError> {
    if a.canonical == b.canonical {
        return Ok(Outcome::Together(a.canonical.clone()));
    }
    let (kept, absorbed) = match op {
        Op::Identify => {
            // $anon_id may not already belong to a cluster that was identified: that cluster
            // holds an identified id, and it is not this one (this one is in the other cluster).
            if b.identified {
                return Err(IdentityError::refused(
                    Reason::AnonAssigned,
                    op,
                    &a.id,
                    &b.id,
                ));
            }
            (a, b)
        }
        Op::Alias if settings.mode == Mode::Legacy => {
            // Legacy: the alias maps to the original's person once; the original (its
            // cluster's canonical, the first id) stays canonical for good.
            if a.exists {
                let reason = if a.canonical == a.id {
                    Reason::LegacyAliasIsTarget
                } else {
                    Reason::LegacyAliasAssigned
                };
                return Err(IdentityError::refused(reason, op, &a.id, &b.id));
            }
            (b, a)
        }
        Op::Alias => {
            // The alias must be new: an alias already in a different cluster is refused.
            if a.exists {
                return Err(IdentityError::refused(
                    Reason::AliasExists,
                    op,
                    &a.id,
                    &b.id,
                ));
            }
            (b, a)
        }
        Op::Merge => (a, b),
        Op::Link => {
            // A device links to its first user only; users never join each other.
            if b.exists {
                return Err(IdentityError::refused(
                    Reason::DeviceLinked,
                    op,
                    &a.id,
                    &b.id,
                ));
            }
            (a, b)
        }
    };
    let size = kept.size + absorbed.size;
    // Simplified ID Merge and legacy aliases have no size limit.
    if op != Op::Link && settings.mode != Mode::Legacy && size > settings.max_cluster_size {
        return Err(IdentityError::ManyIds {
            op,
            a: a.id.clone(),
            b: b.id.clone(),
            size,
            limit: settings.max_cluster_size,
        });
    }
    let identified =
        matches!(op, Op::Identify | Op::Link) || kept.identified || absorbed.identified;
    Ok(Outcome::Join(JoinPlan {
        kept: kept.clone(),
        absorbed: absorbed.clone(),
        size,
        identified,
    }))
}

/// A stable 64-bit lock key for a cluster, from its project and canonical id (FNV-1a).
/// Writers lock the keys of every cluster they touch in ascending order, so two writers
/// never wait on each other in a cycle.
pub fn cluster_lock_key(project_id: i32, canonical: &str) -> i64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for byte in project_id.to_le_bytes().iter().chain(canonical.as_bytes()) {
        h ^= *byte as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANON: &str = "3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b";

    fn side(id: &str, canonical: &str, size: i64, identified: bool) -> Side {
        Side {
            id: id.into(),
            canonical: canonical.into(),
            size,
            identified,
            exists: true,
        }
    }

    #[test]
    fn uuid_v4_with_and_without_device_prefix() {
        assert!(is_uuid_v4_anon(ANON));
        assert!(is_uuid_v4_anon(&format!("$device:{ANON}")));
        assert!(!is_uuid_v4_anon("D1"));
        assert!(!is_uuid_v4_anon("$device:D1"));
        // version 1 uuid
        assert!(!is_uuid_v4_anon("3f1b2b8e-6f5c-1a7e-9d2b-1c2d3e4f5a6b"));
        // braces / simple form are not what SDKs send
        assert!(!is_uuid_v4_anon("3f1b2b8e6f5c4a7e9d2b1c2d3e4f5a6b"));
    }

    #[test]
    fn id_validation_kinds() {
        let s = RuleSettings::default();
        assert!(matches!(
            s.validate_id("x", None),
            Err(IdentityError::NullId { .. })
        ));
        let kind = |v: &str| match s.validate_id("x", Some(v)) {
            Err(IdentityError::InvalidId { kind, .. }) => Some(kind),
            _ => None,
        };
        assert_eq!(kind(""), Some(BadIdKind::Empty));
        assert_eq!(kind("  \t"), Some(BadIdKind::Whitespace));
        assert_eq!(kind("a\0b"), Some(BadIdKind::Nul));
        assert_eq!(kind(&"x".repeat(256)), Some(BadIdKind::TooLong));
        assert_eq!(
            kind(&"é".repeat(255)),
            None,
            "255 characters is fine even if more bytes"
        );
        assert_eq!(kind(" Anonymous "), Some(BadIdKind::Blocked));
        assert_eq!(kind("NULL"), Some(BadIdKind::Blocked));
        assert_eq!(kind("[object Object]"), Some(BadIdKind::Blocked));
        assert_eq!(kind("NaN"), Some(BadIdKind::Blocked));
        assert_eq!(
            kind("00000000-0000-0000-0000-000000000000"),
            Some(BadIdKind::Blocked)
        );
        assert_eq!(kind("user-1"), None);
    }

    /// The ASCII fast path of `is_blocked` agrees with Unicode lowercasing: an ASCII id still
    /// matches a blocked entry that only folds to ASCII (the Kelvin sign folds to `k`), and a
    /// non-ASCII id is compared by its folded chars.
    #[test]
    fn blocked_ids_fold_like_unicode_lowercase() {
        let s = RuleSettings {
            blocked_ids: vec!["\u{212A}ey".into(), "straße".into(), "  NaN ".into()],
            ..RuleSettings::default()
        };
        let blocked = |id: &str| {
            matches!(
                s.validate_id("distinct_id", Some(id)),
                Err(IdentityError::InvalidId {
                    kind: BadIdKind::Blocked,
                    ..
                })
            )
        };
        assert!(
            blocked("KEY"),
            "an ASCII id against an entry folding to ASCII"
        );
        assert!(blocked("\u{212A}EY"));
        assert!(
            !blocked("STRASSE"),
            "lowercasing, not case folding: ß stays ß"
        );
        assert!(blocked("Straße"));
        assert!(blocked(" nan\t"), "trimmed, any case");
        assert!(!blocked("nano"));
        assert!(!blocked("ke"));
    }

    #[test]
    fn precheck_refusals() {
        let s = RuleSettings::default();
        let code =
            |r: Result<(), IdentityError>| r.err().and_then(|e| e.reason()).map(|r| r.code());
        assert_eq!(
            code(precheck(Op::Identify, &s, Some("u"), Some("u"))),
            Some("errSameIDs")
        );
        assert_eq!(
            code(precheck(Op::Alias, &s, Some("u"), Some("u"))),
            Some("errSameIDs")
        );
        assert_eq!(
            code(precheck(Op::Identify, &s, Some("u"), Some("D1"))),
            Some("errAnonDistinctIdNonGUIDForm")
        );
        assert!(precheck(Op::Identify, &s, Some("u"), Some(ANON)).is_ok());
        assert!(
            precheck(Op::Merge, &s, Some("u"), Some("u")).is_ok(),
            "merge of an id with itself is a no-op"
        );
        let any = RuleSettings {
            anon_id_format: AnonIdFormat::Any,
            ..RuleSettings::default()
        };
        assert!(precheck(Op::Identify, &any, Some("u"), Some("D1")).is_ok());
    }

    #[test]
    fn identify_new_ids_keeps_identified_canonical() {
        let s = RuleSettings::default();
        let out = decide(Op::Identify, &s, &Side::new_id("U1"), &Side::new_id(ANON)).unwrap();
        let Outcome::Join(plan) = out else { panic!() };
        assert_eq!(plan.canonical(), "U1");
        assert_eq!(plan.absorbed.canonical, ANON);
        assert_eq!(plan.size, 2);
        assert!(plan.identified);
    }

    #[test]
    fn identify_refuses_anon_of_identified_cluster() {
        let s = RuleSettings::default();
        let anon = side(ANON, "U1", 2, true);
        let err = decide(Op::Identify, &s, &Side::new_id("U2"), &anon).unwrap_err();
        assert_eq!(
            err.reason().unwrap().code(),
            "errAnonDistinctIdAssignedAlready"
        );
        // the same identify replayed is fine
        let u1 = side("U1", "U1", 2, true);
        assert_eq!(
            decide(Op::Identify, &s, &u1, &anon).unwrap(),
            Outcome::Together("U1".into())
        );
    }

    #[test]
    fn alias_rules() {
        let s = RuleSettings::default();
        let out = decide(Op::Alias, &s, &Side::new_id("A"), &Side::new_id("D")).unwrap();
        assert_eq!(out.canonical(), "D");
        let err = decide(Op::Alias, &s, &side("A", "X", 2, false), &Side::new_id("D")).unwrap_err();
        assert_eq!(err.reason().unwrap().code(), "errAliasAlreadyExists");
        // alias of an alias: joins the same cluster
        let out = decide(
            Op::Alias,
            &s,
            &Side::new_id("A2"),
            &side("A", "D", 2, false),
        )
        .unwrap();
        assert_eq!(out.canonical(), "D");
    }

    #[test]
    fn merge_joins_identified_clusters_first_side_wins() {
        let s = RuleSettings::default();
        let out = decide(
            Op::Merge,
            &s,
            &side("U1", "U1", 3, true),
            &side("U2", "U2", 4, true),
        )
        .unwrap();
        let Outcome::Join(plan) = out else { panic!() };
        assert_eq!(plan.canonical(), "U1");
        assert_eq!(plan.size, 7);
        assert!(plan.identified);
    }

    #[test]
    fn size_limit_500_not_501() {
        let s = RuleSettings::default();
        let big = side("A", "A", 499, false);
        assert!(decide(Op::Merge, &s, &big, &Side::new_id("B")).is_ok());
        let full = side("A", "A", 500, false);
        let err = decide(Op::Merge, &s, &full, &Side::new_id("B")).unwrap_err();
        assert!(matches!(
            err,
            IdentityError::ManyIds {
                size: 501,
                limit: 500,
                ..
            }
        ));
        assert_eq!(err.reason().unwrap().code(), "errManyIDs");
        assert_eq!(err.sqlstate().code(), "54000");
    }

    #[test]
    fn legacy_alias_maps_once_to_the_original() {
        let s = RuleSettings {
            mode: Mode::Legacy,
            max_cluster_size: 2,
            ..RuleSettings::default()
        };
        // alias(U, A1): A1 (the original) stays canonical.
        let out = decide(Op::Alias, &s, &Side::new_id("U"), &Side::new_id("A1")).unwrap();
        assert_eq!(out.canonical(), "A1");
        // alias(U, A2) later: U already points to A1; refused, A2 stays apart.
        let u = side("U", "A1", 2, false);
        let err = decide(Op::Alias, &s, &u, &Side::new_id("A2")).unwrap_err();
        assert_eq!(err.reason().unwrap().code(), "errLegacyAliasAssigned");
        // An original that aliases point to cannot itself become an alias.
        let a1 = side("A1", "A1", 2, false);
        let err = decide(Op::Alias, &s, &a1, &Side::new_id("B")).unwrap_err();
        assert_eq!(err.reason().unwrap().code(), "errLegacyAliasIsTarget");
        // Aliases of an alias map to the original; no size limit.
        let out = decide(Op::Alias, &s, &Side::new_id("V"), &u).unwrap();
        assert_eq!(out.canonical(), "A1");
    }

    #[test]
    fn simplified_link_first_user_wins_no_size_limit() {
        let s = RuleSettings {
            max_cluster_size: 2,
            ..RuleSettings::default()
        };
        let user = side("U1", "U1", 5, true);
        let out = decide(Op::Link, &s, &user, &Side::new_id("$device:D9")).unwrap();
        assert_eq!(out.canonical(), "U1", "no size limit in simplified mode");
        let linked = side("$device:D1", "U1", 5, true);
        let err = decide(Op::Link, &s, &Side::new_id("U2"), &linked).unwrap_err();
        assert_eq!(err.reason().unwrap().code(), "errDeviceLinkedToOtherUser");
        assert_eq!(
            decide(Op::Link, &s, &user, &linked).unwrap(),
            Outcome::Together("U1".into())
        );
        let code = precheck(Op::Link, &s, Some("$device:X"), Some("$device:D1")).unwrap_err();
        assert_eq!(code.reason().unwrap().code(), "errUserIdIsDevice");
    }

    #[test]
    fn lock_keys_differ_by_project_and_id() {
        assert_ne!(cluster_lock_key(1, "a"), cluster_lock_key(2, "a"));
        assert_ne!(cluster_lock_key(1, "a"), cluster_lock_key(1, "b"));
        assert_eq!(cluster_lock_key(1, "a"), cluster_lock_key(1, "a"));
    }
}
