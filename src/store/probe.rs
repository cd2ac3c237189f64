//! Direct index probes of `identity_merge.identities` for the stamping trigger (and of
//! `identity_merge.clusters` for a statement's batch, `ClusterReader`): no SPI, no
//! executor, no planning per row. One probe (relations, index scan, slot) is opened per
//! transaction under the top transaction's resource owner, so it outlives each statement
//! and is closed just before commit; its snapshot is the current statement's, replaced when
//! the statement changes or when the trigger itself changed the identity graph.

use std::cell::RefCell;

use pgrx::pg_sys;

use crate::core::error::IdentityError;

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
    /// (cache freshness, own writes) when the snapshot was taken: the stamping probe takes a
    /// new one when either moved, so that an answer is never older than the invalidations
    /// this backend accepted nor than its own joins (cache::put keeps only such answers).
    seen: (u64, u64),
    busy: bool,
}

fn now_seen() -> (u64, u64) {
    (
        crate::sync::cache::freshness(),
        crate::sync::cache::own_writes(),
    )
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

/// Runs `f` under the top transaction's resource owner and memory context, so that what it
/// opens, pins or registers lives until the transaction ends rather than the statement.
fn in_transaction_scope<R>(f: impl FnOnce() -> R) -> R {
    crate::pg::with_resource_owner(crate::pg::Owner::TopTransaction, f)
}

/// An index scan that returns index tuples too, for index-only lookups (the primary key
/// INCLUDEs canonical_id).
///
/// # Safety
/// `heap` and `index` must be open relations (the index on the heap) and `snapshot` registered.
unsafe fn begin_scan(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
) -> pg_sys::IndexScanDesc {
    // SAFETY: as the caller guarantees.
    unsafe { begin_scan_keys(heap, index, snapshot, 2) }
}

/// `begin_scan` with `nkeys` scan keys.
///
/// # Safety
/// As `begin_scan`.
unsafe fn begin_scan_keys(
    heap: pg_sys::Relation,
    index: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    nkeys: i32,
) -> pg_sys::IndexScanDesc {
    // SAFETY: open relations and a registered snapshot (the caller's contract); the scan
    // descriptor returned is valid until index_endscan.
    unsafe {
        #[cfg(not(feature = "pg18"))]
        let scan = pg_sys::index_beginscan(heap, index, snapshot, nkeys, 0);
        #[cfg(feature = "pg18")]
        let scan = pg_sys::index_beginscan(heap, index, snapshot, std::ptr::null_mut(), nkeys, 0);
        (*scan).xs_want_itup = true;
        scan
    }
}

/// A snapshot taken now, after the caller accepted invalidation messages: it sees every
/// commit whose invalidation was processed (see cache.rs) and, after a command counter
/// increment, what this statement changed through SPI.
fn current_snapshot(user: Use, after_own_changes: bool) -> pg_sys::Snapshot {
    if user == Use::Resolve {
        // mp_resolve sets the caller's snapshot on each lookup; this one only has to be valid
        // (and taking a new one is not allowed in a parallel worker).
        // SAFETY: a function runs with an active snapshot; registering keeps it alive.
        return unsafe { pg_sys::RegisterSnapshot(pg_sys::GetActiveSnapshot()) };
    }
    // SAFETY: plain snapshot-manager calls in a transaction; the snapshot is registered under
    // the current resource owner (the top transaction's, see in_transaction_scope).
    unsafe {
        if after_own_changes {
            pg_sys::CommandCounterIncrement();
        }
        pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot())
    }
}

impl Probe {
    fn open(user: Use, statement: (u32, u32)) -> Result<Probe, IdentityError> {
        // On Citus, this node's placement of the replicated table (sync/placement.rs).
        let identities = crate::sync::placement::identities()?;
        let (heap_oid, index_oid) = (identities.heap, identities.index);
        in_transaction_scope(|| {
            let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
            // SAFETY: opens relations that exist (looked up above) under the top transaction's
            // resource owner; they are closed in `close` before commit or by the abort.
            let (heap, index) = unsafe {
                (
                    pg_sys::table_open(heap_oid, lock),
                    pg_sys::index_open(index_oid, lock),
                )
            };
            // SAFETY: the index is open; its second column (distinct_id) has a collation.
            let collation = unsafe { *(*index).rd_indcollation.add(1) };
            // SAFETY: the heap is open, its descriptor valid while it is.
            let tupdesc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked((*heap).rd_att) };
            let column = |name: &str| {
                tupdesc
                    .iter()
                    .position(|a| a.name() == name)
                    .map(|i| i as i32 + 1)
                    .ok_or_else(|| IdentityError::MissingObject {
                        what: format!("column identity_merge.identities.{name}"),
                    })
            };
            let canonical_attno = column("canonical_id")?;
            let distinct_attno = column("distinct_id")?;
            let snapshot = current_snapshot(user, false);
            // SAFETY: an open heap and a registered snapshot; both are released in `close`.
            let (slot, scan) = unsafe {
                (
                    pg_sys::table_slot_create(heap, std::ptr::null_mut()),
                    begin_scan(heap, index, snapshot),
                )
            };
            Ok(Probe {
                heap,
                index,
                scan,
                slot,
                snapshot,
                collation,
                canonical_attno,
                distinct_attno,
                vmbuffer: pg_sys::InvalidBuffer as pg_sys::Buffer,
                lxid: crate::pg::local_xid(),
                statement,
                seen: now_seen(),
                busy: false,
            })
        })
    }

    /// Moves to a new snapshot: the next statement's, or this one's after its own changes.
    fn renew_snapshot(&mut self, user: Use, after_own_changes: bool) {
        in_transaction_scope(|| {
            // SAFETY: the scan and snapshot are this probe's own (opened in `open`, this
            // transaction: `with_probe` drops probes of earlier ones); replaced together.
            unsafe {
                pg_sys::index_endscan(self.scan);
                pg_sys::UnregisterSnapshot(self.snapshot);
            }
            self.snapshot = current_snapshot(user, after_own_changes);
            // SAFETY: the probe's open relations and the snapshot just registered.
            self.scan = unsafe { begin_scan(self.heap, self.index, self.snapshot) };
        })
    }

    fn close(self) {
        in_transaction_scope(|| {
            // SAFETY: releases what `open` acquired, once (close takes the probe by value),
            // in the transaction that acquired it.
            unsafe {
                pg_sys::index_endscan(self.scan);
                if self.vmbuffer != pg_sys::InvalidBuffer as pg_sys::Buffer {
                    pg_sys::ReleaseBuffer(self.vmbuffer);
                }
                pg_sys::ExecDropSingleTupleTableSlot(self.slot);
                pg_sys::UnregisterSnapshot(self.snapshot);
                let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
                pg_sys::index_close(self.index, lock);
                pg_sys::table_close(self.heap, lock);
            }
        })
    }

    /// Hands `f` the canonical id of `id` (a text datum) as a text datum, or None when unknown.
    /// The datum points into a pinned buffer, released when `f` returns.
    ///
    /// # Safety
    /// `id` must be a valid, non-NULL text datum.
    unsafe fn lookup(
        &mut self,
        project_id: i32,
        id: pg_sys::Datum,
        f: impl FnOnce(Option<pg_sys::Datum>),
    ) {
        let mut f = Some(f);
        // SAFETY: `id` is a valid text datum (the caller's contract).
        unsafe {
            self.scan_project(project_id, Some(id), |_, canonical| {
                if let Some(f) = f.take() {
                    f(Some(canonical));
                }
                false
            })
        };
        if let Some(f) = f.take() {
            f(None);
        }
    }

    /// `lookup` of a Rust string, its answer copied out: None when `id` is unknown.
    fn canonical_string(&mut self, project_id: i32, id: &str) -> Option<String> {
        let datum = pgrx::IntoDatum::into_datum(id)?;
        let mut found = None;
        // SAFETY: `datum` is the text datum of `id`, alive for the call; the probe hands a
        // text datum valid during the closure, copied there.
        unsafe {
            self.lookup(project_id, datum, |d| {
                found = d.and_then(|d| <String as pgrx::FromDatum>::from_datum(d, false));
            })
        };
        found
    }

    /// Visits the visible identities of a project (all of them, or the one with distinct_id
    /// `id`) in index order, handing `f` (distinct_id, canonical_id) text datums that are valid
    /// only during the call; stops when `f` returns false. How many rows it visited.
    ///
    /// # Safety
    /// `id`, when given, must be a valid, non-NULL text datum.
    unsafe fn scan_project(
        &mut self,
        project_id: i32,
        id: Option<pg_sys::Datum>,
        mut f: impl FnMut(pg_sys::Datum, pg_sys::Datum) -> bool,
    ) -> usize {
        in_transaction_scope(|| {
            // SAFETY: ScanKeyData is plain data; all-zero is its "unset" state.
            let mut keys: [pg_sys::ScanKeyData; 2] = unsafe { std::mem::zeroed() };
            let key = |key: &mut pg_sys::ScanKeyData, attno: i16, collation, proc, arg| {
                // SAFETY: initialises a scan key in place with a built-in equality function.
                unsafe {
                    pg_sys::ScanKeyEntryInitialize(
                        key,
                        0,
                        attno,
                        pg_sys::BTEqualStrategyNumber as u16,
                        pg_sys::InvalidOid,
                        collation,
                        pg_sys::regproc::from(proc),
                        arg,
                    )
                }
            };
            key(
                &mut keys[0],
                1,
                pg_sys::InvalidOid,
                pg_sys::F_INT4EQ,
                pg_sys::Datum::from(project_id),
            );
            let nkeys = match id {
                Some(id) => {
                    key(&mut keys[1], 2, self.collation, pg_sys::F_TEXTEQ, id);
                    2
                }
                None => 1,
            };
            // A btree scan keeps the number of keys it began with: a whole-project scan
            // (one key) gets a scan of its own.
            let scan = if id.is_some() {
                self.scan
            } else {
                // SAFETY: the probe's open relations and registered snapshot.
                unsafe { begin_scan_keys(self.heap, self.index, self.snapshot, 1) }
            };
            // SAFETY: a live scan of this index, keys initialised above (the text key is valid
            // by the caller's contract).
            unsafe {
                pg_sys::index_rescan(scan, keys.as_mut_ptr(), nkeys, std::ptr::null_mut(), 0)
            };
            // As an index-only scan does: when the heap page is all-visible the index tuple
            // answers; otherwise fetch the heap tuple and check it against the snapshot.
            let mut visited = 0;
            loop {
                // SAFETY: a live, rescanned scan; the TID returned is valid until the next call.
                let tid = unsafe {
                    pg_sys::index_getnext_tid(scan, pg_sys::ScanDirection::ForwardScanDirection)
                };
                if tid.is_null() {
                    break;
                }
                // SAFETY: `tid` is a valid item pointer; the visibility map page it pins is
                // kept in `vmbuffer` and released in `close`.
                let all_visible = unsafe {
                    let block = pgrx::itemptr::item_pointer_get_block_number(tid);
                    pg_sys::visibilitymap_get_status(self.heap, block, &mut self.vmbuffer) as u32
                        & pg_sys::VISIBILITYMAP_ALL_VISIBLE
                        != 0
                };
                let mut go_on = true;
                if all_visible {
                    let mut values = [pg_sys::Datum::from(0); 3];
                    let mut nulls = [false; 3];
                    // SAFETY: the scan wants index tuples (xs_want_itup), so xs_itup is the
                    // current one, with the primary key's three columns.
                    unsafe {
                        pg_sys::index_deform_tuple(
                            (*scan).xs_itup,
                            (*scan).xs_itupdesc,
                            values.as_mut_ptr(),
                            nulls.as_mut_ptr(),
                        )
                    };
                    if !nulls[2] {
                        visited += 1;
                        go_on = f(values[1], values[2]);
                    }
                // SAFETY: fetches the heap tuple of the current TID into the probe's slot.
                } else if unsafe { pg_sys::index_fetch_heap(scan, self.slot) } {
                    let (mut is_null, mut id_null) = (false, false);
                    // SAFETY: the slot holds a tuple of identities; attnos checked in `open`.
                    let (id, canonical) = unsafe {
                        (
                            pg_sys::slot_getattr(self.slot, self.distinct_attno, &mut id_null),
                            pg_sys::slot_getattr(self.slot, self.canonical_attno, &mut is_null),
                        )
                    };
                    if !is_null && !id_null {
                        visited += 1;
                        go_on = f(id, canonical);
                    }
                    // SAFETY: the probe's own slot.
                    unsafe { pg_sys::ExecClearTuple(self.slot) };
                }
                if !go_on {
                    break;
                }
            }
            if scan != self.scan {
                // SAFETY: the scan begun above for this call.
                unsafe { pg_sys::index_endscan(scan) };
            }
            visited
        })
    }
}

/// Opens (or reuses) the probe of `user` for `statement`, with a snapshot that is current as
/// `Probe::seen` says, and runs `f` with it.
fn with_probe<R>(
    user: Use,
    statement: (u32, u32),
    f: impl FnOnce(&mut Probe) -> R,
) -> Result<R, IdentityError> {
    with_probe_as_of(user, statement, false, f)
}

/// `with_probe`, with a snapshot taken now (after a command counter increment) when `now`.
fn with_probe_as_of<R>(
    user: Use,
    statement: (u32, u32),
    now: bool,
    f: impl FnOnce(&mut Probe) -> R,
) -> Result<R, IdentityError> {
    let slot = match user {
        Use::Stamp => &PROBE,
        Use::Resolve => &RESOLVE_PROBE,
    };
    slot.with(|slot| {
        let mut slot = slot.borrow_mut();
        let lxid = crate::pg::local_xid();
        // A probe of an earlier transaction was closed before it committed or was released
        // by its abort: forget it. One left busy by an error is closed and reopened.
        if slot.as_ref().is_some_and(|p| p.lxid != lxid) {
            *slot = None;
        }
        if let Some(busy) = slot.take_if(|p| p.busy) {
            busy.close();
        }
        let probe = match &mut *slot {
            Some(probe) => probe,
            None => {
                // Closed by close_current before commit or prepare (api/hooks.rs).
                slot.insert(Probe::open(user, statement)?)
            }
        };
        if user == Use::Stamp {
            let seen = now_seen();
            if now || probe.statement != statement || probe.seen != seen {
                // After this backend's own join the new snapshot must see it (a command
                // counter increment); after invalidations, what they announced.
                probe.renew_snapshot(user, now || probe.seen.1 != seen.1);
                if !now {
                    // A snapshot taken `now` is newer than the statement's: the statement's
                    // next lookups keep it rather than take another.
                    probe.statement = statement;
                }
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
            // SAFETY: the probe's live scan; the active snapshot outlives this call.
            unsafe { (*probe.scan).xs_snapshot = pg_sys::GetActiveSnapshot() };
        }
        let r = f(probe);
        // SAFETY: the probe's live scan, given back its own registered snapshot.
        unsafe { (*probe.scan).xs_snapshot = probe.snapshot };
        probe.busy = false;
        Ok(r)
    })
}

/// Whether this transaction may read the graph through direct probes with a snapshot taken
/// now, as SPI would under READ COMMITTED: not under REPEATABLE READ or SERIALIZABLE (which
/// read with the transaction's snapshot, and take predicate locks), not in parallel mode, not
/// on Citus (the replicated tables' rows are in placements the writers reach through Citus).
pub fn direct_reads_allowed() -> bool {
    // SAFETY: reads the transaction's isolation level and whether it runs in parallel mode.
    let (read_committed, parallel) = unsafe {
        (
            pg_sys::XactIsoLevel < pg_sys::XACT_REPEATABLE_READ as i32,
            pg_sys::IsInParallelMode(),
        )
    };
    read_committed && !parallel && !crate::sync::placement::distributed()
}

/// The canonical ids of `ids` (None: unknown) under a snapshot taken now, after a command
/// counter increment: every commit so far and this transaction's own changes, as a writer
/// about to decide a join must see them (store::read_sides). Only where
/// `direct_reads_allowed`.
pub fn canonicals_now<const N: usize>(
    project_id: i32,
    ids: [&str; N],
) -> Result<[Option<String>; N], IdentityError> {
    // SAFETY: reads the current command id.
    let command = unsafe { pg_sys::GetCurrentCommandId(false) };
    let statement = (command, crate::pg::current_subxact());
    // Newer than the stamp probe needs: harmless to the stamps that follow.
    with_probe_as_of(Use::Stamp, statement, true, |probe| {
        ids.map(|id| probe.canonical_string(project_id, id))
    })
}

/// `canonical` of a Rust string for `user` and `statement`, its answer copied out: None when
/// `id` is unknown.
pub fn canonical_string(
    user: Use,
    statement: (u32, u32),
    project_id: i32,
    id: &str,
) -> Result<Option<String>, IdentityError> {
    with_probe(user, statement, |probe| {
        probe.canonical_string(project_id, id)
    })
}

/// Visits every identity of a project as the stamping trigger sees the graph (see
/// `canonical`), handing `f` (distinct_id, canonical_id) text datums valid during each call;
/// stops early when `f` returns false. How many it visited.
pub fn each_identity(
    statement: (u32, u32),
    project_id: i32,
    f: impl FnMut(pg_sys::Datum, pg_sys::Datum) -> bool,
) -> Result<usize, IdentityError> {
    // SAFETY: no id datum is passed (a whole-project scan).
    with_probe(Use::Stamp, statement, |probe| unsafe {
        probe.scan_project(project_id, None, f)
    })
}

/// pg_class.reltuples of identity_merge.identities (all projects), or None when it was never
/// counted (no VACUUM or ANALYZE yet).
pub fn identities_estimate(statement: (u32, u32)) -> Result<Option<f64>, IdentityError> {
    with_probe(Use::Stamp, statement, |probe| {
        // SAFETY: the probe's heap is open; rd_rel is its pg_class row.
        let rows = unsafe { (*(*probe.heap).rd_rel).reltuples } as f64;
        (rows >= 0.0).then_some(rows)
    })
}

/// Looks `id` up for the statement `statement` (command id, subtransaction; the local xid is
/// implied) and hands the canonical datum, if any, to `f`. Returns the cache generation the
/// answer is valid for (`cache::put`'s `as_of`).
///
/// # Safety
/// `id` must be a valid, non-NULL text datum.
pub unsafe fn canonical(
    user: Use,
    statement: (u32, u32),
    project_id: i32,
    id: pg_sys::Datum,
    f: impl FnOnce(Option<pg_sys::Datum>),
) -> Result<u64, IdentityError> {
    with_probe(user, statement, |probe| {
        // SAFETY: `id` is valid by this function's contract.
        unsafe { probe.lookup(project_id, id, f) };
        probe.seen.0
    })
}

/// Closes this transaction's probes: before a commit, a prepare, or a parallel worker's commit
/// (mp_resolve is parallel safe), from the transaction callback in api/hooks.rs.
pub fn close_current() {
    for slot in [&PROBE, &RESOLVE_PROBE] {
        slot.with(|slot| {
            if let Some(p) = slot.borrow_mut().take() {
                if p.lxid == crate::pg::local_xid() {
                    p.close();
                }
            }
        })
    }
}

/// The canonical id of `id` in `project_id` (itself when never seen), read as mp_resolve reads it:
/// one probe under the caller's snapshot.
pub fn resolve(project_id: i32, id: &str) -> Result<String, IdentityError> {
    let statement = (0, crate::pg::current_subxact());
    Ok(
        canonical_string(Use::Resolve, statement, project_id, id)?
            .unwrap_or_else(|| id.to_string()),
    )
}

/// Reads stored clusters' facts by their primary key, for a statement's batch (batch.rs) as
/// it meets ids and for an online identity event's fresh read (store/mod.rs's
/// `read_sides_direct`): what `read_sides` reads through SPI, at a fraction of its cost. The
/// oids and column numbers are looked up once per reader.
#[derive(Clone, Copy)]
pub struct ClusterReader {
    heap: pg_sys::Oid,
    index: pg_sys::Oid,
    size_attno: i32,
    identified_attno: i32,
}

thread_local! {
    /// (relations epoch, the reader worked out under it): an online identity event asks for a
    /// reader each time, and the catalog's answer holds until a relation changes.
    static CLUSTER_READER: std::cell::Cell<Option<(u64, ClusterReader)>> =
        const { std::cell::Cell::new(None) };
}

impl ClusterReader {
    /// The reader of `identity_merge.clusters`, looked up in the catalog once per relations
    /// epoch (cache.rs: any relation's invalidation moves it, a dropped or re-created table's
    /// too).
    pub fn new() -> Result<ClusterReader, IdentityError> {
        crate::sync::cache::ensure_registered();
        let epoch = crate::sync::cache::epochs().1;
        if let Some((e, reader)) = CLUSTER_READER.with(|c| c.get()) {
            if e == epoch {
                return Ok(reader);
            }
        }
        let reader = ClusterReader::look_up()?;
        CLUSTER_READER.with(|c| c.set(Some((epoch, reader))));
        Ok(reader)
    }

    fn look_up() -> Result<ClusterReader, IdentityError> {
        let heap = crate::pg::required_relation(c"clusters")?;
        let index = crate::pg::required_relation(c"clusters_pkey")?;
        let column = |name: &std::ffi::CStr| {
            // SAFETY: a syscache lookup of a column by name in an existing relation.
            let attno = unsafe { pg_sys::get_attnum(heap, name.as_ptr()) } as i32;
            (attno > 0)
                .then_some(attno)
                .ok_or_else(|| IdentityError::MissingObject {
                    what: format!("column identity_merge.clusters.{}", name.to_string_lossy()),
                })
        };
        Ok(ClusterReader {
            heap,
            index,
            size_attno: column(c"size")?,
            identified_attno: column(c"identified")?,
        })
    }

    /// (size, identified) of the stored cluster whose canonical id is `canonical`, read with
    /// a snapshot taken now; None when there is none.
    pub fn facts(&self, project_id: i32, canonical: &str) -> Option<(i64, bool)> {
        use pgrx::IntoDatum;
        let key = canonical.into_datum()?;
        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        // SAFETY: opens an existing table (its oid looked up in this transaction) and scans its
        // primary key (project_id int4, canonical_id text COLLATE "C") with two equality keys
        // on valid datums, under a snapshot registered here and released below with the scan
        // and the table; the tuple is read, by column numbers of this table, before the scan
        // that returned it ends.
        unsafe {
            let heap = pg_sys::table_open(self.heap, lock);
            let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
            let mut keys: [pg_sys::ScanKeyData; 2] = std::mem::zeroed();
            pg_sys::ScanKeyInit(
                &mut keys[0],
                1,
                pg_sys::BTEqualStrategyNumber as u16,
                pg_sys::regproc::from(pg_sys::F_INT4EQ),
                pg_sys::Datum::from(project_id),
            );
            pg_sys::ScanKeyInit(
                &mut keys[1],
                2,
                pg_sys::BTEqualStrategyNumber as u16,
                pg_sys::regproc::from(pg_sys::F_TEXTEQ),
                key,
            );
            let scan =
                pg_sys::systable_beginscan(heap, self.index, true, snapshot, 2, keys.as_mut_ptr());
            let tuple = pg_sys::systable_getnext(scan);
            let facts = (!tuple.is_null()).then(|| {
                let (mut size_null, mut identified_null) = (false, false);
                let desc = (*heap).rd_att;
                let size = pg_sys::heap_getattr(tuple, self.size_attno, desc, &mut size_null);
                let identified =
                    pg_sys::heap_getattr(tuple, self.identified_attno, desc, &mut identified_null);
                (
                    if size_null {
                        1
                    } else {
                        size.value() as i32 as i64
                    },
                    !identified_null && identified.value() != 0,
                )
            });
            pg_sys::systable_endscan(scan);
            pg_sys::UnregisterSnapshot(snapshot);
            pg_sys::table_close(heap, lock);
            facts
        }
    }
}
