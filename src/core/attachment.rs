//! What an attached table's stamping trigger says: `identity_merge.stamp_event(project,
//! distinct_id column, canonical column [, device id column, user id column])`, as `mp_attach`
//! puts it on the table. Read here once, for the trigger (api/stamp.rs) and for the registry
//! of attached tables (api/attach.rs); sql/api.sql's `_trigger_args` reads it for PL/pgSQL.

use crate::core::error::IdentityError;

/// The device id column a Simplified project's table is read from when the trigger names none.
pub const DEFAULT_DEVICE_COLUMN: &str = "$device_id";
/// The user id column a Simplified project's table is read from when the trigger names none.
pub const DEFAULT_USER_COLUMN: &str = "$user_id";

/// The stamping trigger's arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TriggerArgs {
    /// The project's token.
    pub project: String,
    pub distinct_column: String,
    pub canonical_column: String,
    /// The device and user id columns named at attach (a fourth and fifth argument, not
    /// empty); None: the default names, which a table need not have.
    pub device_column: Option<String>,
    pub user_column: Option<String>,
}

impl TriggerArgs {
    /// The arguments, in order: three, or five (the device and user id columns, each empty for
    /// the default). Any other number is a misuse of the trigger.
    pub fn parse(args: &[String]) -> Result<TriggerArgs, IdentityError> {
        let named = |i: usize| args.get(i).filter(|a| !a.is_empty()).cloned();
        match args {
            [project, distinct, canonical] | [project, distinct, canonical, _, _] => Ok(TriggerArgs {
                project: project.clone(),
                distinct_column: distinct.clone(),
                canonical_column: canonical.clone(),
                device_column: named(3),
                user_column: named(4),
            }),
            _ => Err(IdentityError::TriggerMisuse {
                problem: format!(
                    "expects 3 arguments (project, distinct_id column, canonical column), or 5 (and the device and user id columns), got {}",
                    args.len()
                ),
            }),
        }
    }

    /// The arguments as `pg_trigger.tgargs` holds them: each followed by a NUL byte (bytes
    /// that are not UTF-8 replaced).
    pub fn split_catalog(tgargs: &[u8]) -> Vec<String> {
        let mut args: Vec<String> = tgargs
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if tgargs.last() == Some(&0) {
            args.pop();
        }
        args
    }

    /// The device id column rows are read from: the one named at attach, or `$device_id`.
    pub fn device_column_or_default(&self) -> &str {
        self.device_column
            .as_deref()
            .unwrap_or(DEFAULT_DEVICE_COLUMN)
    }

    /// The user id column rows are read from: the one named at attach, or `$user_id`.
    pub fn user_column_or_default(&self) -> &str {
        self.user_column.as_deref().unwrap_or(DEFAULT_USER_COLUMN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn three_arguments() {
        let a = TriggerArgs::parse(&strings(&["p", "distinct_id", "canonical_id"])).unwrap();
        assert_eq!(
            a,
            TriggerArgs {
                project: "p".into(),
                distinct_column: "distinct_id".into(),
                canonical_column: "canonical_id".into(),
                device_column: None,
                user_column: None,
            }
        );
        assert_eq!(a.device_column_or_default(), "$device_id");
        assert_eq!(a.user_column_or_default(), "$user_id");
    }

    #[test]
    fn five_arguments_empty_ones_are_the_defaults() {
        let a = TriggerArgs::parse(&strings(&["p", "d", "c", "anonymous_id", "user_id"])).unwrap();
        assert_eq!(a.device_column.as_deref(), Some("anonymous_id"));
        assert_eq!(a.user_column_or_default(), "user_id");
        let a = TriggerArgs::parse(&strings(&["p", "d", "c", "", "user_id"])).unwrap();
        assert_eq!(a.device_column, None);
        assert_eq!(a.device_column_or_default(), "$device_id");
        assert_eq!(a.user_column.as_deref(), Some("user_id"));
    }

    #[test]
    fn other_counts_are_a_misuse() {
        for n in [0, 1, 2, 4, 6] {
            let args: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
            let e = TriggerArgs::parse(&args).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "identity_merge.stamp_event expects 3 arguments (project, distinct_id column, canonical column), or 5 (and the device and user id columns), got {n}"
                )
            );
        }
    }

    #[test]
    fn catalog_form() {
        assert_eq!(
            TriggerArgs::split_catalog(b"p\0distinct_id\0canonical_id\0"),
            strings(&["p", "distinct_id", "canonical_id"])
        );
        assert_eq!(
            TriggerArgs::split_catalog(b"p\0d\0c\0\0\0"),
            strings(&["p", "d", "c", "", ""])
        );
        assert_eq!(TriggerArgs::split_catalog(b""), strings(&[""]));
        assert_eq!(
            TriggerArgs::split_catalog(b"a\xffb\0"),
            strings(&["a\u{fffd}b"])
        );
    }
}
