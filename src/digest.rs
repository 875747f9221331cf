//! TEMPORARY SHIM (replaced by the real digest.rs)
#![allow(missing_docs)]
pub const SUB_BLOCK: usize = 64 * 1024;
pub type Digest = u128;
pub fn sub_block_size(block_size: usize) -> usize {
    SUB_BLOCK.min(block_size)
}
