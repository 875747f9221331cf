//! The source's book of outstanding blocks and its rules, without threads,
//! frames or I/O: what is parked and sent, what an acknowledgement covers,
//! what a repeated answer means after a reconnect, and when the flight
//! budgets let more work out. `source.rs` holds its lock and moves the
//! frames.
//!
//! Both budgets count memory really held: what parked blocks keep and
//! what finishers read back into (their buffers' capacity, spares
//! included) here, and what the destination holds of the blocks in flight
//! until it writes them there. Each stays within `config::flight_cap`: the
//! budgets within it less one block, the one block the lowest
//! unacknowledged (or the one finisher reading back) may always add.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use super::exchange::{Differing, Held, Meter, RoundTrip, Spares, flight_budget};
use crate::digest::Digest;
use crate::pool::sized_len;
use crate::proto;

/// How many times a block may be sent before the session gives up.
pub const MAX_ATTEMPTS: u8 = 3;

/// A block sent (or refined) and not yet acknowledged.
pub struct Sent {
    /// Its length, for progress.
    pub bytes: u64,
    pub attempts: u8,
    /// Set aside while its `Refine` is answered.
    pub waiting: Option<Parked>,
    /// Its `Block` went out at least once: only now may an acknowledgement
    /// cover it.
    pub sent: bool,
    /// What the destination holds of its `Block` from arrival to write
    /// (its data in a `pool::sized_len` buffer), counted in flight until
    /// acknowledged.
    pub held: u64,
}

/// A block set aside until the destination's page digests arrive.
pub struct Parked {
    /// Its differing ranges.
    pub kept: Differing,
    /// The destination's page digests of those ranges, once arrived.
    pub theirs: Option<Vec<Digest>>,
    /// The first time this block is sent: it counts in the summary.
    pub first: bool,
    /// When its `Refine` went out: a round-trip sample when answered.
    pub asked: Instant,
}

/// Work for the finishers, filed by lane readers (which never send).
pub enum Task {
    /// The `Pages` of a parked block arrived: send its `Block`.
    Finish(u64),
    /// Asked again for a parked block: send its `Refine` again.
    Refine(u64),
    /// Asked again for a block already sent: read it back and start over
    /// with these range digests.
    Resend(u64, Vec<Digest>),
}

/// The source's book of outstanding blocks.
#[derive(Default)]
pub struct Ledger {
    /// Destination range digests not yet used, by block.
    pub remote: HashMap<u64, Vec<Digest>>,
    /// Blocks sent or refined and not yet acknowledged. A map that reuses
    /// its table: a B-tree would allocate a node every few blocks once the
    /// window outgrows a leaf.
    pub unacked: HashMap<u64, Sent>,
    /// Work for the finishers.
    pub tasks: VecDeque<Task>,
    /// Every block before this one is written at the destination.
    pub acked_to: u64,
    /// The source's pages before this block were dropped from the page
    /// cache (the reader keeps them for the pages read back).
    pub dropped: u64,
    pub complete: Option<u128>,
    /// `Bye` went out: lanes closing now is expected.
    pub finished: bool,
    /// A lane was rejoined: repeated answers are expected now.
    pub rejoined: bool,
    /// Digest lists done with, reused so a block costs no allocation.
    pub spare: Vec<Vec<Digest>>,
    /// `Refine` bitmaps done with, reused likewise.
    pub spare_maps: Vec<Vec<u8>>,
    /// Kept ranges done with, reused likewise within the memory left.
    pub spare_kept: Spares<Differing>,
    /// Finishers' buffers for pages read back, reused likewise.
    pub spare_back: Spares<Vec<u8>>,
    /// Memory of the parked blocks' kept ranges, and of those being kept.
    pub parked: u64,
    /// Memory of the finishers' buffers of pages read back, in use.
    pub reading: u64,
    /// How fast blocks are parked, and sent.
    pub parking: Meter,
    pub sending: Meter,
    /// What the destination holds of the blocks sent and not yet
    /// acknowledged ([`Sent::held`]).
    pub in_flight: u64,
    /// The most memory outstanding work of each kind may hold.
    pub memory: u64,
    /// The most either budget lets out: `memory` less the most one block
    /// holds, which the lowest unacknowledged block may always add.
    pub limit: u64,
    /// From `Refine` to `Pages`.
    pub rtt: RoundTrip,
}

impl Ledger {
    /// The book of a session from block `first`, whose outstanding work of
    /// each kind may hold `memory` bytes, in blocks of `block_size`.
    pub fn new(first: u64, memory: u64, block_size: usize) -> Ledger {
        let pages = proto::pages(block_size, proto::PAGE);
        let block = sized_len(block_size) + pages * proto::DIGEST_LEN;
        Ledger {
            acked_to: first,
            dropped: first,
            memory,
            limit: memory.saturating_sub(block as u64),
            ..Ledger::default()
        }
    }

    /// Memory neither parked, nor being kept, nor read back: what spares
    /// may hold, `other`'s spares taken.
    fn room<T: Held>(&self, other: &Spares<T>) -> usize {
        let used = self.parked + self.reading + other.bytes() as u64;
        usize::try_from(self.memory.saturating_sub(used)).unwrap_or(usize::MAX)
    }

    /// `parked` left the parking: give back its bytes and buffers.
    pub fn recycle(&mut self, parked: Parked) {
        self.parked = self.parked.saturating_sub(parked.kept.bytes() as u64);
        if let Some(theirs) = parked.theirs {
            self.spare.push(theirs);
        }
        let mut kept = parked.kept;
        self.spare_maps.push(std::mem::take(&mut kept.ranges));
        // Kept while parked blocks and spares together stay within the
        // memory: a long round trip's parked blocks then cost no
        // allocation each, and spares never outgrow the budget.
        let room = self.room(&self.spare_back);
        self.spare_kept.give(kept, room);
    }

    /// A buffer of `len` bytes for a finisher to read back a block's
    /// pages into, if the memory allows: with what is parked and read
    /// back by other finishers it stays within [`Ledger::limit`], or no
    /// other finisher is reading back (one always may, so finishing never
    /// waits on itself). Counted until [`Ledger::give_back`].
    pub fn take_back(&mut self, len: usize) -> Option<Vec<u8>> {
        if self.reading > 0 && self.parked + self.reading + len as u64 > self.limit {
            return None;
        }
        let room = self.room(&self.spare_kept);
        let mut buf = self.spare_back.take(len, room);
        buf.resize(len, 0);
        self.reading += buf.capacity() as u64;
        Some(buf)
    }

    /// A finisher is done with `buf` from [`Ledger::take_back`].
    pub fn give_back(&mut self, buf: Vec<u8>) {
        self.reading = self.reading.saturating_sub(buf.capacity() as u64);
        let room = self.room(&self.spare_kept);
        self.spare_back.give(buf, room);
    }

    /// If block `index` may park `need` bytes (see [`Ledger::may_park`]):
    /// they are counted as parked now, before they are copied, and a
    /// spare is handed out to copy them into.
    pub fn make_room(&mut self, index: u64, need: usize) -> Option<Differing> {
        if !self.may_park(index, need as u64) {
            return None;
        }
        self.parked += need as u64;
        let room = self.room(&self.spare_back);
        Some(self.spare_kept.take(need, room))
    }

    /// Park `parked` for block `index`, of `bytes` bytes, for which
    /// `reserved` bytes were counted by [`Ledger::make_room`].
    pub fn park(&mut self, index: u64, bytes: u64, parked: Parked, reserved: usize) {
        let size = parked.kept.bytes() as u64;
        self.parked = (self.parked + size).saturating_sub(reserved as u64);
        self.parking.add(size, Instant::now(), self.rtt.get());
        self.unacked.insert(
            index,
            Sent {
                bytes,
                attempts: 1,
                waiting: Some(parked),
                sent: false,
                held: 0,
            },
        );
    }
}

/// What a `Digests` frame for a block means to the ledger.
pub enum Digests {
    /// Already written: ignore it.
    Stale,
    /// New: filed for a worker.
    Filed,
    /// Asked again after a reconnect: a task was filed, or nothing needs
    /// doing (its `Block` goes out soon on the new connection).
    Again,
    /// Asked again once too often.
    Exhausted,
}

/// What a `Pages` frame for a block means to the ledger.
pub enum Pages {
    /// Filed: a finisher sends the block.
    Filed,
    /// Answered twice around a reconnect; the first answer counted.
    Repeated,
    /// Not asked for.
    Unasked,
    /// Not the count asked for (this many).
    Miscounted(usize),
}

impl Ledger {
    /// The flight budgets now, at most [`Ledger::limit`] each: (parked
    /// bytes, bytes in flight), each twice the round trip times the rate
    /// it is filled at.
    pub fn budgets(&self) -> (u64, u64) {
        let rtt = self.rtt.get();
        (
            flight_budget(rtt, self.parking.peak(), self.limit),
            flight_budget(rtt, self.sending.peak(), self.limit),
        )
    }

    /// Whether block `index` may park `size` bytes more. The lowest
    /// unacknowledged block always may, so the budget cannot stall the
    /// session.
    pub fn may_park(&self, index: u64, size: u64) -> bool {
        let (budget, _) = self.budgets();
        self.parked == 0 || self.parked + size <= budget || index == self.acked_to
    }

    /// The next task a finisher may take: over the budget in flight only
    /// the lowest unacknowledged block's `Block` goes, since its
    /// acknowledgement is what frees the budget.
    pub fn next_task(&mut self) -> Option<Task> {
        let (_, budget) = self.budgets();
        let room = self.in_flight == 0 || self.in_flight < budget;
        let next = self.tasks.iter().position(|task| match task {
            Task::Finish(index) => room || *index == self.acked_to,
            Task::Refine(_) | Task::Resend(..) => true,
        })?;
        self.tasks.remove(next)
    }

    /// Everything before block `upto` is written: returns the blocks and
    /// bytes newly done.
    pub fn acknowledge(&mut self, upto: u64) -> (u64, u64) {
        let (mut blocks, mut bytes) = (0, 0);
        let mut done = Vec::new();
        let in_flight = &mut self.in_flight;
        self.unacked.retain(|&index, sent| {
            if index >= upto {
                return true;
            }
            done.extend(sent.waiting.take());
            *in_flight = in_flight.saturating_sub(sent.held);
            blocks += 1;
            bytes += sent.bytes;
            false
        });
        for parked in done {
            self.recycle(parked);
        }
        self.acked_to = self.acked_to.max(upto);
        (blocks, bytes)
    }

    /// The first block below `upto` (of `end`) that an acknowledgement of
    /// every block before `upto` would cover though its `Block` never went
    /// out: a protocol error, never a reason to reconnect.
    pub fn first_unsent(&self, upto: u64, end: u64) -> Option<u64> {
        if upto <= self.acked_to {
            return None; // Cumulative: already covered by an earlier one.
        }
        // Blocks from acked_to on are acknowledged only once their `Block`
        // went out: each below `upto` must wait in `unacked`, sent at least
        // once. No more than `unacked.len()` of them can, so looking that
        // far finds the first gap whatever `upto` says.
        let room = u64::try_from(self.unacked.len()).unwrap_or(u64::MAX);
        let limit = upto.min(end).min(self.acked_to.saturating_add(room));
        let sent = |b: &u64| self.unacked.get(b).is_some_and(|s| s.sent);
        (self.acked_to..limit)
            .find(|b| !sent(b))
            .or((upto > limit).then_some(limit))
    }

    /// The destination's range digests `list` of block `index` arrived.
    pub fn digests(&mut self, index: u64, list: Vec<Digest>) -> Digests {
        if index < self.acked_to {
            self.spare.push(list);
            return Digests::Stale;
        }
        let Some(sent) = self.unacked.get_mut(&index) else {
            self.remote.insert(index, list);
            return Digests::Filed;
        };
        // Asked again after a reconnect: what we sent was lost.
        if sent.attempts >= MAX_ATTEMPTS {
            self.spare.push(list);
            return Digests::Exhausted;
        }
        sent.attempts += 1;
        match &sent.waiting {
            // Its Block goes out soon, on the new connection.
            Some(parked) if parked.theirs.is_some() => self.spare.push(list),
            Some(_) => {
                self.spare.push(list);
                self.tasks.push_back(Task::Refine(index));
            }
            None => {
                // Its `Block` was lost with the connection: the destination
                // holds none of it, and the resent one is counted anew.
                self.in_flight = self.in_flight.saturating_sub(sent.held);
                sent.held = 0;
                self.tasks.push_back(Task::Resend(index, list));
            }
        }
        Digests::Again
    }

    /// The destination's page digests (`count` of them, read by `read`)
    /// of block `index`, in the session's `blocks`, arrived.
    pub fn pages(
        &mut self,
        index: u64,
        count: usize,
        blocks: std::ops::Range<u64>,
        read: impl FnOnce(&mut Vec<Digest>),
    ) -> Pages {
        let parked = self
            .unacked
            .get_mut(&index)
            .and_then(|s| s.waiting.as_mut())
            .filter(|w| w.theirs.is_none());
        let Some(parked) = parked else {
            if blocks.contains(&index) && (self.rejoined || index < self.acked_to) {
                return Pages::Repeated;
            }
            return Pages::Unasked;
        };
        if count != parked.kept.asked() {
            return Pages::Miscounted(parked.kept.asked());
        }
        let mut list = self.spare.pop().unwrap_or_default();
        read(&mut list);
        parked.theirs = Some(list);
        let took = parked.asked.elapsed();
        self.rtt.sample(took);
        self.tasks.push_back(Task::Finish(index));
        Pages::Filed
    }
}

#[cfg(test)]
mod tests {
    use super::super::exchange::Keep;
    use super::*;

    fn sent(sent: bool, parked: Option<Parked>) -> Sent {
        Sent {
            bytes: 10,
            attempts: 1,
            waiting: parked,
            sent,
            held: 100,
        }
    }

    fn parked() -> Parked {
        Parked {
            kept: Differing::default(),
            theirs: None,
            first: true,
            asked: Instant::now(),
        }
    }

    #[test]
    fn acknowledgements_free_what_they_cover_and_only_that() {
        let mut l = Ledger::default();
        for i in 0..4 {
            l.unacked.insert(i, sent(true, None));
        }
        l.in_flight = 400;
        assert_eq!(l.acknowledge(3), (3, 30));
        assert_eq!((l.acked_to, l.in_flight, l.unacked.len()), (3, 100, 1));
        assert_eq!(l.acknowledge(2), (0, 0), "cumulative: nothing again");
        assert_eq!(l.acked_to, 3);
    }

    #[test]
    fn an_acknowledgement_of_a_block_never_sent_is_found() {
        let mut l = Ledger::default();
        l.unacked.insert(0, sent(true, None));
        l.unacked.insert(1, sent(false, Some(parked())));
        assert_eq!(l.first_unsent(1, 10), None);
        assert_eq!(l.first_unsent(2, 10), Some(1));
        // Far beyond what is outstanding: the first gap, found quickly.
        assert_eq!(l.first_unsent(u64::MAX, 10), Some(1));
        l.unacked.get_mut(&1).unwrap().sent = true;
        assert_eq!(l.first_unsent(5, 10), Some(2));
    }

    #[test]
    fn over_budget_only_the_lowest_unacknowledged_block_goes() {
        let mut l = Ledger::new(5, 64 << 20, 1 << 20);
        l.in_flight = 1 << 40; // far over any budget
        l.tasks
            .extend([Task::Finish(7), Task::Finish(5), Task::Refine(9)]);
        assert!(matches!(l.next_task(), Some(Task::Finish(5))));
        assert!(matches!(l.next_task(), Some(Task::Refine(9))));
        assert!(l.next_task().is_none(), "block 7 waits");
        l.in_flight = 0;
        assert!(matches!(l.next_task(), Some(Task::Finish(7))));
        // Parking likewise.
        l.parked = 1 << 40;
        assert!(!l.may_park(6, 1));
        assert!(l.may_park(5, 1));
    }

    #[test]
    fn parked_blocks_and_their_spares_never_hold_more_than_the_memory() {
        // Blocks of four ranges, 2 MiB of memory; rounds that keep one
        // range of many blocks leave many small spares, which rounds that
        // keep whole blocks must not hold on to beside their own.
        let (block, memory) = (256 << 10, 2 << 20);
        let mut l = Ledger::new(0, memory, block);
        assert!(l.limit + (block as u64) < memory);
        let data = vec![7u8; block];
        let pages = vec![1; block / proto::PAGE];
        let content = super::super::Content::Bytes(&data);
        let mut high = 0;
        for round in 0..4u64 {
            let ranges = vec![if round % 2 == 0 { 0b0001 } else { 0b1111 }];
            let need = Differing::need(content, pages.len(), &ranges, proto::PAGE, Keep::Bytes);
            // Park as many as the budget lets, the lowest always.
            let mut index = round * 100;
            l.acked_to = index;
            while let Some(reuse) = l.make_room(index, need) {
                let kept = Differing::keep(
                    content,
                    &pages,
                    &[],
                    ranges.clone(),
                    proto::PAGE,
                    reuse,
                    Keep::Bytes,
                );
                l.park(index, block as u64, parked_with(kept), need);
                high = high.max(l.parked + l.spare_kept.bytes() as u64);
                index += 1;
            }
            assert!(index > round * 100 + 1, "round {round}: several park");
            // Every parked block answered and sent: its buffers are spares.
            l.acknowledge(index);
            high = high.max(l.parked + l.spare_kept.bytes() as u64);
            assert_eq!(l.parked, 0);
        }
        assert!(high <= memory, "{high} held, {memory} allowed");
        assert!(l.spare_kept.bytes() > 0, "spares are kept for reuse");
    }

    #[test]
    fn buffers_read_back_stay_within_the_memory_but_one_finisher_always_reads() {
        let block = 1 << 20;
        let mut l = Ledger::new(0, 3 << 20, block);
        let limit = l.limit as usize;
        // Nothing else read back: a finisher may, whatever is parked.
        l.parked = l.limit;
        let first = l.take_back(block).expect("one always may");
        assert_eq!((first.len(), l.reading), (block, block as u64));
        // Another must fit with what is parked and read back.
        assert!(l.take_back(1).is_none());
        l.parked = 0;
        let second = l.take_back(limit - block).expect("within the limit");
        assert!(l.take_back(1).is_none());
        l.give_back(first);
        l.give_back(second);
        assert_eq!(l.reading, 0);
        // Returned buffers are spares within the memory, reused.
        assert!(l.spare_back.bytes() <= l.memory as usize);
        let again = l.take_back(block).unwrap();
        assert!(again.capacity() >= block);
        assert_eq!(l.reading, again.capacity() as u64);
    }

    fn parked_with(kept: Differing) -> Parked {
        Parked { kept, ..parked() }
    }

    #[test]
    fn digests_asked_again_file_the_right_task_until_attempts_run_out() {
        let mut l = Ledger::default();
        assert!(matches!(l.digests(0, vec![1]), Digests::Filed));
        l.unacked.insert(1, sent(true, None));
        l.unacked.insert(2, sent(false, Some(parked())));
        l.in_flight = 200;
        assert!(matches!(l.digests(1, vec![1]), Digests::Again));
        // Block 1's data was lost: no longer in flight.
        assert_eq!((l.in_flight, l.unacked[&1].held), (100, 0));
        assert!(matches!(l.digests(2, vec![1]), Digests::Again));
        let tasks: Vec<_> = l.tasks.drain(..).collect();
        assert!(matches!(tasks[..], [Task::Resend(1, _), Task::Refine(2)]));
        assert!(matches!(l.digests(1, vec![1]), Digests::Again));
        assert!(matches!(l.digests(1, vec![1]), Digests::Exhausted));
        l.acked_to = 3;
        assert!(matches!(l.digests(2, vec![1]), Digests::Stale));
    }

    #[test]
    fn page_digests_are_filed_once_and_counted() {
        let mut l = Ledger::default();
        l.unacked.insert(4, sent(false, Some(parked())));
        assert!(matches!(l.pages(4, 3, 0..9, |_| {}), Pages::Miscounted(0)));
        assert!(matches!(l.pages(4, 0, 0..9, |_| {}), Pages::Filed));
        assert!(matches!(l.pages(4, 0, 0..9, |_| {}), Pages::Unasked));
        l.rejoined = true;
        assert!(matches!(l.pages(4, 0, 0..9, |_| {}), Pages::Repeated));
        assert!(matches!(l.tasks.pop_front(), Some(Task::Finish(4))));
    }
}
