//! The source's lane readers: what the destination sends on a lane (range
//! digests, page digests, acknowledgements, the completion) is checked and
//! filed in the source's [`Ledger`](crate::session::ledger::Ledger) here,
//! and nothing is sent: the workers and finishers of `source.rs` act on
//! what is filed, so a full socket can never stop a lane from reading the
//! answers that would empty it.

use super::SourceCtx;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::net::FrameReader;
use crate::progress::Stats;
use crate::proto::{self, Frame};
use crate::reader;
use crate::session::ledger;
use crate::session::unexpected;

impl SourceCtx<'_> {
    /// Everything before block `upto` (exclusive) is written.
    fn acknowledge(&self, upto: u64) {
        // A dry run's blocks are finished once the patch is whole.
        if let Some(rescue) = self.disk.rescue().filter(|_| self.dry.is_none()) {
            let from = self.state.lock().acked_to;
            let geo = self.p.geo;
            for index in from..upto {
                // A map that cannot be written now is written at the end.
                let _ = rescue.done(index, geo.offset(index), geo.len(index) as u64);
            }
        }
        let mut st = self.state.lock();
        let (blocks, bytes) = st.acknowledge(upto);
        Stats::add(&self.stats.blocks_done, blocks);
        Stats::add(&self.stats.bytes_done, bytes);
        // Acknowledgements are cumulative: every block before acked_to is
        // written, whatever -w.
        self.stats
            .resume_at
            .store(st.acked_to, std::sync::atomic::Ordering::Relaxed);
        // The reader keeps the pages it read cached, for those read back;
        // an acknowledged block's are done with.
        let geo = self.p.geo;
        let at = |block| geo.offset(block).min(geo.size);
        let (from, to) = (at(st.dropped), at(st.acked_to));
        let due = reader::drop_due(from, to, geo.size);
        if due {
            st.dropped = st.acked_to;
        }
        drop(st);
        self.state.notify();
        if due {
            reader::drop_read(self.disk, from, to);
        }
    }

    /// Whether an acknowledgement (or completion) of every block before
    /// `upto` covers only blocks that were sent: one that covers a block
    /// never sent is a protocol error, never a reason to reconnect.
    fn check_covered(&self, peer: &str, what: &str, upto: u64) -> Result<()> {
        match self.state.lock().first_unsent(upto, self.p.geo.blocks()) {
            None => Ok(()),
            Some(block) => Err(Error::protocol(
                peer,
                format!("{what} covers block {block}, which was never sent"),
            )),
        }
    }

    /// Read range digests, page digests, acknowledgements and the end of
    /// the session off a lane. Anything that needs sending is left to the
    /// finishers.
    pub(super) fn lane_loop(&self, reader: &mut FrameReader) -> Result<()> {
        let end = self.p.geo.blocks();
        // Once per call, not per frame: run_lane calls again after a rejoin.
        let peer = reader.peer.clone();
        loop {
            let peer = peer.as_str();
            match reader.read("digests or acknowledgements")? {
                Frame::Digests { index, digests } => {
                    if index < self.p.first || index >= end {
                        return Err(Error::protocol(
                            peer,
                            format!("digests for block {index} out of range"),
                        ));
                    }
                    let mut list = self.state.lock().spare.pop().unwrap_or_default();
                    proto::read_digests(digests, &mut list);
                    let filed = self.state.lock().digests(index, list);
                    if let ledger::Digests::Exhausted = filed {
                        return Err(Error::Failed(format!(
                            "block {index}: not acknowledged after {} attempts",
                            ledger::MAX_ATTEMPTS
                        )));
                    }
                    self.state.notify();
                }
                Frame::Pages { index, digests } => self.pages(peer, index, digests)?,
                Frame::Ack { index } => {
                    self.check_covered(peer, "an acknowledgement", index.saturating_add(1))?;
                    self.acknowledge(index + 1);
                }
                Frame::Complete { blocks, verify } => {
                    if blocks != end {
                        return Err(Error::protocol(
                            peer,
                            format!(
                                "the destination completed {blocks} blocks, the session has {end}"
                            ),
                        ));
                    }
                    self.check_covered(peer, "the completion", end)?;
                    self.state.lock().complete = Some(verify);
                    self.acknowledge(end);
                }
                other => return Err(unexpected(peer, &other)),
            }
        }
    }

    /// File the destination's page digests for a parked block and hand it
    /// to a finisher.
    fn pages(&self, peer: &str, index: u64, digests: &[u8]) -> Result<()> {
        let bad = |what: String| Error::protocol(peer, format!("block {index}: {what}"));
        let n = digests.len() / proto::DIGEST_LEN;
        let exact = digests.len().is_multiple_of(proto::DIGEST_LEN);
        let blocks = self.p.first..self.p.geo.blocks();
        let read = |list: &mut Vec<Digest>| proto::read_digests(digests, list);
        let filed =
            self.state
                .lock()
                .pages(index, if exact { n } else { usize::MAX }, blocks, read);
        match filed {
            ledger::Pages::Filed => {
                self.state.notify();
                Ok(())
            }
            ledger::Pages::Repeated => Ok(()),
            ledger::Pages::Miscounted(want) => {
                Err(bad(format!("{n} page digests, asked for {want}")))
            }
            ledger::Pages::Unasked => Err(bad("page digests that were not asked for".into())),
        }
    }
}
