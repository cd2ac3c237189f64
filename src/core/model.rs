//! The domain's vocabulary, shared by every other part of the core: the identity operations
//! and the names events and histories give them, the two ID Merge modes and which operations
//! each allows, and the anon id formats. No logic beyond naming; no dependencies.

/// The three Original ID Merge operations, and Simplified ID Merge's link of a device to a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Identify,
    Alias,
    Merge,
    /// Simplified: `$user_id` (a) and `'$device:' || $device_id` (b) on one event.
    Link,
}

/// Every name an operation goes by, once: `true` marks the event names of Mixpanel's API
/// (`$identify` ...); the others are accepted in `mp_backfill` histories.
const OP_NAMES: &[(&str, Op, bool)] = &[
    ("$identify", Op::Identify, true),
    ("identify", Op::Identify, false),
    ("$create_alias", Op::Alias, true),
    ("create_alias", Op::Alias, false),
    ("alias", Op::Alias, false),
    ("$merge", Op::Merge, true),
    ("merge", Op::Merge, false),
    ("link", Op::Link, false),
];

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Identify => "identify",
            Op::Alias => "alias",
            Op::Merge => "merge",
            Op::Link => "link",
        }
    }

    /// Names of the two arguments, in call order, for error messages.
    pub fn fields(self) -> (&'static str, &'static str) {
        match self {
            Op::Identify => ("identified_id", "anon_id"),
            Op::Alias => ("alias", "distinct_id"),
            Op::Merge => ("distinct_id_a", "distinct_id_b"),
            Op::Link => ("$user_id", "$device_id"),
        }
    }

    /// The SQL function that performs the operation (for messages).
    pub fn function_name(self) -> &'static str {
        match self {
            Op::Identify => "mp_identify",
            Op::Alias => "mp_alias",
            Op::Merge | Op::Link => "mp_merge",
        }
    }

    /// The operation an event name stands for (`$identify`, `$create_alias`, `$merge`).
    pub fn from_event_name(name: &str) -> Option<Op> {
        OP_NAMES
            .iter()
            .find(|(n, _, event)| *event && *n == name)
            .map(|(_, op, _)| *op)
    }

    /// The event names of Mixpanel's API that stand for an operation (`$identify` ...): the
    /// rows of an event table `plan_event` reads (mp_backfill_from reads only those).
    pub fn event_names() -> impl Iterator<Item = &'static str> {
        OP_NAMES
            .iter()
            .filter(|(_, _, event)| *event)
            .map(|(n, _, _)| *n)
    }

    /// The operation a history row names (`mp_backfill`): event names and plain names.
    pub fn from_history_name(name: &str) -> Option<Op> {
        OP_NAMES
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, op, _)| *op)
    }
}

/// A project's ID Merge system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// (Original) ID Merge: `$identify`, `$create_alias`, `$merge`.
    Original,
    /// Simplified ID Merge: `$device_id` / `$user_id` on events.
    Simplified,
    /// Mixpanel's pre-ID-Merge ("Legacy ID Management") aliases: `$create_alias` maps a new id
    /// to an original distinct_id, once, not retroactively; nothing else joins ids.
    Legacy,
}

impl Mode {
    /// Every mode, as `identity_merge.projects.mode` spells it (the SQL CHECK is tested equal).
    pub const ALL: [Mode; 3] = [Mode::Original, Mode::Simplified, Mode::Legacy];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Original => "original",
            Mode::Simplified => "simplified",
            Mode::Legacy => "legacy",
        }
    }

    /// The name Mixpanel's docs give the system (for messages).
    pub fn system_name(self) -> &'static str {
        match self {
            Mode::Original => "(Original) ID Merge",
            Mode::Simplified => "Simplified ID Merge",
            Mode::Legacy => "Legacy ID Management (pre-ID-Merge aliases)",
        }
    }

    /// Whether stamps follow later joins (`mp_restamp` rewrites stale ones). Legacy aliases
    /// are not retroactive: a stamp is final when written.
    pub fn retroactive(self) -> bool {
        self != Mode::Legacy
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether the mode has the operation: Original the three identity events, Simplified
    /// only links, Legacy only aliases (the others are ignored, as Mixpanel ignores them).
    pub fn allows(self, op: Op) -> bool {
        match self {
            Mode::Original => op != Op::Link,
            Mode::Simplified => op == Op::Link,
            Mode::Legacy => op == Op::Alias,
        }
    }
}

/// How `$identify` checks its anon id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnonIdFormat {
    /// A UUID v4, optionally prefixed `$device:` (Mixpanel's rule).
    UuidV4,
    /// Any valid id.
    Any,
}

impl AnonIdFormat {
    /// Every format, as the project setting and the GUC spell it (tested equal to the SQL CHECK).
    pub const ALL: [AnonIdFormat; 2] = [AnonIdFormat::UuidV4, AnonIdFormat::Any];

    pub fn as_str(self) -> &'static str {
        match self {
            AnonIdFormat::UuidV4 => "uuid",
            AnonIdFormat::Any => "any",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "uuid" | "uuid_v4" | "uuidv4" => Some(AnonIdFormat::UuidV4),
            "any" => Some(AnonIdFormat::Any),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_modes() {
        assert_eq!(Op::from_event_name("$identify"), Some(Op::Identify));
        assert_eq!(Op::from_event_name("identify"), None);
        assert_eq!(Op::from_history_name("identify"), Some(Op::Identify));
        assert_eq!(Op::from_history_name("create_alias"), Some(Op::Alias));
        assert_eq!(Op::from_history_name("$merge"), Some(Op::Merge));
        assert_eq!(Op::from_event_name("link"), None);
        assert!(Mode::Original.allows(Op::Merge) && !Mode::Original.allows(Op::Link));
        assert!(Mode::Simplified.allows(Op::Link) && !Mode::Simplified.allows(Op::Identify));
        assert!(Mode::Legacy.allows(Op::Alias) && !Mode::Legacy.allows(Op::Merge));
        assert!(!Mode::Legacy.retroactive() && Mode::Original.retroactive());
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.as_str()), Some(m));
        }
        for f in AnonIdFormat::ALL {
            assert_eq!(AnonIdFormat::parse(f.as_str()), Some(f));
        }
    }
}
