//! Where the identity state's rows are on this node (docs/scaling.md). Once `mp_distribute`
//! made the identity tables Citus reference tables (a copy on every node), the tables keep their
//! names on every node but become empty shells; the rows are in each node's placement,
//! `identities_<shardid>`. The trigger's direct index probes (store/probe.rs) must open the
//! placement: `identities()` says which relations to open, worked out once per relations epoch
//! (Citus's metadata changes invalidate the table; the epoch is the stamp cache's,
//! sync/cache.rs). `shard_of` tells the trigger that its table is a shard.
//!
//! The cluster-wide write lock every identity writer takes on Citus is in locks.rs.

use std::cell::RefCell;

use pgrx::prelude::*;

use crate::core::error::IdentityError;
use crate::pg::OrBug;

/// The relations the lookups open: the table and its primary key index, on this node.
#[derive(Clone, Copy, Debug)]
pub struct Identities {
    pub heap: pg_sys::Oid,
    pub index: pg_sys::Oid,
    /// Whether the identity state is distributed (the relations are a placement).
    pub distributed: bool,
}

thread_local! {
    /// (relations epoch, identities shell oid, what was found).
    static LAYOUT: RefCell<Option<(u64, pg_sys::Oid, Identities)>> = const { RefCell::new(None) };
}

fn catalog_relation(name: &std::ffi::CStr) -> bool {
    // SAFETY: a syscache lookup of a name in pg_catalog; InvalidOid when absent.
    unsafe {
        pg_sys::get_relname_relid(
            name.as_ptr(),
            pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE),
        ) != pg_sys::InvalidOid
    }
}

/// The shard id of a distributed (or reference) table's single or first shard, if Citus knows it.
fn first_shard(table: pg_sys::Oid) -> Option<i64> {
    if !catalog_relation(c"pg_dist_shard") {
        return None;
    }
    Spi::get_one_with_args::<i64>(
        "SELECT pg_catalog.min(shardid) FROM pg_catalog.pg_dist_shard WHERE logicalrelid OPERATOR(pg_catalog.=) $1",
        &[table.into()],
    )
    .or_bug("reading pg_dist_shard")
}

/// The shard id of the replicated table whose shell (the table as named in identity_merge) is
/// `shell`; None on one server. Asked of the catalog once per relations epoch (Citus's metadata
/// changes invalidate the table, and move the epoch).
fn shard_of_shell(shell: pg_sys::Oid) -> Option<i64> {
    crate::sync::cache::ensure_registered();
    let epoch = crate::sync::cache::epochs().1;
    let known = SHARDS.with(|s| {
        s.borrow()
            .as_ref()
            .filter(|(e, _)| *e == epoch)
            .and_then(|(_, shards)| shards.get(&shell).copied())
    });
    if let Some(shard) = known {
        return shard;
    }
    let shard = first_shard(shell);
    SHARDS.with(|s| {
        let mut s = s.borrow_mut();
        if s.as_ref().is_none_or(|(e, _)| *e != epoch) {
            *s = Some((epoch, std::collections::HashMap::new()));
        }
        s.as_mut().expect("set above").1.insert(shell, shard);
    });
    shard
}

thread_local! {
    /// (relations epoch, replicated table's shell oid -> its shard id, None on one server).
    static SHARDS: RefCell<Option<(u64, std::collections::HashMap<pg_sys::Oid, Option<i64>>)>> =
        const { RefCell::new(None) };
}

/// Which relations hold `identity_merge.identities` on this node.
pub fn identities() -> Result<Identities, IdentityError> {
    crate::sync::cache::ensure_registered();
    let shell = crate::pg::required_relation(c"identities")?;
    let epoch = crate::sync::cache::epochs().1;
    if let Some(found) = LAYOUT.with(|l| {
        l.borrow()
            .as_ref()
            .filter(|(e, s, _)| *e == epoch && *s == shell)
            .map(|(_, _, found)| *found)
    }) {
        return Ok(found);
    }
    let found = match shard_of_shell(shell) {
        None => Identities {
            heap: shell,
            index: crate::pg::required_relation(c"identities_pkey")?,
            distributed: false,
        },
        Some(shard) => {
            let placement = |name: String| {
                let name = std::ffi::CString::new(name).or_bug("naming a placement");
                crate::pg::relation_oid(&name).ok_or_else(|| IdentityError::MissingObject {
                    what: format!(
                        "relation identity_merge.{} (this node's copy of the replicated identities; run SELECT mp_distribute() on the coordinator after adding a node)",
                        name.to_string_lossy()
                    ),
                })
            };
            Identities {
                heap: placement(format!("identities_{shard}"))?,
                index: placement(format!("identities_pkey_{shard}"))?,
                distributed: true,
            }
        }
    };
    LAYOUT.with(|l| *l.borrow_mut() = Some((epoch, shell, found)));
    Ok(found)
}

/// On Citus, the qualified name of this node's copy of the replicated table `table` (in schema
/// identity_merge), to read it with a plain query: from inside a query Citus sent to a shard
/// (`SELECT mp_resolve(distinct_id) FROM events` runs on the workers), Citus refuses any query of
/// a distributed or reference table, but this node's placement is an ordinary table. None on one
/// server.
pub fn placement(table: &str) -> Result<Option<String>, IdentityError> {
    if !distributed() {
        return Ok(None);
    }
    let name = std::ffi::CString::new(table).or_bug("naming a table");
    let shell = crate::pg::required_relation(&name)?;
    let shard = shard_of_shell(shell).ok_or_else(|| IdentityError::MissingObject {
        what: format!("the shard of replicated table identity_merge.{table}"),
    })?;
    Ok(Some(format!("identity_merge.{table}_{shard}")))
}

/// Whether the identity state is distributed (false when Citus is absent).
pub fn distributed() -> bool {
    identities().map(|i| i.distributed).unwrap_or(false)
}

/// When `table` (named `name`) is a shard of a distributed table: that table's qualified name.
/// Asked once per trigger set-up (api/stamp.rs caches it with the rest of the table's facts).
pub fn shard_of(table: pg_sys::Oid, name: &str) -> Option<String> {
    if !distributed() {
        return None;
    }
    let (_, suffix) = name.rsplit_once('_')?;
    let shard: i64 = suffix.parse().ok()?;
    let logical = Spi::get_one_with_args::<String>(
        "SELECT s.logicalrelid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_dist_shard s \
          WHERE s.shardid OPERATOR(pg_catalog.=) $1 \
            AND s.logicalrelid OPERATOR(pg_catalog.<>) $2 \
            AND pg_catalog.format('%s_%s', (SELECT c.relname FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) s.logicalrelid), s.shardid) \
                OPERATOR(pg_catalog.=) $3",
        &[shard.into(), table.into(), name.into()],
    )
    .or_bug("reading pg_dist_shard")?;
    Some(logical)
}
