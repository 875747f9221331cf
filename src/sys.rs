//! TEMPORARY SHIM (replaced by the real sys.rs)
#![allow(missing_docs)]
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    Sequential,
    DontNeed,
    WillNeed,
}
pub fn block_device_size(f: &File) -> io::Result<u64> {
    use std::io::Seek;
    let mut f = f;
    f.seek(io::SeekFrom::End(0))
}
pub fn read_ahead(_f: &File) -> io::Result<u64> {
    Err(io::ErrorKind::Unsupported.into())
}
pub fn set_read_ahead(_f: &File, _b: u64) -> io::Result<()> {
    Ok(())
}
pub fn fadvise(_f: &File, _o: u64, _l: u64, _a: Advice) -> io::Result<()> {
    Ok(())
}
pub fn start_writeback(_f: &File, _o: u64, _l: u64) -> io::Result<()> {
    Ok(())
}
pub fn wait_writeback(_f: &File, _o: u64, _l: u64) -> io::Result<()> {
    Ok(())
}
pub fn is_block_device(f: &File) -> io::Result<bool> {
    Ok(f.metadata()?.file_type().is_block_device())
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cleared {
    WroteZeros,
}
pub fn clear_range(f: &File, offset: u64, len: u64, _d: bool) -> io::Result<Cleared> {
    f.write_all_at(&vec![0; len as usize], offset)?;
    Ok(Cleared::WroteZeros)
}
pub fn pwrite_all(f: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    f.write_all_at(buf, offset)
}
pub fn pread_full(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
pub struct PinnedBuf(Vec<u8>);
impl PinnedBuf {
    pub fn new(len: usize) -> io::Result<PinnedBuf> {
        Ok(PinnedBuf(vec![0; len]))
    }
    pub fn new_unlocked(len: usize) -> io::Result<PinnedBuf> {
        Self::new(len)
    }
}
impl std::ops::Deref for PinnedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}
impl std::ops::DerefMut for PinnedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}
