//! Blocks of shared memory found by name or made, zeroed, in the space PostgreSQL leaves for
//! add-ins not in `shared_preload_libraries` (a few hundred kilobytes at least): the ring of
//! committed joins (sync/ring.rs) and the statistics and maintenance worker slots
//! (sync/stats.rs). A block that cannot be made (no space left) is None, never an error.

use pgrx::pg_sys;
use pgrx::prelude::*;

/// The block `name` of `size` bytes: found, or made and zeroed under AddinShmemInitLock before
/// any other backend can find it. It lives as long as the server.
pub fn block(name: &'static std::ffi::CStr, size: usize) -> Option<*mut u8> {
    // SAFETY: MainLWLockArray is PostgreSQL's array of named locks; slot 21 is
    // AddinShmemInitLock (lwlocknames.txt), the lock add-ins take around ShmemInitStruct.
    let init_lock = unsafe { &raw mut (*pg_sys::MainLWLockArray.add(21)).lock };
    PgTryBuilder::new(|| {
        let mut found = false;
        // SAFETY: ShmemInitStruct returns a block of the asked size that lives as long as the
        // server, found by name or made (zeroed here, under the lock, before anyone else can
        // find it).
        unsafe {
            pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
            let p = pg_sys::ShmemInitStruct(name.as_ptr(), size, &mut found);
            if !found {
                std::ptr::write_bytes(p as *mut u8, 0, size);
            }
            pg_sys::LWLockRelease(init_lock);
            Some(p as *mut u8)
        }
    })
    .catch_others(|_| {
        // Out of shared memory: ShmemInitStruct released its own lock before raising.
        // SAFETY: releases the lock taken above when this backend still holds it.
        unsafe {
            if pg_sys::LWLockHeldByMe(init_lock) {
                pg_sys::LWLockRelease(init_lock);
            }
        }
        None
    })
    .execute()
}
