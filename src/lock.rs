//! The one way bsync takes a lock.
//!
//! A poisoned mutex means a thread panicked while holding it. Release builds
//! abort on panic, so that only happens in tests and debug builds, and every
//! structure bsync guards stays consistent between statements (a queue, a
//! counter, a map of pending blocks). Carrying on with the data is right;
//! the panic itself is reported where the thread is joined.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Lock `m`, ignoring poisoning (see the module docs).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Take the value out of `m`, ignoring poisoning.
pub fn into_inner<T>(m: Mutex<T>) -> T {
    m.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Wait on `cond` with `guard`, ignoring poisoning.
pub fn wait<'a, T>(cond: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cond.wait(guard).unwrap_or_else(|e| e.into_inner())
}

/// Wait on `cond` with `guard` for at most `limit`, ignoring poisoning.
pub fn wait_timeout<'a, T>(
    cond: &Condvar,
    guard: MutexGuard<'a, T>,
    limit: Duration,
) -> MutexGuard<'a, T> {
    cond.wait_timeout(guard, limit)
        .unwrap_or_else(|e| e.into_inner())
        .0
}
