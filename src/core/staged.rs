//! A staged batch moved into an attached table (`mp_ingest`), planned from the two tables'
//! column facts: whether the staging table may go into the target at all, which staging rows
//! can mean something for identity and how they are read (phase one: applied in the rows'
//! order, as the stamping trigger would apply them), and the one set-based INSERT that moves
//! every row with its final stamp (phase two). Plain Rust; engine/staged.rs runs the plan.
//!
//! The rows are read exactly as the trigger would find them in the target: a column the stamp
//! or an identity event is computed from that the staging table lacks is NULL in the target,
//! unless the target gives it a default, which is refused (the INSERT would write another
//! value than the one read).

use crate::core::attachment::TriggerArgs;
use crate::core::columns::{ColumnKind, ColumnType};
use crate::core::error::StagingProblem;
use crate::core::Mode;

/// A live column of one of the two tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The type's oid (compared) and name (for messages).
    pub type_id: u32,
    pub type_name: String,
    /// The type as the trigger's column rule sees it (core::columns).
    pub column_type: ColumnType,
    /// A generated column of the target: computed by the INSERT, never written.
    pub generated: bool,
    /// The target gives it a value when the INSERT names none.
    pub has_default: bool,
}

/// The two tables: their names as SQL (qualified and quoted) and their columns.
pub struct Tables<'a> {
    pub staging_sql: &'a str,
    pub target_sql: &'a str,
    pub staging: &'a [Column],
    pub target: &'a [Column],
}

/// Phase one's read: `(event, properties, device_id, user_id, distinct_id, row)`, all text
/// (`row` is the staging row's ctid), in the staging table's physical order: the order in which
/// `INSERT INTO target SELECT * FROM staging` hands the trigger its rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub sql: String,
    /// `$1` is the identity event names (`Op::event_names`): only those rows are read (an
    /// Original or Legacy project). A Simplified project's read takes every row.
    pub takes_event_names: bool,
}

/// What `mp_ingest` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedPlan {
    /// None: no staging row can mean anything for identity (the columns are not there).
    pub read: Option<Read>,
    /// The INSERT without per-row answers of phase one (see `insert_sql`).
    insert_plain: String,
    /// With them, two text[] parameters. Simplified: `$1` staging rows' ctids, `$2` the
    /// distinct_ids phase one filled in for them. Legacy: `$1` the aliases the batch created,
    /// `$2` the ctid of the row whose event created each. None in Original projects.
    insert_with_rows: Option<String>,
}

impl StagedPlan {
    /// The INSERT of every staging row into the target, each with its stamp: the canonical id
    /// of its distinct_id as `identity_merge.identities` holds it after phase one (the id
    /// itself when unknown, NULL when the distinct_id is NULL), the answer the trigger gives
    /// after `mp_restamp`. With `rows` (the two arrays):
    /// - Simplified: a row whose distinct_id is NULL takes the one phase one worked out for it
    ///   (its user id, else `$device:` and its device id), as the trigger fills it in;
    /// - Legacy (aliases are not retroactive, stamps final): a row of an alias that comes
    ///   before the event creating the alias keeps its own id as its stamp, as the trigger
    ///   stamped it then (in a legacy project only a new alias's answer ever changes).
    pub fn insert_sql(&self, rows: bool) -> &str {
        match (&self.insert_with_rows, rows) {
            (Some(with_rows), true) => with_rows,
            _ => &self.insert_plain,
        }
    }
}

/// A column name as a SQL identifier (always quoted: any name is safe).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Plans the move of `t.staging` into `t.target`, attached to a project of `mode` with the
/// trigger arguments `args`, in project `project_id`.
pub fn plan(
    args: &TriggerArgs,
    mode: Mode,
    project_id: i32,
    t: &Tables<'_>,
) -> Result<StagedPlan, StagingProblem> {
    let target = |name: &str| t.target.iter().find(|c| c.name == name);
    let staged = |name: &str| t.staging.iter().find(|c| c.name == name);
    for column in t.staging {
        let Some(in_target) = target(&column.name) else {
            return Err(StagingProblem::UnknownColumn {
                column: column.name.clone(),
            });
        };
        if in_target.type_id != column.type_id {
            return Err(StagingProblem::TypeMismatch {
                column: column.name.clone(),
                staging_type: column.type_name.clone(),
                target_type: in_target.type_name.clone(),
            });
        }
    }
    // The columns the trigger reads in this mode (when the target has them): the event name's
    // is the target's (core::columns::event_column), and the staging table's of that name.
    let event = crate::core::columns::event_column(|n| target(n).is_some()).unwrap_or("event");
    let mut read_columns: Vec<&str> = vec![args.distinct_column.as_str(), event, "properties"];
    if mode == Mode::Simplified {
        read_columns.push(args.device_column_or_default());
        read_columns.push(args.user_column_or_default());
    }
    // The columns read (and the stamp written) hold what the trigger accepts: the target may
    // have been retyped since it was attached, and a value of another type is never read or
    // cast here (a cast would run that type's code with the caller's rights).
    let kinds = read_columns
        .iter()
        .map(|n| (*n, ColumnKind::Id))
        .filter(|(n, _)| *n != "properties")
        .chain([
            ("properties", ColumnKind::Properties),
            (args.canonical_column.as_str(), ColumnKind::Id),
        ]);
    for (name, kind) in kinds {
        if let Some(c) = target(name) {
            if !kind.accepts(c.column_type) {
                return Err(StagingProblem::WrongType {
                    column: name.to_string(),
                    found: c.type_name.clone(),
                    expected: kind.expected(),
                });
            }
        }
    }
    for name in &read_columns {
        if let Some(c) = target(name) {
            if staged(name).is_none() && c.has_default {
                return Err(StagingProblem::DefaultedColumn {
                    column: name.to_string(),
                });
            }
        }
    }
    // A column of the target as the trigger would read it: the staging value, or NULL.
    let value = |name: &str| -> String {
        match (target(name), staged(name)) {
            (Some(_), Some(_)) => format!("(s.{})::text", ident(name)),
            _ => "NULL::text".into(),
        }
    };
    let distinct = value(&args.distinct_column);
    let columns = format!(
        "{}, {}, {}, {}, {}, s.ctid::text",
        value(event),
        value("properties"),
        match mode {
            Mode::Simplified => value(args.device_column_or_default()),
            _ => "NULL::text".into(),
        },
        match mode {
            Mode::Simplified => value(args.user_column_or_default()),
            _ => "NULL::text".into(),
        },
        distinct
    );
    let from = format!("FROM ONLY {} s", t.staging_sql);
    let read = match mode {
        Mode::Simplified => Some(Read {
            sql: format!("SELECT {columns} {from} ORDER BY s.ctid"),
            takes_event_names: false,
        }),
        // The trigger applies identity events only in a table with both columns.
        Mode::Original | Mode::Legacy => (staged(event).is_some()
            && staged("properties").is_some()
            && target(event).is_some()
            && target("properties").is_some())
        .then(|| Read {
            sql: format!(
                "SELECT {columns} {from} WHERE (s.{})::text COLLATE \"C\" OPERATOR(pg_catalog.=) ANY ($1) ORDER BY s.ctid",
                ident(event)
            ),
            takes_event_names: true,
        }),
    };
    // Every staging column the target writes, but the stamp (written here) and generated ones.
    let moved: Vec<&Column> = t
        .staging
        .iter()
        .filter(|c| c.name != args.canonical_column)
        .filter(|c| !target(&c.name).is_some_and(|tc| tc.generated))
        .collect();
    // with_fills: Simplified's filled-in distinct_ids; late_aliases: Legacy's aliases.
    let insert = |d: &str, with_fills: bool, late_aliases: bool| -> String {
        let mut names: Vec<String> = Vec::new();
        let mut values: Vec<String> = Vec::new();
        for c in &moved {
            names.push(ident(&c.name));
            if with_fills && c.name == args.distinct_column {
                values.push(d.to_string());
            } else {
                values.push(format!("s.{}", ident(&c.name)));
            }
        }
        if with_fills && staged(&args.distinct_column).is_none() {
            names.push(ident(&args.distinct_column));
            values.push(d.to_string());
        }
        names.push(ident(&args.canonical_column));
        if late_aliases {
            values.push(format!(
                "CASE WHEN s.ctid OPERATOR(pg_catalog.<) l.event_row THEN {d} ELSE coalesce((i.canonical_id)::text, {d}) END"
            ));
        } else {
            values.push(format!("coalesce((i.canonical_id)::text, {d})"));
        }
        let rows_join = if with_fills {
            " LEFT JOIN ROWS FROM (pg_catalog.unnest(($1)::text[]::pg_catalog.tid[]), pg_catalog.unnest(($2)::text[])) f(row_id, distinct_id) ON f.row_id OPERATOR(pg_catalog.=) s.ctid".to_string()
        } else if late_aliases {
            format!(
                " LEFT JOIN ROWS FROM (pg_catalog.unnest(($1)::text[]), pg_catalog.unnest(($2)::text[]::pg_catalog.tid[])) l(alias, event_row) \
                 ON l.alias OPERATOR(pg_catalog.=) (({d}) COLLATE \"C\")"
            )
        } else {
            String::new()
        };
        format!(
            "INSERT INTO {} ({}) SELECT {} {from}{rows_join} LEFT JOIN identity_merge.identities i \
             ON i.project_id OPERATOR(pg_catalog.=) {project_id} AND i.distinct_id OPERATOR(pg_catalog.=) (({d}) COLLATE \"C\")",
            t.target_sql,
            names.join(", "),
            values.join(", "),
        )
    };
    let filled_distinct = if distinct == "NULL::text" {
        "f.distinct_id".to_string()
    } else {
        format!("coalesce({distinct}, f.distinct_id)")
    };
    Ok(StagedPlan {
        read,
        insert_plain: insert(&distinct, false, false),
        insert_with_rows: match mode {
            Mode::Simplified => Some(insert(&filled_distinct, true, false)),
            Mode::Legacy => Some(insert(&distinct, false, true)),
            Mode::Original => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, type_id: u32) -> Column {
        Column {
            name: name.into(),
            type_id,
            type_name: format!("type{type_id}"),
            column_type: match type_id {
                TEXT => ColumnType::Text,
                JSONB => ColumnType::Jsonb,
                _ => ColumnType::Other,
            },
            generated: false,
            has_default: false,
        }
    }

    const TEXT: u32 = 25;
    const JSONB: u32 = 3802;
    const INT: u32 = 23;

    fn args(device: Option<&str>) -> TriggerArgs {
        TriggerArgs {
            project: "p".into(),
            distinct_column: "distinct_id".into(),
            canonical_column: "canonical_id".into(),
            device_column: device.map(str::to_string),
            user_column: None,
        }
    }

    fn events() -> Vec<Column> {
        vec![
            col("n", INT),
            col("distinct_id", TEXT),
            col("event", TEXT),
            col("properties", JSONB),
            col("canonical_id", TEXT),
        ]
    }

    fn tables<'a>(staging: &'a [Column], target: &'a [Column]) -> Tables<'a> {
        Tables {
            staging_sql: "public.staging",
            target_sql: "public.events",
            staging,
            target,
        }
    }

    #[test]
    fn original_reads_identity_rows_and_inserts_every_column_with_the_stamp() {
        let target = events();
        let staging: Vec<Column> = target[..4].to_vec();
        let p = plan(&args(None), Mode::Original, 7, &tables(&staging, &target)).unwrap();
        let read = p.read.as_ref().unwrap();
        assert!(read.takes_event_names);
        assert_eq!(
            read.sql,
            "SELECT (s.\"event\")::text, (s.\"properties\")::text, NULL::text, NULL::text, (s.\"distinct_id\")::text, s.ctid::text \
             FROM ONLY public.staging s WHERE (s.\"event\")::text COLLATE \"C\" OPERATOR(pg_catalog.=) ANY ($1) ORDER BY s.ctid"
        );
        assert_eq!(
            p.insert_sql(false),
            "INSERT INTO public.events (\"n\", \"distinct_id\", \"event\", \"properties\", \"canonical_id\") \
             SELECT s.\"n\", s.\"distinct_id\", s.\"event\", s.\"properties\", coalesce((i.canonical_id)::text, (s.\"distinct_id\")::text) \
             FROM ONLY public.staging s LEFT JOIN identity_merge.identities i ON i.project_id OPERATOR(pg_catalog.=) 7 \
             AND i.distinct_id OPERATOR(pg_catalog.=) (((s.\"distinct_id\")::text) COLLATE \"C\")"
        );
        // Not Simplified: no filled-in distinct_ids.
        assert_eq!(p.insert_sql(true), p.insert_sql(false));
    }

    #[test]
    fn a_mixpanel_export_shaped_target_reads_event_name() {
        // Mixpanel's data-pipeline export names the column event_name (core::columns).
        let target: Vec<Column> = events()
            .into_iter()
            .map(|c| {
                if c.name == "event" {
                    col("event_name", TEXT)
                } else {
                    c
                }
            })
            .collect();
        let staging: Vec<Column> = target[..4].to_vec();
        let p = plan(&args(None), Mode::Original, 7, &tables(&staging, &target)).unwrap();
        let read = p.read.as_ref().unwrap();
        assert!(read
            .sql
            .starts_with("SELECT (s.\"event_name\")::text, (s.\"properties\")::text"));
        assert!(read.sql.contains(
            "WHERE (s.\"event_name\")::text COLLATE \"C\" OPERATOR(pg_catalog.=) ANY ($1)"
        ));
        // A staging table without the target's event column: no identity rows to read.
        let no_event: Vec<Column> = vec![
            col("n", INT),
            col("distinct_id", TEXT),
            col("properties", JSONB),
        ];
        let p = plan(&args(None), Mode::Original, 7, &tables(&no_event, &target)).unwrap();
        assert!(p.read.is_none());
    }

    #[test]
    fn a_staged_stamp_is_replaced_and_generated_columns_are_left_to_the_target() {
        let mut target = events();
        target.push(Column {
            generated: true,
            ..col("day", INT)
        });
        let staging = target.clone();
        let p = plan(&args(None), Mode::Original, 1, &tables(&staging, &target)).unwrap();
        let sql = p.insert_sql(false);
        assert!(sql.starts_with(
            "INSERT INTO public.events (\"n\", \"distinct_id\", \"event\", \"properties\", \"canonical_id\") SELECT"
        ));
        assert!(!sql.contains("s.\"canonical_id\"") && !sql.contains("\"day\""));
    }

    #[test]
    fn without_event_columns_there_is_nothing_to_read() {
        let target = events();
        let staging = vec![col("n", INT), col("distinct_id", TEXT)];
        let p = plan(&args(None), Mode::Original, 1, &tables(&staging, &target)).unwrap();
        assert_eq!(p.read, None);
        let sql = p.insert_sql(false);
        assert!(sql.starts_with("INSERT INTO public.events (\"n\", \"distinct_id\", \"canonical_id\") SELECT s.\"n\", s.\"distinct_id\","));
    }

    #[test]
    fn simplified_reads_every_row_with_its_device_and_user_and_can_fill_the_distinct_id() {
        let mut target = events();
        target.push(col("anon", TEXT));
        target.push(col("$user_id", TEXT));
        let staging = target.clone();
        let p = plan(
            &args(Some("anon")),
            Mode::Simplified,
            3,
            &tables(&staging, &target),
        )
        .unwrap();
        let read = p.read.clone().unwrap();
        assert!(!read.takes_event_names);
        assert_eq!(
            read.sql,
            "SELECT (s.\"event\")::text, (s.\"properties\")::text, (s.\"anon\")::text, (s.\"$user_id\")::text, (s.\"distinct_id\")::text, s.ctid::text \
             FROM ONLY public.staging s ORDER BY s.ctid"
        );
        let filled = p.insert_sql(true).to_string();
        assert!(filled.contains(
            "SELECT s.\"n\", coalesce((s.\"distinct_id\")::text, f.distinct_id), s.\"event\""
        ));
        assert!(filled.contains("LEFT JOIN ROWS FROM (pg_catalog.unnest(($1)::text[]::pg_catalog.tid[]), pg_catalog.unnest(($2)::text[])) f(row_id, distinct_id) ON f.row_id OPERATOR(pg_catalog.=) s.ctid"));
        assert!(
            filled.contains("(coalesce((s.\"distinct_id\")::text, f.distinct_id)) COLLATE \"C\"")
        );
    }

    #[test]
    fn simplified_staging_without_a_distinct_id_column_gets_it_filled() {
        let mut target = events();
        target.push(col("$device_id", TEXT));
        let staging = vec![col("n", INT), col("$device_id", TEXT)];
        let p = plan(&args(None), Mode::Simplified, 3, &tables(&staging, &target)).unwrap();
        let filled = p.insert_sql(true);
        assert!(filled.starts_with(
            "INSERT INTO public.events (\"n\", \"$device_id\", \"distinct_id\", \"canonical_id\") SELECT s.\"n\", s.\"$device_id\", f.distinct_id, coalesce((i.canonical_id)::text, f.distinct_id)"
        ));
    }

    #[test]
    fn legacy_rows_of_an_alias_before_its_event_keep_their_own_id() {
        let target = events();
        let p = plan(&args(None), Mode::Legacy, 2, &tables(&target, &target)).unwrap();
        let sql = p.insert_sql(true);
        assert!(sql.contains(
            "CASE WHEN s.ctid OPERATOR(pg_catalog.<) l.event_row THEN (s.\"distinct_id\")::text ELSE coalesce((i.canonical_id)::text, (s.\"distinct_id\")::text) END"
        ));
        assert!(sql.contains("LEFT JOIN ROWS FROM (pg_catalog.unnest(($1)::text[]), pg_catalog.unnest(($2)::text[]::pg_catalog.tid[])) l(alias, event_row) ON l.alias OPERATOR(pg_catalog.=) (((s.\"distinct_id\")::text) COLLATE \"C\")"));
        assert!(!p.insert_sql(false).contains("unnest"));
    }

    #[test]
    fn refusals() {
        let target = events();
        let extra = vec![col("n", INT), col("nope", TEXT)];
        assert_eq!(
            plan(&args(None), Mode::Original, 1, &tables(&extra, &target)),
            Err(StagingProblem::UnknownColumn {
                column: "nope".into()
            })
        );
        let retyped = vec![col("n", TEXT)];
        assert_eq!(
            plan(&args(None), Mode::Original, 1, &tables(&retyped, &target)),
            Err(StagingProblem::TypeMismatch {
                column: "n".into(),
                staging_type: "type25".into(),
                target_type: "type23".into()
            })
        );
        let mut defaulted = events();
        defaulted[2].has_default = true;
        let staging = vec![
            col("n", INT),
            col("distinct_id", TEXT),
            col("properties", JSONB),
        ];
        assert_eq!(
            plan(
                &args(None),
                Mode::Original,
                1,
                &tables(&staging, &defaulted)
            ),
            Err(StagingProblem::DefaultedColumn {
                column: "event".into()
            })
        );
        // A target retyped since attach: its read columns are checked, never cast.
        let mut retyped = events();
        retyped[3] = col("properties", INT);
        assert_eq!(
            plan(&args(None), Mode::Original, 1, &tables(&[], &retyped)),
            Err(StagingProblem::WrongType {
                column: "properties".into(),
                found: "type23".into(),
                expected: "jsonb, json or text"
            })
        );
        let mut retyped = events();
        retyped[4] = col("canonical_id", INT);
        assert!(matches!(
            plan(&args(None), Mode::Original, 1, &tables(&[], &retyped)),
            Err(StagingProblem::WrongType { .. })
        ));
        // A defaulted column the trigger does not read is the target's business.
        let mut other = events();
        other[0].has_default = true;
        let staging = vec![col("distinct_id", TEXT)];
        assert!(plan(&args(None), Mode::Original, 1, &tables(&staging, &other)).is_ok());
    }

    #[test]
    fn names_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(ident("$device_id"), "\"$device_id\"");
    }
}
