//! Numbers as people read them: sizes in binary units, and plurals.

/// Human size with binary units and one decimal, e.g. `931.5 GiB`,
/// `4.0 MiB`; plain bytes below 1 KiB (`512 B`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && n >> (10 * (unit + 1)) > 0 {
        unit += 1;
    }
    if unit == 0 {
        return format!("{n} B");
    }
    // Integer tenths, rounded half up; u128 so that u64::MAX * 10 fits.
    let div = 1u128 << (10 * unit);
    let mut tenths = (u128::from(n) * 10 + div / 2) / div;
    // 1048575 B would otherwise print as "1024.0 KiB".
    if tenths >= 10240 && unit + 1 < UNITS.len() {
        unit += 1;
        tenths = (u128::from(n) * 10 + (div << 9)) / (div << 10);
    }
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
}

/// `1 block`, `2 blocks`.
pub fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_examples() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(4 << 20), "4.0 MiB");
        assert_eq!(human_bytes(10 << 30), "10.0 GiB");
        assert_eq!(human_bytes(1_953_525_168 * 512), "931.5 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
        // Rounding never shows 1024.0 of a unit.
        assert_eq!(human_bytes((1 << 20) - 1), "1.0 MiB");
        assert_eq!(human_bytes((1 << 20) - 52), "1023.9 KiB");
    }
}
