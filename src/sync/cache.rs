//! A per-backend cache of id -> canonical id for the stamping trigger, kept correct by
//! PostgreSQL's relcache invalidation and, for joins, by the ring (ring.rs, below): every
//! statement that writes `identity_merge.identities` other than a join fires a statement
//! trigger that invalidates the relcache entry of the signal table
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
//!
//! This backend's own joins (a `$identify` row in a bulk INSERT, `mp_identify` calls) do not
//! empty the cache: the join's writer knows exactly what changed (one canonical id absorbed
//! into another), so it records a redirect and keeps the entries (`OwnChange`). That is only
//! done when no message from another backend arrived meanwhile (PostgreSQL counts them in
//! `SharedInvalidMessageCounter`), so every flush another session asked for still happens.
//!
//! Joins send no signal at all: they reach other backends through the shared ring of absorbed
//! canonicals (ring.rs), read at each statement start. An entry whose answer is an absorbed
//! canonical is poisoned (`IdCache::poisoned`) and probed again when next asked; the rest
//! stay. Only other changes (splits, settings, backfill, hand edits) empty every cache.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault};

use pgrx::pg_sys;
use pgrx::prelude::*;

/// An id as a hash key: ids up to 38 bytes (a UUID fits; a `$device:`-prefixed one does not) are kept
/// inside the hash table's slot, so a lookup touches one place in memory, not two; the cache
/// is large and its lookups are random, so that second cache miss was a third of a hit's cost.
#[derive(Clone)]
enum IdKey {
    Inline { len: u8, bytes: [u8; KEY_INLINE] },
    Heap(Box<[u8]>),
}

const KEY_INLINE: usize = 38;

impl IdKey {
    fn new(id: &[u8]) -> IdKey {
        if id.len() <= KEY_INLINE {
            let mut bytes = [0u8; KEY_INLINE];
            bytes[..id.len()].copy_from_slice(id);
            IdKey::Inline {
                len: id.len() as u8,
                bytes,
            }
        } else {
            IdKey::Heap(Box::from(id))
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            IdKey::Inline { len, bytes } => &bytes[..*len as usize],
            IdKey::Heap(b) => b,
        }
    }
}

impl std::borrow::Borrow<[u8]> for IdKey {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::hash::Hash for IdKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As the [u8] it borrows as, so lookups by &[u8] find it.
        self.as_bytes().hash(state)
    }
}

impl PartialEq for IdKey {
    fn eq(&self, other: &IdKey) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for IdKey {}

/// A canonical id as PostgreSQL text, kept in varlena form (1-byte header) so a cache hit hands
/// the trigger a datum without allocating or copying: inside the slot up to 38 bytes, boxed up
/// to 126; longer ids keep their bytes and are copied into a new text datum when used.
pub enum Canonical {
    Inline([u8; KEY_INLINE + 1]),
    Short(Box<[u8]>),
    Long(Box<[u8]>),
}

/// Ids up to this many bytes fit a 1-byte varlena header.
const SHORT_MAX: usize = 126;

/// The header SET_VARSIZE_1B writes for `len` bytes of data: total length, shifted and tagged
/// by endianness.
fn short_header(len: usize) -> u8 {
    #[cfg(target_endian = "little")]
    let h = (((len + 1) as u8) << 1) | 1;
    #[cfg(target_endian = "big")]
    let h = ((len + 1) as u8) | 0x80;
    h
}

/// The total length (header included) a 1-byte varlena header `h` says: VARSIZE_1B.
fn short_total(h: u8) -> usize {
    #[cfg(target_endian = "little")]
    let total = (h >> 1) as usize;
    #[cfg(target_endian = "big")]
    let total = (h & 0x7f) as usize;
    total
}

impl Canonical {
    pub fn new(id: &[u8]) -> Canonical {
        if id.len() <= KEY_INLINE {
            let mut v = [0u8; KEY_INLINE + 1];
            v[0] = short_header(id.len());
            v[1..=id.len()].copy_from_slice(id);
            return Canonical::Inline(v);
        }
        if id.len() > SHORT_MAX {
            return Canonical::Long(Box::from(id));
        }
        let mut v = Vec::with_capacity(id.len() + 1);
        v.push(short_header(id.len()));
        v.extend_from_slice(id);
        Canonical::Short(v.into_boxed_slice())
    }

    /// The id's bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Canonical::Inline(v) => &v[1..short_total(v[0])],
            Canonical::Short(v) => &v[1..],
            Canonical::Long(v) => v,
        }
    }

    /// A text datum of the id, valid while this value stays where it is (read it from the
    /// cache and use it before the cache changes): no copy unless the id is long.
    pub fn datum(&self) -> pg_sys::Datum {
        Answer::of(self).datum()
    }
}

/// A hasher for keys that are hashes already (ring.rs's): the key is its own hash.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, h: u64) {
        self.0 = h;
    }
}

/// Poisoned entries before the cache starts over rather than probing them one by one (or a
/// eighth of its entries, when that is more).
const POISON_MAX: usize = 8192;

/// A canonical id a lookup found, borrowed from the cache: its bytes and, when it fits a
/// 1-byte varlena header, that header with the bytes right after it in memory, so the trigger
/// gets a text datum without a copy.
#[derive(Clone, Copy)]
pub struct Answer<'a> {
    header: Option<&'a u8>,
    bytes: &'a [u8],
}

impl<'a> Answer<'a> {
    fn of(c: &'a Canonical) -> Answer<'a> {
        let header = match c {
            Canonical::Inline(v) => Some(&v[0]),
            Canonical::Short(v) => Some(&v[0]),
            Canonical::Long(_) => None,
        };
        Answer {
            header,
            bytes: c.bytes(),
        }
    }

    /// The id's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// A text datum of the id, valid while the cache is not changed: no copy unless the id is
    /// longer than a 1-byte varlena header allows.
    pub fn datum(&self) -> pg_sys::Datum {
        match self.header {
            Some(h) => pg_sys::Datum::from(h as *const u8),
            None => {
                use pgrx::IntoDatum;
                self.bytes.into_datum().unwrap()
            }
        }
    }
}

/// The cache's answers: every id and canonical as a string in one byte arena, the hash table
/// holding only where they are (8 bytes a slot). A table of 80-byte slots with the strings
/// inside (the layout before) was 40 MB for 300k ids; this one is about a third. (A cold
/// stream spends about 15% of its time on this table's cache misses, inserts of a
/// whole-project load then lookups; the smaller table did not change that measurably, since
/// its lookups stay random.)
///
/// A string at offset `o`: ids up to 126 bytes as a 1-byte varlena header and the bytes (the
/// header is what `Answer::datum` hands out); longer ones as a 0 byte, the length in 4 bytes
/// (little-endian) and the bytes.
struct Entries {
    table: hashbrown::HashTable<Slot>,
    arena: Vec<u8>,
    /// hashbrown's default (foldhash, seeded at random per table): the ids come from users.
    hasher: hashbrown::DefaultHashBuilder,
}

#[derive(Clone, Copy)]
struct Slot {
    /// Offset of the id.
    id: u32,
    /// Offset of its canonical id, or `UNKNOWN` for an id never seen (it resolves to itself).
    canonical: u32,
}

const UNKNOWN: u32 = u32::MAX;

/// The string at `at` in `arena`: its 1-byte varlena header when it has one, and its bytes.
fn stored(arena: &[u8], at: u32) -> (Option<&u8>, &[u8]) {
    let at = at as usize;
    let first = &arena[at];
    if *first == 0 {
        let len = u32::from_le_bytes(arena[at + 1..at + 5].try_into().expect("4 bytes")) as usize;
        return (None, &arena[at + 5..at + 5 + len]);
    }
    (Some(first), &arena[at + 1..at + short_total(*first)])
}

impl Entries {
    fn new() -> Entries {
        Entries {
            table: hashbrown::HashTable::new(),
            arena: Vec::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    fn reserve(&mut self, more: usize) {
        let Entries {
            table,
            arena,
            hasher,
        } = self;
        table.reserve(more, |s| hasher.hash_one(stored(arena, s.id).1));
    }

    /// Appends `bytes` to the arena; its offset, or None when the arena would pass 4 GiB.
    fn push(arena: &mut Vec<u8>, bytes: &[u8]) -> Option<u32> {
        let at = arena.len();
        if at + bytes.len() + 5 > UNKNOWN as usize {
            return None;
        }
        if bytes.len() <= SHORT_MAX {
            arena.push(short_header(bytes.len()));
        } else {
            arena.push(0);
            arena.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        }
        arena.extend_from_slice(bytes);
        Some(at as u32)
    }

    /// What the cache holds for `id`: None when nothing, Some(None) for an id never seen.
    fn get(&self, id: &[u8]) -> Option<Option<Answer<'_>>> {
        let hash = self.hasher.hash_one(id);
        let slot = self
            .table
            .find(hash, |s| stored(&self.arena, s.id).1 == id)?;
        Some((slot.canonical != UNKNOWN).then(|| {
            let (header, bytes) = stored(&self.arena, slot.canonical);
            Answer { header, bytes }
        }))
    }

    /// Remembers `canonical` for `id` (None: never seen), replacing what was there; false when
    /// the arena is full.
    fn insert(&mut self, id: &[u8], canonical: Option<&[u8]>) -> bool {
        let Entries {
            table,
            arena,
            hasher,
        } = self;
        let hash = hasher.hash_one(id);
        let entry = table.entry(
            hash,
            |s| stored(arena, s.id).1 == id,
            |s| hasher.hash_one(stored(arena, s.id).1),
        );
        let canonical = match canonical {
            None => UNKNOWN,
            Some(c) => match Entries::push(arena, c) {
                Some(at) => at,
                None => return false,
            },
        };
        match entry {
            hashbrown::hash_table::Entry::Occupied(mut o) => o.get_mut().canonical = canonical,
            hashbrown::hash_table::Entry::Vacant(v) => {
                let Some(at) = Entries::push(arena, id) else {
                    return false;
                };
                v.insert(Slot { id: at, canonical });
            }
        }
        true
    }
}

struct IdCache {
    generation: u64,
    project_id: i32,
    entries: Entries,
    /// Canonical ids this backend's own joins absorbed, to the canonical that kept them:
    /// applied to every answer, so entries read before the join stay usable.
    redirects: hashbrown::HashMap<IdKey, Canonical>,
    /// Every identity of the project is in `entries` (see `should_load`): an id that is not
    /// is unknown, without a probe.
    complete: bool,
    /// Lookups that had to probe since this cache started.
    misses: u64,
    /// Hashes (ring::hash) of canonical ids other sessions' committed joins absorbed since
    /// this cache started: an answer that is one of them is asked again.
    poisoned: HashSet<u64, BuildHasherDefault<Prehashed>>,
}

impl IdCache {
    fn new(generation: u64, project_id: i32) -> IdCache {
        IdCache {
            generation,
            project_id,
            entries: Entries::new(),
            redirects: hashbrown::HashMap::new(),
            complete: false,
            misses: 0,
            poisoned: HashSet::default(),
        }
    }

    /// Whether the cache answers for `project_id` now (no change signal since it started).
    fn is_current(&self, project_id: i32) -> bool {
        self.generation == GENERATION.with(|g| g.get()) && self.project_id == project_id
    }

    /// The cache of `slot` for `project_id`, started anew when it is not current or when
    /// `full` says it has no room left.
    fn current_in(
        slot: &mut Option<IdCache>,
        project_id: i32,
        full: impl FnOnce(&IdCache) -> bool,
    ) -> &mut IdCache {
        if !slot
            .as_ref()
            .is_some_and(|cache| cache.is_current(project_id) && !full(cache))
        {
            *slot = Some(IdCache::new(GENERATION.with(|g| g.get()), project_id));
            STARTED.with(|s| s.set(s.get() + 1));
        }
        slot.as_mut().unwrap()
    }

    /// The canonical id `id` resolves to: its entry, then any redirects; None = itself.
    fn resolve<'a>(&'a self, id: &'a [u8], entry: Option<Answer<'a>>) -> Option<Answer<'a>> {
        let mut current = entry;
        // Redirects form chains without cycles (an absorbed canonical never comes back); the
        // bound only guards against a bug turning into a hang.
        for _ in 0..=self.redirects.len() {
            let key = current.map(|c| c.bytes()).unwrap_or(id);
            match self.redirects.get(key) {
                Some(next) => current = Some(Answer::of(next)),
                None => break,
            }
        }
        current
    }

    /// Whether `answer` (the canonical a lookup of `id` resolved to, None = itself) may have
    /// been absorbed by another session's join since it was read.
    fn is_poisoned(&self, id: &[u8], answer: Option<Answer<'_>>) -> bool {
        !self.poisoned.is_empty()
            && self
                .poisoned
                .contains(&crate::sync::ring::hash(answer.map_or(id, |c| c.bytes())))
    }
}

thread_local! {
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    /// Bumped by the relcache invalidation of any relation but the signal table.
    static RELATIONS_EPOCH: Cell<u64> = const { Cell::new(0) };
    /// The oid of identity_merge.graph_changed, looked up at each statement start.
    static WATCHED: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::InvalidOid) };
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
    static CACHE: RefCell<Option<IdCache>> = const { RefCell::new(None) };
    /// Bumped by every batch of other sessions' joins taken from the ring: with GENERATION,
    /// what a probe's answer must be as fresh as (`freshness`).
    static NEWS: Cell<u64> = const { Cell::new(0) };
    /// Caches started in this backend (each start is a cold cache).
    static STARTED: Cell<u64> = const { Cell::new(0) };
    static LOADS: Cell<u64> = const { Cell::new(0) };
    static OWN_WRITES: Cell<u64> = const { Cell::new(0) };
}

/// Invalidation callback: must not error or allocate through PostgreSQL, and may run while the
/// cache is borrowed, so it only bumps a counter the cache checks.
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    // InvalidOid means "every relation" (e.g. after the invalidation queue overflowed).
    if relid == pg_sys::InvalidOid || relid == WATCHED.with(|w| w.get()) {
        GENERATION.with(|g| g.set(g.get() + 1));
    }
    if relid != WATCHED.with(|w| w.get()) {
        // Any other relation (an event table altered, its trigger re-created...): what the
        // trigger worked out about its table may be out of date.
        RELATIONS_EPOCH.with(|g| g.set(g.get() + 1));
    }
}

/// (graph generation, relations epoch): what the trigger's per-table facts were derived under;
/// while both stay, they still hold.
pub fn epochs() -> (u64, u64) {
    (
        GENERATION.with(|g| g.get()),
        RELATIONS_EPOCH.with(|g| g.get()),
    )
}

pub fn ensure_registered() {
    REGISTERED.with(|r| {
        if !r.get() {
            crate::sync::ring::attach();
            // SAFETY: registers a callback that lives as long as the library (it is never
            // unloaded) and only bumps thread-local counters.
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
    crate::pg::guc::STAMP_CACHE_ENTRIES.get().max(0) as usize
}

/// Processes pending invalidations (call at the start of each statement).
pub fn accept_invalidations() {
    ensure_registered();
    // SAFETY: processes this backend's pending invalidation messages (callbacks only bump counters).
    unsafe { pg_sys::AcceptInvalidationMessages() };
    let oid = crate::pg::relation_oid(c"graph_changed").unwrap_or(pg_sys::InvalidOid);
    if oid != WATCHED.with(|w| w.get()) {
        // The table was recreated (or first use): nothing cached can be trusted.
        WATCHED.with(|w| w.set(oid));
        GENERATION.with(|g| g.set(g.get() + 1));
    }
    receive_joins();
}

/// Takes other sessions' committed joins from the ring (ring.rs) and poisons what they
/// absorbed; empties the cache when this backend fell behind the ring or too much is poisoned.
fn receive_joins() {
    CACHE.with(|c| {
        // Never while a lookup holds the cache (not reached today): the ring is then read at
        // the next statement start, rather than raising an error in the middle of a row.
        let Ok(mut c) = c.try_borrow_mut() else {
            return;
        };
        let mut cache = c.as_mut();
        let news = crate::sync::ring::receive(|h| {
            if let Some(cache) = cache.as_mut() {
                cache.poisoned.insert(h);
            }
        });
        if news == crate::sync::ring::News::Nothing {
            return;
        }
        NEWS.with(|n| n.set(n.get() + 1));
        let too_much = c
            .as_ref()
            .is_some_and(|cache| cache.poisoned.len() > POISON_MAX.max(cache.entries.len() / 8));
        if news == crate::sync::ring::News::Behind || too_much {
            *c = None;
        }
    })
}

/// Looks `id` up. When cached, hands `f` its canonical id (`None`: the id resolves to itself)
/// and returns true.
pub fn get(project_id: i32, id: &[u8], f: impl FnOnce(Option<Answer<'_>>)) -> bool {
    CACHE.with(|c| {
        let c = c.borrow();
        match c.as_ref() {
            Some(cache) if cache.is_current(project_id) => {
                let answer = match cache.entries.get(id) {
                    Some(e) => cache.resolve(id, e),
                    None if cache.complete => cache.resolve(id, None),
                    None => return false,
                };
                if cache.is_poisoned(id, answer) {
                    return false;
                }
                f(answer);
                true
            }
            _ => false,
        }
    })
}

/// The current graph generation: bumped by every change signal this backend processed.
pub fn generation() -> u64 {
    GENERATION.with(|g| g.get())
}

/// Moves with every change signal and every batch of joins from the ring: an answer read
/// under a snapshot taken before it last moved may miss one of them (`put` drops it).
pub fn freshness() -> u64 {
    GENERATION.with(|g| g.get()) + NEWS.with(|n| n.get())
}

/// How many identity writes this backend made (its own joins): a probe snapshot taken before
/// the latest one does not see it.
pub fn own_writes() -> u64 {
    OWN_WRITES.with(|w| w.get())
}

/// Remembers what a probe found for `id`. `as_of` is the freshness the probe's snapshot was
/// taken in (after the invalidations and joins of that freshness were accepted): an answer
/// read under an older freshness is not kept, since a change it does not see may be the one
/// that moved it (invalidations can be accepted in the middle of a statement: the first lock
/// on a partition, a TOAST fetch).
pub fn put(project_id: i32, id: &[u8], canonical: Option<&[u8]>, as_of: u64) {
    let cap = capacity();
    if cap == 0 || as_of != freshness() {
        return;
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let cache = IdCache::current_in(&mut c, project_id, |cache| {
            cache.entries.len() + cache.redirects.len() >= cap
        });
        cache.misses += 1;
        cache.entries.insert(id, canonical);
    })
}

/// Reading one identity in a whole-project scan costs about this share of a probe of one id
/// (measured: ~0.2 µs against ~1.7 µs for an index probe that descends the btree).
const LOAD_COST_IN_PROBES: f64 = 0.15;

/// Whether to try loading the whole project, and how many identities the attempt may read:
/// as many as cost what the probes made so far cost (the ski-rental rule). Tried when the
/// misses reach 1,024, 2,048, 4,096...: an attempt that runs out of budget wastes at most what
/// probing already cost, and the attempts together at most twice that. `table_rows` estimates
/// the identities of all projects (pg_class.reltuples; None when never counted): an attempt
/// whose budget is below half of it is skipped, as it would most likely run out.
pub fn load_budget(project_id: i32, table_rows: impl FnOnce() -> Option<f64>) -> Option<usize> {
    let misses = CACHE.with(|c| match c.borrow().as_ref() {
        Some(cache) if cache.is_current(project_id) && !cache.complete => cache.misses,
        _ => 0,
    });
    if misses < 1024 || !misses.is_power_of_two() {
        return None;
    }
    let budget = ((misses as f64 / LOAD_COST_IN_PROBES) as usize).min(capacity());
    match table_rows() {
        Some(rows) if (budget as f64) < rows => None,
        _ => Some(budget),
    }
}

/// Adds every identity of the project to the cache, as `fill` hands them over, and marks it
/// complete; `fill` stops early (returning false) once the budget is spent, and then the
/// entries read so far stay, the cache incomplete.
pub fn load(
    project_id: i32,
    budget: usize,
    fill: impl FnOnce(&mut dyn FnMut(&[u8], &[u8]) -> bool) -> bool,
) {
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        let cache = IdCache::current_in(&mut c, project_id, |_| false);
        // Room for the whole budget at once, rather than growing (and rehashing) step by step.
        cache
            .entries
            .reserve(budget.saturating_sub(cache.entries.len()));
        let mut read = 0usize;
        let whole = fill(&mut |id, canonical| {
            read += 1;
            if read > budget {
                return false;
            }
            cache.entries.insert(id, Some(canonical))
        });
        cache.complete = whole;
        if whole {
            LOADS.with(|l| l.set(l.get() + 1));
        }
    });
}

/// Taken before this backend writes the identity graph, handed to `own_change_end` after.
pub struct OwnChange {
    remote_messages: u64,
    cache_current: bool,
}

/// Notes what is current before this backend's own identity write.
pub fn own_change_begin() -> OwnChange {
    let generation = generation();
    OwnChange {
        // SAFETY: reads a counter of this backend.
        remote_messages: unsafe { pg_sys::SharedInvalidMessageCounter },
        cache_current: CACHE.with(|c| {
            c.borrow()
                .as_ref()
                .is_some_and(|cache| cache.generation == generation)
        }),
    }
}

/// After this backend's own write of `project_id`: `joined` holds (absorbed canonical, kept
/// canonical) for every time two clusters became one (an id new to the graph counts as its
/// own cluster), in order (one join, or a statement's batch). When no other backend's message
/// arrived meanwhile, the only invalidations processed were this write's own, so the cache
/// stays, with the joins as redirects; otherwise it is dropped.
/// Returns whether it was quiet (what was current before still is: the project cache, in
/// store/mod.rs, follows the same rule).
pub fn own_change_end(before: OwnChange, project_id: i32, joined: &[(&str, &str)]) -> bool {
    OWN_WRITES.with(|w| w.set(w.get() + 1));
    // SAFETY: reads a counter of this backend.
    let quiet = unsafe { pg_sys::SharedInvalidMessageCounter } == before.remote_messages;
    if !quiet {
        if !joined.is_empty() {
            clear();
        }
        return false;
    }
    let generation = generation();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if !before.cache_current {
            return;
        }
        let Some(cache) = c.as_mut() else { return };
        cache.generation = generation;
        if cache.project_id == project_id {
            for (absorbed, kept) in joined {
                cache.redirects.insert(
                    IdKey::new(absorbed.as_bytes()),
                    Canonical::new(kept.as_bytes()),
                );
            }
        }
    });
    true
}

/// How many whole-project loads this backend completed (for tests: a cache can be emptied by
/// any other session's commit right after, so "is it complete now" is not a stable question).
#[cfg(any(test, feature = "pg_test"))]
pub fn loads_completed() -> u64 {
    LOADS.with(|l| l.get())
}

/// Sends the change signal (at commit): every backend empties its caches.
pub fn signal() {
    if let Some(signal) = crate::pg::relation_oid(c"graph_changed") {
        // SAFETY: registers a relcache invalidation of an existing relation, sent at commit.
        unsafe { pgrx::pg_sys::CacheInvalidateRelcacheByRelid(signal) };
    }
}

/// This backend's stamp cache, for tests: `started=N entries=N poisoned=N complete=B` (how many
/// caches were started, and the current one's entries, poisoned answers and completeness).
#[cfg(any(test, feature = "pg_test"))]
pub fn describe() -> String {
    CACHE.with(|c| {
        let c = c.borrow();
        let (entries, poisoned, complete) = c.as_ref().map_or((0, 0, false), |cache| {
            (cache.entries.len(), cache.poisoned.len(), cache.complete)
        });
        format!(
            "started={} entries={entries} poisoned={poisoned} complete={complete}",
            STARTED.with(|s| s.get())
        )
    })
}

/// Forgets everything.
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
    /// at its next command). The extension's own joins skip it: the ring carries them.
    #[pg_trigger]
    fn notify_caches<'a>(
        _trigger: &'a pgrx::PgTrigger<'a>,
    ) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
        if crate::sync::ring::must_signal() {
            super::signal();
        }
        Ok(None)
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn canonical_keeps_every_length_and_a_valid_short_header() {
        for len in [0usize, 1, 10, 37, 38, 39, 100, 126, 127, 255, 1000] {
            let id: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            let c = Canonical::new(&id);
            assert_eq!(c.bytes(), &id[..], "length {len}");
            let inline = matches!(c, Canonical::Inline(_));
            assert_eq!(inline, len <= KEY_INLINE, "length {len}");
            let header = match &c {
                Canonical::Inline(v) => Some(v[0]),
                Canonical::Short(v) => Some(v[0]),
                Canonical::Long(_) => None,
            };
            if let Some(h) = header {
                // VARSIZE_1B on little-endian machines: (header >> 1) & 0x7F, VARATT_IS_1B: odd.
                #[cfg(target_endian = "little")]
                {
                    assert_eq!(h & 1, 1);
                    assert_eq!(((h >> 1) & 0x7f) as usize, len + 1);
                }
                let _ = h;
            } else {
                assert!(len > SHORT_MAX);
            }
        }
    }

    #[test]
    fn entries_keep_every_length_unknowns_and_replacements() {
        let mut e = Entries::new();
        let id = |n: usize, len: usize| -> Vec<u8> {
            let mut v = format!("{n}:").into_bytes();
            v.resize(len.max(v.len()), b'a' + (n % 26) as u8);
            v
        };
        let lens = [0usize, 1, 7, 38, 39, 126, 127, 300];
        for (n, len) in lens.iter().enumerate() {
            let canonical = id(n + 1000, *len);
            assert!(e.insert(&id(n, *len), Some(&canonical)));
        }
        assert!(e.insert(b"never-seen", None));
        for (n, len) in lens.iter().enumerate() {
            let got = e.get(&id(n, *len)).expect("held").expect("known");
            assert_eq!(got.bytes(), &id(n + 1000, *len)[..], "length {len}");
            // A 1-byte varlena header right before the bytes, when the length allows one.
            match got.header {
                Some(h) => {
                    assert!(got.bytes().len() <= SHORT_MAX);
                    assert_eq!(*h, short_header(got.bytes().len()));
                    let p = h as *const u8;
                    // SAFETY: the header and the bytes are one run of the arena.
                    let after = unsafe { std::slice::from_raw_parts(p.add(1), got.bytes().len()) };
                    assert_eq!(after, got.bytes());
                }
                None => assert!(got.bytes().len() > SHORT_MAX),
            }
        }
        assert!(matches!(e.get(b"never-seen"), Some(None)));
        assert!(e.get(b"not-here").is_none());
        // A newer answer replaces the old one; the count does not grow.
        let before = e.len();
        assert!(e.insert(b"never-seen", Some(b"someone")));
        assert_eq!(e.get(b"never-seen").unwrap().unwrap().bytes(), b"someone");
        assert_eq!(e.len(), before);
    }

    #[test]
    fn entries_find_every_id_after_growing() {
        let mut e = Entries::new();
        e.reserve(100);
        for n in 0..60_000u32 {
            let id = format!("$device:{n:08x}-6f5c-4a7e-9d2b-1c2d3e4f5a6b");
            let canonical = (n % 7 != 0).then(|| format!("user-{}", n / 3));
            assert!(e.insert(id.as_bytes(), canonical.as_deref().map(str::as_bytes)));
        }
        assert_eq!(e.len(), 60_000);
        for n in (0..60_000u32).step_by(13) {
            let id = format!("$device:{n:08x}-6f5c-4a7e-9d2b-1c2d3e4f5a6b");
            let got = e.get(id.as_bytes()).expect("held");
            assert_eq!(
                got.map(|a| a.bytes().to_vec()),
                (n % 7 != 0).then(|| format!("user-{}", n / 3).into_bytes())
            );
        }
        assert!(e
            .get(b"$device:ffffffff-6f5c-4a7e-9d2b-1c2d3e4f5a6b")
            .is_none());
    }

    #[test]
    fn keys_find_by_bytes() {
        let mut m: hashbrown::HashMap<IdKey, u32> = hashbrown::HashMap::new();
        let long = "x".repeat(200);
        for (i, id) in [
            "",
            "a",
            "user-1",
            "$device:3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b",
            &long,
        ]
        .iter()
        .enumerate()
        {
            m.insert(IdKey::new(id.as_bytes()), i as u32);
        }
        assert_eq!(m.get(b"user-1".as_slice()), Some(&2));
        assert_eq!(m.get(long.as_bytes()), Some(&4));
        assert_eq!(
            m.get("$device:3f1b2b8e-6f5c-4a7e-9d2b-1c2d3e4f5a6b".as_bytes()),
            Some(&3)
        );
        assert_eq!(m.get(b"user-2".as_slice()), None);
    }
}
