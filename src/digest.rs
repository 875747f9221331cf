//! TEMPORARY SHIM (replaced by the real digest.rs)
#![allow(missing_docs)]
pub const SUB_BLOCK: usize = 64 * 1024;
pub type Digest = u128;
pub fn sub_block_size(block_size: usize) -> usize {
    SUB_BLOCK.min(block_size)
}

const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
const PRIME: u128 = 0x0000000001000000000000000000013B;
pub fn fnv1a128(data: &[u8]) -> u128 {
    fnv1a128_update(OFFSET, data)
}
pub fn fnv1a128_update(mut h: u128, data: &[u8]) -> u128 {
    for &b in data {
        h = (h ^ b as u128).wrapping_mul(PRIME);
    }
    h
}
pub fn digest(salt: u128, data: &[u8]) -> Digest {
    let mut lanes = [0u128; 16];
    for (k, l) in lanes.iter_mut().enumerate() {
        *l = fnv1a128_update(fnv1a128(&salt.to_le_bytes()), &[k as u8]);
    }
    for (i, &b) in data.iter().enumerate() {
        let l = &mut lanes[i % 16];
        *l = (*l ^ b as u128).wrapping_mul(PRIME);
    }
    let mut h = OFFSET;
    for l in lanes {
        h = fnv1a128_update(h, &l.to_le_bytes());
    }
    fnv1a128_update(h, &(data.len() as u64).to_le_bytes())
}
pub fn digest_sub_blocks(salt: u128, block: &[u8], sub: usize, out: &mut Vec<Digest>) {
    out.clear();
    out.extend(block.chunks(sub).map(|c| digest(salt, c)));
}
