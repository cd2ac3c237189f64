//! A per-backend cache of id -> canonical id for the stamping trigger, kept correct by
//! PostgreSQL's relcache invalidation: every statement that writes `identity_merge.identities`
//! fires a statement trigger that invalidates the relcache entry of the signal table
//! `identity_merge.graph_changed` (not of identities itself, whose cached plans would all be
//! replanned in every backend after every merge); the message reaches
//! every backend (this one at its next command, others when they next accept invalidations,
//! which the trigger does at each statement start), and the callback here empties the cache.
//! An aborted transaction's invalidations are replayed locally, so its changes leave too.
//!
//! Entries are filled from probes whose snapshot is taken after invalidations were accepted,
//! so an entry is never older than the invalidations already processed: a merge committed by
//! another session is seen by the next statement (rows stamped meanwhile are the stale ones
//! `mp_restamp` fixes).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use pgrx::pg_sys;
use pgrx::prelude::*;

/// What a lookup learned: `Some(canonical)` for a known id, `None` for an id never seen
/// (which resolves to itself).
type Entry = Option<Box<[u8]>>;

struct IdCache {
    generation: u64,
    project_id: i32,
    entries: HashMap<Box<[u8]>, Entry>,
}

thread_local! {
    /// Projects by token, valid for one generation (projects changes fire the same signal).
    static PROJECTS: RefCell<(u64, HashMap<String, crate::store::Project>)> = RefCell::new((0, HashMap::new()));
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    /// The oid of identity_merge.graph_changed, looked up at each statement start.
    static WATCHED: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    static CACHE: RefCell<Option<IdCache>> = const { RefCell::new(None) };
}

/// Invalidation callback: must not error or allocate through PostgreSQL, and may run while the
/// cache is borrowed, so it only bumps a counter the cache checks.
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // InvalidOid means "every relation" (e.g. after the invalidation queue overflowed).
    if relid == pg_sys::InvalidOid || relid == WATCHED.with(|w| w.get()) {
        GENERATION.with(|g| g.set(g.get() + 1));
    }
}

fn ensure_registered() {
    REGISTERED.with(|r| {
        if !r.get() {
            unsafe {
                pg_sys::CacheRegisterRelcacheCallback(
                    Some(on_relcache_invalidation),
                    pg_sys::Datum::from(0),
                )
            };
            r.set(true);
        }
    });
}

/// Maximum entries before the cache starts over (identity_merge.stamp_cache_entries).
fn capacity() -> usize {
    crate::guc::STAMP_CACHE_ENTRIES.get().max(0) as usize
}

/// Processes pending invalidations (call at the start of each statement).
pub fn accept_invalidations() {
    ensure_registered();
    unsafe {
        pg_sys::AcceptInvalidationMessages();
        let nsp = pg_sys::get_namespace_oid(c"identity_merge".as_ptr(), true);
        let oid = if nsp == pg_sys::InvalidOid {
            pg_sys::InvalidOid
        } else {
            pg_sys::get_relname_relid(c"graph_changed".as_ptr(), nsp)
        };
        if oid != WATCHED.with(|w| w.get()) {
            // The table was recreated (or first use): nothing cached can be trusted.
            WATCHED.with(|w| w.set(oid));
            GENERATION.with(|g| g.set(g.get() + 1));
        }
    }
}

/// Looks `id` up; `None` when not cached.
pub fn get(project_id: i32, id: &[u8], f: impl FnOnce(&Entry)) -> bool {
    let generation = GENERATION.with(|g| g.get());
    CACHE.with(|c| {
        let c = c.borrow();
        match c.as_ref() {
            Some(cache) if cache.generation == generation && cache.project_id == project_id => {
                match cache.entries.get(id) {
                    Some(e) => {
                        f(e);
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    })
}

pub fn put(project_id: i32, id: &[u8], entry: Entry) {
    let cap = capacity();
    if cap == 0 {
        return;
    }
    let generation = GENERATION.with(|g| g.get());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let stale = match c.as_ref() {
            Some(cache) => {
                cache.generation != generation
                    || cache.project_id != project_id
                    || cache.entries.len() >= cap
            }
            None => true,
        };
        if stale {
            *c = Some(IdCache {
                generation,
                project_id,
                entries: HashMap::new(),
            });
        }
        c.as_mut().unwrap().entries.insert(id.into(), entry);
    })
}

/// A project from the cache, or loaded by `load` and remembered until the next change signal.
/// Invalidations are accepted first, so a project created or changed by a committed transaction
/// is seen.
pub fn project(
    token: &str,
    load: impl FnOnce(&str) -> Result<crate::store::Project, crate::error::IdentityError>,
) -> Result<crate::store::Project, crate::error::IdentityError> {
    accept_invalidations();
    let generation = GENERATION.with(|g| g.get());
    let hit = PROJECTS.with(|p| {
        let p = p.borrow();
        (p.0 == generation)
            .then(|| p.1.get(token).cloned())
            .flatten()
    });
    if let Some(project) = hit {
        return Ok(project);
    }
    let project = load(token)?;
    PROJECTS.with(|p| {
        let mut p = p.borrow_mut();
        if p.0 != generation {
            *p = (generation, HashMap::new());
        }
        p.1.insert(token.to_string(), project.clone());
    });
    Ok(project)
}

/// Only the id of a project (no clone of its settings): the `mp_resolve` path.
pub fn project_id(
    token: &str,
    load: impl FnOnce(&str) -> Result<crate::store::Project, crate::error::IdentityError>,
) -> Result<i32, crate::error::IdentityError> {
    accept_invalidations();
    let generation = GENERATION.with(|g| g.get());
    let hit = PROJECTS.with(|p| {
        let p = p.borrow();
        (p.0 == generation)
            .then(|| p.1.get(token).map(|project| project.id))
            .flatten()
    });
    match hit {
        Some(id) => Ok(id),
        None => project(token, load).map(|p| p.id),
    }
}

/// Forgets everything (after this backend changed the identity graph).
pub fn clear() {
    GENERATION.with(|g| g.set(g.get() + 1));
    CACHE.with(|c| *c.borrow_mut() = None);
}

#[pg_schema]
mod identity_merge {
    use pgrx::prelude::*;

    /// Statement trigger on identity_merge.identities and .projects: tells every backend's
    /// caches that the identity graph or a project changed (a relcache invalidation of
    /// identity_merge.graph_changed, sent when the transaction commits and seen by this backend
    /// at its next command).
    #[pg_trigger]
    fn notify_caches<'a>(
        _trigger: &'a pgrx::PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
        unsafe {
            use pgrx::pg_sys;
            let nsp = pg_sys::get_namespace_oid(c"identity_merge".as_ptr(), false);
            let signal = pg_sys::get_relname_relid(c"graph_changed".as_ptr(), nsp);
            if signal != pg_sys::InvalidOid {
                pg_sys::CacheInvalidateRelcacheByRelid(signal);
            }
        }
        Ok(None)
    }
}
