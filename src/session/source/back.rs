//! Reading back what a parked block's comparison left on the source: the
//! worker that found a block's ranges different keeps only their page
//! digests ([`Keep::ReadBack`]), and when the destination's page digests
//! arrive, the finisher reads the pages that differ from the source again
//! (the reader left them in the page cache, `reader::read_blocks_keeping`),
//! into a buffer the ledger lends within the memory of the flight budget.
//! So what waits a round trip is 16 bytes a page, and a long link never
//! stalls the comparison for want of memory. Under `--rescue` the bytes
//! are kept instead: a failing disk's second read may not give what the
//! first did.

use super::{FrameScratch, SourceCtx};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::session::exchange::Keep;
use crate::session::ledger::Parked;

impl SourceCtx<'_> {
    /// What a parked block keeps of its differing ranges, `ranges` being
    /// its range digests: nothing, its pages that differ are read back
    /// when the destination's page digests arrive, so that parking costs
    /// 16 bytes a page and a long round trip never waits for memory;
    /// under `--rescue` their bytes, as a failing disk's second read may
    /// not give what the first did.
    pub(super) fn keep<'r>(&self, ranges: &'r [Digest]) -> Keep<'r> {
        if self.disk.rescue().is_some() {
            Keep::Bytes
        } else {
            Keep::ReadBack(ranges)
        }
    }

    /// The pages of parked block `index` that differ, read back from the
    /// source into a buffer the ledger lends (once memory allows); none
    /// when its bytes were kept.
    pub(super) fn read_back(
        &self,
        index: u64,
        parked: &Parked,
        scratch: &mut FrameScratch,
    ) -> Result<Option<Vec<u8>>> {
        let theirs = parked.theirs.as_deref().unwrap_or_default();
        let len = parked
            .kept
            .to_read(theirs, self.p.page(), &mut scratch.spans);
        if scratch.spans.is_empty() {
            return Ok(None);
        }
        let Some(mut buf) = self.state.wait_for(self.abort, |st| st.take_back(len)) else {
            return Err(Error::Failed(format!("block {index}: the session stopped")));
        };
        let offset = self.p.geo.offset(index);
        let mut at = 0;
        let mut read = Ok(());
        for span in &scratch.spans {
            let piece = &mut buf[at..at + span.len()];
            at += span.len();
            read = match self.disk.read_at(piece, offset + span.start as u64) {
                Ok(n) if n == piece.len() => Ok(()),
                Ok(_) => Err(Error::Failed(format!(
                    "{}: read at block {index}: the source shrank during the run",
                    self.disk.label()
                ))),
                Err(e) => Err(Error::io(
                    self.disk.label(),
                    format!("read at block {index}"),
                    e,
                )),
            };
            if read.is_err() {
                break;
            }
        }
        match read {
            Ok(()) => Ok(Some(buf)),
            Err(e) => {
                self.state.lock().give_back(buf);
                Err(e)
            }
        }
    }
}
