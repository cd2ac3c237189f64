//! The column types the stamping trigger reads and writes, the one rule: ids (the distinct_id,
//! canonical, event name (`event_column`), device and user columns) are text or varchar, never
//! a domain (the trigger writes stamps without running a domain's checks, and reads ids in
//! place); `properties` is jsonb, or JSON held as json, text or varchar. The trigger applies it to a table's descriptor
//! (api/stamp.rs); the SQL that checks tables (`_column_problems`, `mp_attach`, `mp_backfill_from`)
//! asks it through `identity_merge._column_type_ok(kind, type)` (api/attach.rs).

/// What a column holds for the trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    /// An id: the distinct_id, the canonical (stamp), `event`, the device and user columns.
    Id,
    /// The event's properties (JSON).
    Properties,
}

/// A column's type as the rule sees it (the glue maps PostgreSQL's type oids to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Varchar,
    Json,
    Jsonb,
    /// Anything else, domains over the types above included.
    Other,
}

/// How the trigger reads a properties column it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PropertiesRead {
    /// jsonb, read as it is stored.
    Jsonb,
    /// JSON text (json, text, varchar), parsed.
    Text,
}

impl ColumnKind {
    /// The kind by its SQL name (`'id'`, `'properties'`).
    pub fn parse(name: &str) -> Option<ColumnKind> {
        match name {
            "id" => Some(ColumnKind::Id),
            "properties" => Some(ColumnKind::Properties),
            _ => None,
        }
    }

    /// What a column of this kind must be, for messages.
    pub fn expected(self) -> &'static str {
        match self {
            ColumnKind::Id => "text or varchar",
            ColumnKind::Properties => "jsonb, json or text",
        }
    }

    /// Whether the trigger can read (or write) a column of this kind and type.
    pub fn accepts(self, t: ColumnType) -> bool {
        match self {
            ColumnKind::Id => matches!(t, ColumnType::Text | ColumnType::Varchar),
            ColumnKind::Properties => properties_read(t).is_some(),
        }
    }
}

/// How a properties column of type `t` is read, or None when it cannot be.
pub fn properties_read(t: ColumnType) -> Option<PropertiesRead> {
    match t {
        ColumnType::Jsonb => Some(PropertiesRead::Jsonb),
        ColumnType::Json | ColumnType::Text | ColumnType::Varchar => Some(PropertiesRead::Text),
        ColumnType::Other => None,
    }
}

/// The names the event name's column may have, in order of preference: `event` (the tables of
/// this project's docs, Segment's), or `event_name` in a table that has no `event` (Mixpanel's
/// data-pipeline export, which `mp_import_mixpanel` attaches as it is).
pub const EVENT_COLUMNS: [&str; 2] = ["event", "event_name"];

/// The column the stamping trigger reads the event name from, in a table whose columns `has`
/// tells: the first of `EVENT_COLUMNS` it has; None when it has neither (no identity events).
pub fn event_column(has: impl Fn(&str) -> bool) -> Option<&'static str> {
    EVENT_COLUMNS.into_iter().find(|name| has(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_name_is_read_from_event_or_else_event_name() {
        let table = |cols: &'static [&'static str]| move |name: &str| cols.contains(&name);
        assert_eq!(
            event_column(table(&["distinct_id", "event", "event_name"])),
            Some("event")
        );
        assert_eq!(
            event_column(table(&["event_name", "distinct_id"])),
            Some("event_name")
        );
        assert_eq!(event_column(table(&["event"])), Some("event"));
        assert_eq!(event_column(table(&["name", "type", "event_type"])), None);
    }

    #[test]
    fn ids_are_text_properties_are_json() {
        use ColumnType::*;
        let ids: Vec<_> = [Text, Varchar, Json, Jsonb, Other]
            .into_iter()
            .filter(|t| ColumnKind::Id.accepts(*t))
            .collect();
        assert_eq!(ids, vec![Text, Varchar]);
        let props: Vec<_> = [Text, Varchar, Json, Jsonb, Other]
            .into_iter()
            .filter(|t| ColumnKind::Properties.accepts(*t))
            .collect();
        assert_eq!(props, vec![Text, Varchar, Json, Jsonb]);
        assert_eq!(properties_read(Jsonb), Some(PropertiesRead::Jsonb));
        assert_eq!(properties_read(Json), Some(PropertiesRead::Text));
        assert_eq!(ColumnKind::parse("id"), Some(ColumnKind::Id));
        assert_eq!(
            ColumnKind::parse("properties"),
            Some(ColumnKind::Properties)
        );
        assert_eq!(ColumnKind::parse("stamp"), None);
    }
}
