//! A fixed set of reusable block buffers.
//!
//! Blocks are read straight into pooled buffers that travel through the
//! pipeline and come back when dropped, so the steady state allocates
//! nothing. The pool's capacity is also the pipeline's memory bound: when every
//! buffer is in flight the reader waits. Buffers are created lazily (a small
//! file never allocates the whole pool) and, for the reader, `mlock`ed and
//! advised `MADV_HUGEPAGE` where the OS permits.
//!
//! A pool of [`Pool::sized`] buffers instead holds what was received of a
//! block, no more: [`Pool::get_len`] never waits (what bounds those buffers
//! is the flow that fills them), and returned buffers are kept for reuse
//! only while all it holds, in use and spare, stays within a byte limit.

use std::io;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::block::{Block, Extent};
use crate::digest::Digest;
use crate::lock::{lock, wait};
use crate::sys::PinnedBuf;

#[derive(Default)]
struct State {
    free: Vec<Block>,
    allocated: usize,
    /// Of a [`Pool::sized`]: bytes of its buffers, in use and spare, and
    /// the most ever.
    held: usize,
    peak: usize,
    /// Of a [`Pool::sized`]: the emptied extent and digest lists of buffers
    /// let go beyond the spares, for the next new buffer. Unlike the data
    /// they cost little, and a buffer made per received block must not
    /// cost a heap allocation per block; at most as many as buffers were
    /// ever alive at once, which the flow that fills them bounds.
    lists: Vec<(Vec<Extent>, Vec<Digest>)>,
}

impl State {
    /// A buffer of a [`Pool::sized`] goes: its lists are kept for the next
    /// one, its data is returned to be unmapped.
    fn let_go(&mut self, block: Block) -> PinnedBuf {
        let Block {
            data,
            extents,
            digests,
            ..
        } = block;
        self.lists.push((extents, digests));
        self.allocated -= 1;
        self.held -= data.len();
        data
    }
}

struct Inner {
    state: Mutex<State>,
    returned: Condvar,
    capacity: usize,
    buf_len: usize,
    lock_memory: bool,
    hints: bool,
    /// Buffers are sized to their use, and `capacity` is the most bytes
    /// the pool keeps, in use and spare, before it lets spares go.
    sized: bool,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

/// A bounded pool of block buffers. Cloning shares the pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    /// A pool of at most `capacity` buffers of `buf_len` bytes. With `hints`
    /// (the kernel hints are on) buffers are advised huge pages, and with
    /// `lock_memory` too they are `mlock`ed (both best effort).
    pub fn new(capacity: usize, buf_len: usize, lock_memory: bool, hints: bool) -> Pool {
        Pool::with(Inner {
            state: Mutex::default(),
            returned: Condvar::new(),
            capacity: capacity.max(1),
            buf_len,
            lock_memory,
            hints,
            sized: false,
        })
    }

    /// A pool of buffers sized to what they hold, which keeps returned
    /// buffers for reuse while it holds at most `limit` bytes, in use and
    /// spare; see [`Pool::get_len`].
    pub fn sized(limit: usize, hints: bool) -> Pool {
        Pool::with(Inner {
            state: Mutex::default(),
            returned: Condvar::new(),
            capacity: limit,
            buf_len: 0,
            lock_memory: false,
            hints,
            sized: true,
        })
    }

    fn with(inner: Inner) -> Pool {
        Pool {
            inner: Arc::new(inner),
        }
    }

    /// From a [`Pool::sized`]: a buffer of at least `len` bytes, the
    /// smallest spare big enough and at most twice [`sized_len`] (a much
    /// larger one would hold more than the sender counted), else a spare
    /// made [`sized_len`] bytes long (the smallest larger one, else the
    /// largest: its pages are not faulted in and zeroed again, as a new
    /// buffer's are), else a new one; none for a `len` of 0. Never waits.
    pub fn get_len(&self, len: usize) -> io::Result<Pooled> {
        let mut state = self.inner.state();
        let size = sized_len(len);
        let most = 2 * size;
        let fits = (0..state.free.len())
            .filter(|&i| (len..=most).contains(&state.free[i].data.len()))
            .min_by_key(|&i| state.free[i].data.len());
        if let Some(i) = fits.filter(|_| len > 0) {
            let block = state.free.swap_remove(i);
            return Ok(self.wrap(block));
        }
        let free = &state.free;
        let larger = (0..free.len())
            .filter(|&i| free[i].data.len() >= size)
            .min_by_key(|&i| free[i].data.len());
        let largest = (0..free.len()).max_by_key(|&i| free[i].data.len());
        if let Some(i) = larger.or(largest).filter(|_| len > 0) {
            let mut block = state.free.swap_remove(i);
            let old = block.data.len();
            state.held = state.held - old + size;
            state.peak = state.peak.max(state.held);
            drop(state);
            match block.data.resize(size) {
                Ok(()) => return Ok(self.wrap(block)),
                Err(_) => {
                    // Let it go, and make a new one below.
                    let mut state = self.inner.state();
                    state.held = state.held + old - size;
                    let data = state.let_go(block);
                    drop(state);
                    drop(data);
                }
            }
            state = self.inner.state();
        }
        state.allocated += 1;
        state.held += size;
        state.peak = state.peak.max(state.held);
        let (extents, digests) = state.lists.pop().unwrap_or_default();
        drop(state);
        let data = match PinnedBuf::new(size, false, self.inner.hints) {
            Ok(data) => data,
            Err(e) => {
                let mut state = self.inner.state();
                state.allocated -= 1;
                state.held -= size;
                state.lists.push((extents, digests));
                return Err(e);
            }
        };
        Ok(self.wrap(Block {
            index: 0,
            at: 0,
            len: 0,
            data,
            extents,
            digests,
            hole: false,
            unreadable: Vec::new(),
            finished: false,
        }))
    }

    /// Take a buffer, waiting for one to come back when all are in use.
    pub fn get(&self) -> io::Result<Pooled> {
        let mut state = self.inner.state();
        loop {
            if let Some(block) = state.free.pop() {
                return Ok(self.wrap(block));
            }
            if state.allocated < self.inner.capacity {
                state.allocated += 1;
                drop(state);
                return match self.allocate() {
                    Ok(block) => Ok(self.wrap(block)),
                    Err(e) => {
                        self.inner.state().allocated -= 1;
                        Err(e)
                    }
                };
            }
            state = wait(&self.inner.returned, state);
        }
    }

    /// The length of this pool's buffers (0 for a [`Pool::sized`]).
    pub fn buffer_len(&self) -> usize {
        self.inner.buf_len
    }

    /// Buffers created so far, or of a [`Pool::sized`] those alive (for
    /// tests and the allocation benchmark).
    pub fn allocated(&self) -> usize {
        self.inner.state().allocated
    }

    /// Of a [`Pool::sized`]: the most bytes its buffers, in use and
    /// spare, ever held at once.
    pub fn peak(&self) -> usize {
        self.inner.state().peak
    }

    fn allocate(&self) -> io::Result<Block> {
        let len = self.inner.buf_len;
        let data = PinnedBuf::new(len, self.inner.lock_memory, self.inner.hints)?;
        Ok(Block {
            index: 0,
            at: 0,
            len: 0,
            data,
            extents: Vec::new(),
            digests: Vec::new(),
            hole: false,
            unreadable: Vec::new(),
            finished: false,
        })
    }

    fn wrap(&self, block: Block) -> Pooled {
        Pooled {
            block: Some(block),
            pool: Arc::clone(&self.inner),
        }
    }
}

/// What [`Pool::get_len`] rounds its buffers up to, so that spares fit
/// again: one range of pages, as small as a change usually comes. The
/// source counts these buffers in its budget in flight, so a coarser unit
/// would let fewer small changes travel per round trip.
pub const SIZED_UNIT: usize = 64 << 10;

/// The bytes of a [`Pool::get_len`] buffer for `len` bytes: `len` rounded
/// up to [`SIZED_UNIT`], and nothing for nothing.
pub fn sized_len(len: usize) -> usize {
    len.next_multiple_of(SIZED_UNIT)
}

/// A block borrowed from a [`Pool`]; it goes back when dropped.
pub struct Pooled {
    block: Option<Block>,
    pool: Arc<Inner>,
}

impl Deref for Pooled {
    type Target = Block;
    fn deref(&self) -> &Block {
        self.block
            .as_ref()
            .expect("a pooled block is present until dropped")
    }
}

impl DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Block {
        self.block
            .as_mut()
            .expect("a pooled block is present until dropped")
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(mut block) = self.block.take() {
            block.extents.clear();
            block.digests.clear();
            block.at = 0;
            block.hole = false;
            block.unreadable.clear();
            block.finished = false;
            let mut state = self.pool.state();
            if self.pool.sized {
                // An empty buffer has only its lists to give back.
                let mut gone = if block.data.is_empty() {
                    Some(block)
                } else {
                    state.free.push(block);
                    None
                };
                // Over the limit: the smallest spares go, the larger stay.
                while gone.is_some() || state.held > self.pool.capacity {
                    let block = match gone.take() {
                        Some(block) => block,
                        None => {
                            let smallest =
                                (0..state.free.len()).min_by_key(|&i| state.free[i].data.len());
                            let Some(i) = smallest else { break };
                            state.free.swap_remove(i)
                        }
                    };
                    let data = state.let_go(block);
                    drop(state);
                    // Unmapped outside the lock.
                    drop(data);
                    state = self.pool.state();
                }
                return;
            }
            state.free.push(block);
            drop(state);
            self.pool.returned.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use std::time::Duration;

    #[test]
    fn buffers_are_reused_not_reallocated() {
        let pool = Pool::new(2, 4096, false, true);
        for _ in 0..100 {
            let a = pool.get().unwrap();
            let b = pool.get().unwrap();
            assert_eq!(a.data.len(), 4096);
            drop((a, b));
        }
        assert_eq!(pool.allocated(), 2);
    }

    #[test]
    fn returned_blocks_are_clean() {
        let pool = Pool::new(1, 16, false, true);
        let mut a = pool.get().unwrap();
        a.extents.push(Extent {
            start: 0,
            len: 1,
            kind: crate::block::ExtentKind::Data,
            data: 0,
        });
        a.digests.push(7);
        drop(a);
        let b = pool.get().unwrap();
        assert!(b.extents.is_empty() && b.digests.is_empty());
    }

    #[test]
    fn sized_buffers_fit_their_use_and_spares_stay_within_the_limit() {
        const U: usize = SIZED_UNIT;
        let pool = Pool::sized(2 * U, false);
        let small = pool.get_len(10).unwrap();
        assert_eq!(small.data.len(), U);
        let big = pool.get_len(U + 1).unwrap();
        assert_eq!(big.data.len(), 2 * U);
        // In use, beyond the limit: a flow that sends more is not refused.
        assert_eq!(pool.peak(), 3 * U);
        drop(small);
        // Over the limit: the returned buffer goes, not kept.
        assert_eq!(pool.allocated(), 1);
        drop(big);
        assert_eq!(pool.allocated(), 1, "within the limit: kept");
        assert_eq!(pool.get_len(5).unwrap().data.len(), 2 * U);
        // A spare much larger than asked for is cut to size (the sender
        // counted what it asked for), one too small grows: no new buffer.
        let wide = Pool::sized(4 * U, false);
        drop(wide.get_len(2 * U + 1).unwrap());
        let tiny = wide.get_len(1).unwrap();
        assert_eq!(tiny.data.len(), U);
        assert_eq!((wide.allocated(), wide.peak()), (1, 3 * U));
        let other = wide.get_len(U + 1).unwrap();
        assert_eq!((other.data.len(), wide.allocated()), (2 * U, 2), "new");
        drop((tiny, other));
        assert_eq!(wide.get_len(U + 1).unwrap().data.len(), 2 * U, "fits");
        assert_eq!(wide.get_len(3 * U + 1).unwrap().data.len(), 4 * U);
        // Grown from the larger spare; the smaller goes, over the limit.
        assert_eq!((wide.allocated(), wide.peak()), (1, 5 * U));
        // Nothing received: no buffer, and no spare taken for it.
        let none = pool.get_len(0).unwrap();
        assert!(none.data.is_empty());
        let spare = pool.get_len(2 * U).unwrap();
        assert_eq!(spare.data.len(), 2 * U);
        drop((none, spare));
        assert_eq!(pool.allocated(), 1);
        assert_eq!(pool.peak(), 3 * U);
    }

    #[test]
    fn sized_buffers_let_go_leave_their_lists_for_the_next() {
        let pool = Pool::sized(0, false);
        let mut a = pool.get_len(1).unwrap();
        a.extents.reserve(16);
        a.digests.reserve(16);
        drop(a);
        assert_eq!(pool.allocated(), 0);
        let b = pool.get_len(1).unwrap();
        assert!(b.extents.capacity() >= 16 && b.digests.capacity() >= 16);
        assert!(b.extents.is_empty() && b.digests.is_empty());
    }

    #[test]
    fn a_full_pool_waits_for_a_return() {
        let pool = Pool::new(1, 16, false, true);
        let held = pool.get().unwrap();
        let p2 = pool.clone();
        let waiter = thread::spawn(move || p2.get().map(|b| b.data.len()));
        thread::sleep(Duration::from_millis(50));
        assert!(
            !waiter.is_finished(),
            "get() must wait while the pool is empty"
        );
        drop(held);
        assert_eq!(waiter.join().unwrap().unwrap(), 16);
    }
}
