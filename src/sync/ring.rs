//! How a session's committed joins reach the other sessions' stamp caches without emptying
//! them: a ring in shared memory of the canonical ids every committed join absorbed (as 64-bit
//! hashes), read by each backend at every statement start.
//!
//! Why: every committed change to `identities` used to send the relcache signal of
//! `graph_changed`, and every backend emptied its cache on it, its own included (a backend
//! reads its own messages back). Loaders that each `$identify` a few users per statement then
//! ran every statement cold. A join changes exactly one thing: the ids of the absorbed cluster
//! (an id new to the graph counts as its own cluster) now resolve to the kept canonical. So a
//! cache entry that resolves to anything but an absorbed canonical is still right, and an entry
//! that does is "poisoned": the next lookup of it probes again (cache.rs).
//!
//! The protocol, and why each step holds:
//! - A write the extension makes through `store::own_write` (a join, or a statement's batch)
//!   does not send the signal (`must_signal`); its absorbed canonicals are kept for the
//!   transaction instead (`joined`). Every other write of `identities` or `projects` (splits,
//!   backfill, settings, anything a superuser does by hand) still sends it: those empty caches
//!   as before.
//! - They are published when the transaction commits (`XACT_EVENT_COMMIT`), which PostgreSQL
//!   runs after the commit became visible to new snapshots and before it releases the
//!   transaction's locks. So a statement that starts after the commit returned, or a batch that
//!   got the project lock after the writer released it, finds them.
//! - A reader takes the new entries at each statement start (`receive`, called where
//!   invalidations are accepted), before its probes take their snapshot; the cache keeps no
//!   answer read under an older snapshot (its freshness counter moves with every entry taken).
//! - Aborted transactions publish nothing. Their joins are forgotten by this backend's cache
//!   (the abort empties it), and a rolled-back subtransaction's joins only poison more than
//!   needed, which costs a probe, never a wrong stamp.
//! - A prepared transaction (two-phase commit) may be committed by another session much later:
//!   it sends the signal instead, carried with the prepared state.
//! - A transaction of more joins than `MAX_PER_TRANSACTION`, a reader more than the ring
//!   behind, or a ring that cannot be made (no shared memory left): the signal, and empty
//!   caches, as before.
//! - On Citus the writes of the replicated tables happen in other backends: they signal.
//! - `identity_merge.publish_joins = off` (superusers): this session's joins signal.
//!
//! The ring lives in the shared memory PostgreSQL leaves for add-ins not in
//! `shared_preload_libraries` (a few hundred kilobytes at least; 64 KiB are taken). Its name
//! carries its layout's version: a library with another layout must use another name and keep
//! signalling while the old one may still be loaded.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use pgrx::pg_sys;

/// Entries in the ring: joins committed between two statements of a reader before it falls
/// behind and empties its cache.
const SLOTS: usize = 8192;

/// A transaction with more joins than this signals instead (a bulk load rewrites most of the
/// graph anyway, and one transaction must not push every reader off the ring).
pub const MAX_PER_TRANSACTION: usize = SLOTS / 4;

const NAME: &std::ffi::CStr = c"identity_merge: absorbed canonicals, layout 1";

#[repr(C)]
struct Shared {
    /// 1 while a writer publishes (writers are serialized; readers never wait).
    writing: AtomicU32,
    /// Entries reserved: a writer moves it before it overwrites slots, so a reader that
    /// copied slots can tell whether they may have been overwritten meanwhile.
    reserved: AtomicU64,
    /// Entries published: slots below it hold what they should.
    published: AtomicU64,
    slots: [AtomicU64; SLOTS],
}

/// The ring, once this backend found or made it; None when there is none (not yet asked,
/// or no shared memory left, or a parallel worker).
fn shared() -> Option<&'static Shared> {
    RING.with(|r| r.get())
}

thread_local! {
    static RING: Cell<Option<&'static Shared>> = const { Cell::new(None) };
    static ASKED: Cell<bool> = const { Cell::new(false) };
    /// How far this backend has read the ring.
    static CURSOR: Cell<u64> = const { Cell::new(0) };
    /// This transaction's absorbed canonicals (hash, subtransaction that made the join).
    static PENDING: RefCell<Vec<(u64, pg_sys::SubTransactionId)>> = const { RefCell::new(Vec::new()) };
    /// This transaction signalled instead (too many joins): nothing more to keep.
    static SIGNALLED: Cell<bool> = const { Cell::new(false) };
    /// Depth of `store::own_write` calls whose writes need no signal.
    static QUIET_WRITES: Cell<u32> = const { Cell::new(0) };
}

/// Finds or makes the ring (once per backend; the first statement that stamps or writes asks).
/// Any failure leaves the backend without it: it signals as before, and as a reader it has
/// nothing to miss, since a ring that could not be made here could not be made anywhere.
pub fn attach() {
    if ASKED.with(|a| a.get()) {
        return;
    }
    // SAFETY: asks whether this backend is in parallel mode.
    if unsafe { pg_sys::IsInParallelMode() } {
        // A worker neither stamps nor writes; the leader asks for itself.
        return;
    }
    ASKED.with(|a| a.set(true));
    // All-zero bytes are a valid, empty Shared.
    let found_or_made = crate::pg::shmem::block(NAME, std::mem::size_of::<Shared>())
        // SAFETY: a block of Shared's size that lives as long as the server, zeroed when made.
        .map(|p| unsafe { &*(p as *const Shared) });
    if let Some(ring) = found_or_made {
        // What was published before is about caches this backend never had.
        CURSOR.with(|c| c.set(ring.published.load(Ordering::Acquire)));
        RING.with(|r| r.set(Some(ring)));
    }
}

/// What a reader learned at a statement start.
#[derive(Debug, PartialEq, Eq)]
pub enum News {
    Nothing,
    /// New absorbed canonicals, each handed to the callback.
    Joins,
    /// More was published than the ring holds since this backend last read: empty the cache.
    Behind,
}

/// Hands every absorbed canonical published since this backend last read to `poison`.
pub fn receive(poison: impl FnMut(u64)) -> News {
    let Some(ring) = shared() else {
        return News::Nothing;
    };
    let from = CURSOR.with(|c| c.get());
    let (news, to) = read(ring, from, poison);
    CURSOR.with(|c| c.set(to));
    news
}

/// Reads `ring` from entry `from`: what it found and where the next read starts.
fn read(ring: &Shared, from: u64, mut poison: impl FnMut(u64)) -> (News, u64) {
    let to = ring.published.load(Ordering::Acquire);
    if to == from {
        return (News::Nothing, to);
    }
    if to - from > SLOTS as u64 {
        return (News::Behind, to);
    }
    for n in from..to {
        poison(ring.slots[(n % SLOTS as u64) as usize].load(Ordering::Relaxed));
    }
    // Pairs with the writer's fence: a slot read above that a later writer overwrote means
    // this load sees that writer's reservation.
    fence(Ordering::Acquire);
    if ring.reserved.load(Ordering::Relaxed) - from > SLOTS as u64 {
        return (News::Behind, to);
    }
    (News::Joins, to)
}

/// Appends `hashes` (at most SLOTS).
fn publish(ring: &Shared, hashes: &[u64]) {
    while ring
        .writing
        .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        // Another session publishing: a few thousand stores at most.
        std::thread::yield_now();
    }
    let start = ring.published.load(Ordering::Relaxed);
    ring.reserved
        .store(start + hashes.len() as u64, Ordering::Relaxed);
    fence(Ordering::Release);
    for (i, h) in hashes.iter().enumerate() {
        ring.slots[((start + i as u64) % SLOTS as u64) as usize].store(*h, Ordering::Relaxed);
    }
    ring.published
        .store(start + hashes.len() as u64, Ordering::Release);
    ring.writing.store(0, Ordering::Release);
}

/// The hash of an id in the ring: the same in every backend (no per-process seed), cheap for
/// ids of a few dozen bytes. A collision only costs a probe.
pub fn hash(id: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (id.len() as u64).wrapping_mul(K);
    let mut chunks = id.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    // splitmix64's finalizer: every input bit moves every output bit.
    h ^= h >> 30;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// Marks the extension's own join writes (`store::own_write`) while they run.
pub struct QuietWrite {
    quiet: bool,
}

impl QuietWrite {
    /// `distributed`: the identity state is on Citus (its writes run in other backends).
    pub fn begin(distributed: bool) -> QuietWrite {
        let quiet = shared().is_some()
            && !distributed
            && crate::pg::guc::PUBLISH_JOINS.get()
            && !SIGNALLED.with(|s| s.get());
        if quiet {
            QUIET_WRITES.with(|q| q.set(q.get() + 1));
        }
        QuietWrite { quiet }
    }

    /// The write made these joins (their absorbed canonicals); true when the caller must
    /// signal now after all (the transaction outgrew what the ring takes).
    pub fn joined<'a>(&self, absorbed: impl Iterator<Item = &'a str>) -> bool {
        if !self.quiet {
            return false;
        }
        let sub = crate::pg::current_subxact();
        let too_many = PENDING.with(|p| {
            let mut p = p.borrow_mut();
            p.extend(absorbed.map(|id| (hash(id.as_bytes()), sub)));
            p.len() > MAX_PER_TRANSACTION
        });
        if too_many {
            PENDING.with(|p| p.borrow_mut().clear());
            SIGNALLED.with(|s| s.set(true));
        }
        too_many
    }
}

impl Drop for QuietWrite {
    fn drop(&mut self) {
        if self.quiet {
            QUIET_WRITES.with(|q| q.set(q.get().saturating_sub(1)));
        }
    }
}

/// Whether a write of `identities` or `projects` that just ended must send the signal.
pub fn must_signal() -> bool {
    QUIET_WRITES.with(|q| q.get()) == 0
}

/// What the end of a transaction asks of the caches (the caller, api/hooks.rs's callbacks, acts).
#[derive(Debug, PartialEq, Eq)]
pub enum AtEnd {
    Nothing,
    /// This backend's own uncommitted joins are gone: its cache must forget them.
    ForgetOwnJoins,
    /// PREPARE TRANSACTION: send the signal now (it is kept with the prepared state), and
    /// forget the joins here (the prepared transaction may yet be rolled back).
    SignalAndForget,
}

/// Before PREPARE TRANSACTION, after the statement's batch was written.
pub fn pre_prepare() -> AtEnd {
    drop_pending(AtEnd::SignalAndForget)
}

/// The transaction committed: its joins go to the ring.
pub fn commit() {
    PENDING.with(|p| {
        let p = p.borrow();
        if let (Some(ring), false) = (shared(), p.is_empty()) {
            let hashes: Vec<u64> = p.iter().map(|(h, _)| *h).collect();
            publish(ring, &hashes);
        }
    });
    reset();
}

/// The transaction aborted.
pub fn abort() -> AtEnd {
    drop_pending(AtEnd::ForgetOwnJoins)
}

/// Ends the transaction's joins unpublished: `then` when there were any.
fn drop_pending(then: AtEnd) -> AtEnd {
    let had = PENDING.with(|p| !p.borrow().is_empty());
    reset();
    if had {
        then
    } else {
        AtEnd::Nothing
    }
}

/// Subtransaction `sub` rolled back: its joins (and its children's, whose ids are larger)
/// are undone.
pub fn abort_sub(sub: pg_sys::SubTransactionId) -> AtEnd {
    let undone = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let before = p.len();
        p.retain(|(_, made_in)| *made_in < sub);
        p.len() != before
    });
    if undone {
        AtEnd::ForgetOwnJoins
    } else {
        AtEnd::Nothing
    }
}

fn reset() {
    PENDING.with(|p| p.borrow_mut().clear());
    SIGNALLED.with(|s| s.set(false));
    QUIET_WRITES.with(|q| q.set(0));
}

#[cfg(test)]
mod unit {
    use super::*;

    fn ring() -> Box<Shared> {
        // SAFETY: all-zero bytes are a valid, empty Shared (atomics of zero).
        unsafe { Box::new(std::mem::zeroed()) }
    }

    #[test]
    fn a_reader_gets_each_published_entry_once_in_order() {
        let r = ring();
        publish(&r, &[1, 2, 3]);
        let mut got = Vec::new();
        let (news, at) = read(&r, 0, |h| got.push(h));
        assert_eq!((news, at, got.clone()), (News::Joins, 3, vec![1, 2, 3]));
        publish(&r, &[4]);
        got.clear();
        let (news, at) = read(&r, at, |h| got.push(h));
        assert_eq!((news, at, got.clone()), (News::Joins, 4, vec![4]));
        let (news, _) = read(&r, at, |_| panic!("nothing new"));
        assert_eq!(news, News::Nothing);
    }

    #[test]
    fn a_reader_more_than_the_ring_behind_is_told_so() {
        let r = ring();
        let big: Vec<u64> = (0..MAX_PER_TRANSACTION as u64).collect();
        for _ in 0..4 {
            publish(&r, &big);
        }
        // exactly the ring's size behind: every entry is still there
        let mut n = 0;
        assert_eq!(read(&r, 0, |_| n += 1).0, News::Joins);
        assert_eq!(n, SLOTS);
        publish(&r, &[7]);
        assert_eq!(read(&r, 0, |_| {}).0, News::Behind);
        // a reader whose copy may have been overwritten while it read
        r.reserved.store(SLOTS as u64 + 2, Ordering::Relaxed);
        assert_eq!(read(&r, 1, |_| {}).0, News::Behind);
    }

    #[test]
    fn concurrent_writers_and_a_reader_lose_nothing() {
        let r: &'static Shared = Box::leak(ring());
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                std::thread::spawn(move || {
                    for i in 0..500u64 {
                        publish(r, &[w << 32 | i, w << 32 | i]);
                    }
                })
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut at = 0;
        let mut behind = false;
        loop {
            let done = writers.iter().all(|w| w.is_finished());
            let (news, next) = read(r, at, |h| {
                seen.insert(h);
            });
            behind |= news == News::Behind;
            at = next;
            if done && r.published.load(Ordering::Acquire) == at {
                break;
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(at, 4 * 500 * 2);
        if !behind {
            assert_eq!(seen.len(), 4 * 500);
        }
    }

    #[test]
    fn hashes_differ_for_near_ids_and_are_stable() {
        let ids = [
            "",
            "a",
            "b",
            "ab",
            "user-1",
            "user-2",
            "user-10",
            "12345678",
            "123456789",
        ];
        let hs: std::collections::HashSet<u64> = ids.iter().map(|i| hash(i.as_bytes())).collect();
        assert_eq!(hs.len(), ids.len());
        assert_eq!(hash(b"user-1"), hash(b"user-1"));
        // a trailing NUL-free tail does not collide with its zero-padded form
        assert_ne!(hash(b"abc"), hash(b"abc\0"));
    }
}
