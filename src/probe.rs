//! Direct index probes of `identity_merge.identities` for the stamping trigger: no SPI, no
//! executor, no planning per row. One probe (relations, index scan, slot) is opened per
//! transaction under the top transaction's resource owner, so it outlives each statement
//! and is closed just before commit; its snapshot is the current statement's, replaced when
//! the statement changes or when the trigger itself changed the identity graph.

use std::cell::RefCell;

use pgrx::pg_sys;
use pgrx::prelude::*;

pub struct Probe {
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    scan: pg_sys::IndexScanDesc,
    slot: *mut pg_sys::TupleTableSlot,
    snapshot: pg_sys::Snapshot,
    collation: pg_sys::Oid,
    canonical_attno: i32,
    distinct_attno: i32,
    /// Visibility map page pinned by index-only lookups.
    vmbuffer: pg_sys::Buffer,
    lxid: u32,
    statement: (u32, u32),
    /// (cache generation, own writes) when the snapshot was taken: the stamping probe takes a
    /// new one when either moved, so that an answer is never older than the invalidations
    /// this backend accepted nor than its own joins (cache::put keeps only such answers).
    seen: (u64, u64),
    busy: bool,
}

fn now_seen() -> (u64, u64) {
    (crate::cache::generation(), crate::cache::own_writes())
}

/// Who is asking: the stamping trigger (snapshot as fresh as the caches, see cache.rs) or
/// `mp_resolve` (the caller's own snapshot, as a STABLE function must see).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Stamp,
    Resolve,
}

thread_local! {
    static PROBE: RefCell<Option<Probe>> = const { RefCell::new(None) };
    static RESOLVE_PROBE: RefCell<Option<Probe>> = const { RefCell::new(None) };
}

pub unsafe fn local_xid() -> u32 {
    #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
    {
        (*pg_sys::MyProc).lxid
    }
    #[cfg(any(feature = "pg17", feature = "pg18"))]
    {
        (*pg_sys::MyProc).vxid.lxid
    }
}

/// Runs `f` with the top transaction's resource owner and memory context, so that what it
/// opens, pins or registers lives until the transaction ends rather than the statement.
unsafe fn in_transaction_scope<R>(f: impl FnOnce() -> R) -> R {
    let owner = pg_sys::CurrentResourceOwner;
    let cx = pg_sys::MemoryContextSwitchTo(pg_sys::TopTransactionContext);
    pg_sys::CurrentResourceOwner = pg_sys::TopTransactionResourceOwner;
    let r = f();
    pg_sys::CurrentResourceOwner = owner;
    pg_sys::MemoryContextSwitchTo(cx);
    r
}

/// An index scan that returns index tuples too, for index-only lookups (the primary key
/// INCLUDEs canonical_id).
unsafe fn begin_scan(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
) -> pg_sys::IndexScanDesc {
    begin_scan_keys(heap, index, snapshot, 2)
}

unsafe fn begin_scan_keys(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    nkeys: i32,
) -> pg_sys::IndexScanDesc {
    #[cfg(not(feature = "pg18"))]
    let scan = pg_sys::index_beginscan(heap, index, snapshot, nkeys, 0);
    #[cfg(feature = "pg18")]
    let scan = pg_sys::index_beginscan(heap, index, snapshot, std::ptr::null_mut(), nkeys, 0);
    (*scan).xs_want_itup = true;
    scan
}

/// A snapshot taken now, after the caller accepted invalidation messages: it sees every
/// commit whose invalidation was processed (see cache.rs) and, after a command counter
/// increment, what this statement changed through SPI.
unsafe fn current_snapshot(user: Use, after_own_changes: bool) -> pg_sys::Snapshot {
    if user == Use::Resolve {
        // mp_resolve sets the caller's snapshot on each lookup; this one only has to be valid
        // (and taking a new one is not allowed in a parallel worker).
        return pg_sys::RegisterSnapshot(pg_sys::GetActiveSnapshot());
    }
    if after_own_changes {
        pg_sys::CommandCounterIncrement();
    }
    pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot())
}

impl Probe {
    unsafe fn open(user: Use, statement: (u32, u32)) -> Probe {
        in_transaction_scope(|| {
            let nsp = pg_sys::get_namespace_oid(c"identity_merge".as_ptr(), false);
            let heap_oid = pg_sys::get_relname_relid(c"identities".as_ptr(), nsp);
            let index_oid = pg_sys::get_relname_relid(c"identities_pkey".as_ptr(), nsp);
            if heap_oid == pg_sys::InvalidOid || index_oid == pg_sys::InvalidOid {
                error!("identity_merge: table identity_merge.identities or its primary key is missing; reinstall the extension");
            }
            let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
            let heap = pg_sys::table_open(heap_oid, lock);
            let index = pg_sys::index_open(index_oid, lock);
            let collation = *(*index).rd_indcollation.add(1);
            let tupdesc = pgrx::PgTupleDesc::from_pg_unchecked((*heap).rd_att);
            let column = |name: &str| {
                tupdesc
                    .iter()
                    .position(|a| a.name() == name)
                    .map(|i| i as i32 + 1)
                    .unwrap_or_else(|| error!("identity_merge: identities.{name} is missing"))
            };
            let canonical_attno = column("canonical_id");
            let distinct_attno = column("distinct_id");
            let snapshot = current_snapshot(user, false);
            let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
            let scan = begin_scan(heap, index, snapshot);
            Probe {
                heap,
                index,
                scan,
                slot,
                snapshot,
                collation,
                canonical_attno,
                distinct_attno,
                vmbuffer: pg_sys::InvalidBuffer as pg_sys::Buffer,
                lxid: local_xid(),
                statement,
                seen: now_seen(),
                busy: false,
            }
        })
    }

    /// Moves to a new snapshot: the next statement's, or this one's after its own changes.
    unsafe fn renew_snapshot(&mut self, user: Use, after_own_changes: bool) {
        in_transaction_scope(|| {
            pg_sys::index_endscan(self.scan);
            pg_sys::UnregisterSnapshot(self.snapshot);
            self.snapshot = current_snapshot(user, after_own_changes);
            self.scan = begin_scan(self.heap, self.index, self.snapshot);
        })
    }

    unsafe fn close(self) {
        in_transaction_scope(|| {
            pg_sys::index_endscan(self.scan);
            if self.vmbuffer != pg_sys::InvalidBuffer as pg_sys::Buffer {
                pg_sys::ReleaseBuffer(self.vmbuffer);
            }
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::UnregisterSnapshot(self.snapshot);
            let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
            pg_sys::index_close(self.index, lock);
            pg_sys::table_close(self.heap, lock);
        })
    }

    /// Hands `f` the canonical id of `id` (a text datum) as a text datum, or None when unknown.
    /// The datum points into a pinned buffer, released when `f` returns.
    unsafe fn lookup(
        &mut self,
        project_id: i32,
        id: pg_sys::Datum,
        f: impl FnOnce(Option<pg_sys::Datum>),
    ) {
        let mut f = Some(f);
        let mut found = false;
        self.scan_project(project_id, Some(id), |_, canonical| {
            found = true;
            (f.take().unwrap())(Some(canonical));
            false
        });
        if !found {
            (f.take().unwrap())(None);
        }
    }

    /// Visits the visible identities of a project (all of them, or the one with distinct_id
    /// `id`) in index order, handing `f` (distinct_id, canonical_id) text datums that are valid
    /// only during the call; stops when `f` returns false. How many rows it visited.
    unsafe fn scan_project(
        &mut self,
        project_id: i32,
        id: Option<pg_sys::Datum>,
        mut f: impl FnMut(pg_sys::Datum, pg_sys::Datum) -> bool,
    ) -> usize {
        in_transaction_scope(|| {
            let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
            pg_sys::ScanKeyEntryInitialize(
                &mut keys[0],
                0,
                1,
                pg_sys::BTEqualStrategyNumber as u16,
                pg_sys::InvalidOid,
                pg_sys::InvalidOid,
                pg_sys::regproc::from(pg_sys::F_INT4EQ),
                pg_sys::Datum::from(project_id),
            );
            // A btree scan keeps the number of keys it began with: a whole-project scan
            // (one key) gets a scan of its own.
            let scan = if id.is_some() {
                self.scan
            } else {
                begin_scan_keys(self.heap, self.index, self.snapshot, 1)
            };
            let nkeys = if let Some(id) = id {
                pg_sys::ScanKeyEntryInitialize(
                    &mut keys[1],
                    0,
                    2,
                    pg_sys::BTEqualStrategyNumber as u16,
                    pg_sys::InvalidOid,
                    self.collation,
                    pg_sys::regproc::from(pg_sys::F_TEXTEQ),
                    id,
                );
                2
            } else {
                1
            };
            pg_sys::index_rescan(scan, keys.as_mut_ptr(), nkeys, std::ptr::null_mut(), 0);
            // As an index-only scan does: when the heap page is all-visible the index tuple
            // answers; otherwise fetch the heap tuple and check it against the snapshot.
            let mut visited = 0;
            loop {
                let tid =
                    pg_sys::index_getnext_tid(scan, pg_sys::ScanDirection::ForwardScanDirection);
                if tid.is_null() {
                    break;
                }
                let block = pgrx::itemptr::item_pointer_get_block_number(tid);
                let status = pg_sys::visibilitymap_get_status(self.heap, block, &mut self.vmbuffer);
                let mut go_on = true;
                if status as u32 & pg_sys::VISIBILITYMAP_ALL_VISIBLE != 0 {
                    let mut values = [pg_sys::Datum::from(0); 3];
                    let mut nulls = [false; 3];
                    pg_sys::index_deform_tuple(
                        (*scan).xs_itup,
                        (*scan).xs_itupdesc,
                        values.as_mut_ptr(),
                        nulls.as_mut_ptr(),
                    );
                    if !nulls[2] {
                        visited += 1;
                        go_on = f(values[1], values[2]);
                    }
                } else if pg_sys::index_fetch_heap(scan, self.slot) {
                    let mut is_null = false;
                    let d = pg_sys::slot_getattr(self.slot, self.canonical_attno, &mut is_null);
                    if !is_null {
                        let mut id_null = false;
                        let id = pg_sys::slot_getattr(self.slot, self.distinct_attno, &mut id_null);
                        visited += 1;
                        go_on = f(id, d);
                    }
                    pg_sys::ExecClearTuple(self.slot);
                }
                if !go_on {
                    break;
                }
            }
            if scan != self.scan {
                pg_sys::index_endscan(scan);
            }
            visited
        })
    }
}

/// Opens (or reuses) the probe of `user` for `statement`, with a snapshot that is current as
/// `Probe::seen` says, and runs `f` with it.
unsafe fn with_probe<R>(
    user: Use,
    statement: (u32, u32),
    f: impl FnOnce(&mut Probe) -> R,
) -> R {
    let slot = match user {
        Use::Stamp => &PROBE,
        Use::Resolve => &RESOLVE_PROBE,
    };
    slot.with(|slot| {
        let mut slot = slot.borrow_mut();
        let lxid = local_xid();
        // A probe of an earlier transaction was closed before it committed or was released
        // by its abort: forget it. One left busy by an error is closed and reopened.
        if slot.as_ref().is_some_and(|p| p.lxid != lxid) {
            *slot = None;
        }
        if slot.as_ref().is_some_and(|p| p.busy) {
            slot.take().unwrap().close();
        }
        if slot.is_none() {
            *slot = Some(Probe::open(user, statement));
            pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::PreCommit, close_current);
            // A parallel worker (mp_resolve is parallel safe) sees this event instead.
            pgrx::register_xact_callback(
                pgrx::PgXactCallbackEvent::ParallelPreCommit,
                close_current,
            );
        }
        let probe = slot.as_mut().unwrap();
        if user == Use::Stamp {
            let now = now_seen();
            if probe.statement != statement || probe.seen != now {
                // After this backend's own join the new snapshot must see it (a command
                // counter increment); after invalidations, what they announced.
                probe.renew_snapshot(user, probe.seen.1 != now.1);
                probe.statement = statement;
                probe.seen = now_seen();
            }
        } else if probe.statement != statement {
            probe.renew_snapshot(user, false);
            probe.statement = statement;
        }
        probe.busy = true;
        if user == Use::Resolve {
            // The caller's snapshot, valid for this call (the executor holds it); the scan's
            // own registered snapshot is put back afterwards.
            (*probe.scan).xs_snapshot = pg_sys::GetActiveSnapshot();
        }
        let r = f(probe);
        (*probe.scan).xs_snapshot = probe.snapshot;
        probe.busy = false;
        r
    })
}

/// Visits every identity of a project as the stamping trigger sees the graph (see
/// `canonical`), handing `f` (distinct_id, canonical_id) datums; stops early when `f` returns
/// false. How many it visited.
pub unsafe fn each_identity(
    statement: (u32, u32),
    project_id: i32,
    f: impl FnMut(pg_sys::Datum, pg_sys::Datum) -> bool,
) -> usize {
    with_probe(Use::Stamp, statement, |probe| {
        probe.scan_project(project_id, None, f)
    })
}

/// pg_class.reltuples of identity_merge.identities (all projects), or None when it was never
/// counted (no VACUUM or ANALYZE yet).
pub unsafe fn identities_estimate(statement: (u32, u32)) -> Option<f64> {
    with_probe(Use::Stamp, statement, |probe| {
        let rows = (*(*probe.heap).rd_rel).reltuples as f64;
        (rows >= 0.0).then_some(rows)
    })
}

/// Looks `id` up for the statement `statement` (command id, subtransaction; the local xid is
/// implied) and hands the canonical datum, if any, to `f`. Returns the cache generation the
/// answer is valid for (`cache::put`'s `as_of`).
pub unsafe fn canonical(
    user: Use,
    statement: (u32, u32),
    project_id: i32,
    id: pg_sys::Datum,
    f: impl FnOnce(Option<pg_sys::Datum>),
) -> u64 {
    with_probe(user, statement, |probe| {
        probe.lookup(project_id, id, f);
        probe.seen.0
    })
}

/// Closes this transaction's probes (pre-commit).
pub fn close_current() {
    for slot in [&PROBE, &RESOLVE_PROBE] {
        slot.with(|slot| {
            if let Some(p) = slot.borrow_mut().take() {
                if p.lxid == unsafe { local_xid() } {
                    unsafe { p.close() };
                }
            }
        })
    }
}
