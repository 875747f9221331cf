//! GNU ddrescue's mapfile, pure: parse, format, record results, say what
//! is left.
//!
//! A mapfile is text. Lines starting with `#` are comments. The first other
//! line is the current position, the current phase and the pass
//! (`0x00120000  ?  1`); every line after it is an area, `pos size status`,
//! in hexadecimal (decimal and octal are accepted on reading, as ddrescue
//! does). The areas are sorted, contiguous and start at 0. An area's status
//! is one of:
//!
//! | char | ddrescue's name | what bsync means by it |
//! |------|-----------------|------------------------|
//! | `?`  | non-tried       | not read yet |
//! | `*`  | non-trimmed     | a failed read whose edges were not read again (read by bsync as not tried) |
//! | `/`  | non-scraped     | as `*`: bsync retries the whole area sector by sector |
//! | `-`  | bad sector      | every sector of it failed to read |
//! | `+`  | finished        | read, and the destination holds it |
//!
//! bsync writes only `?`, `-` and `+`: it trims and scrapes a failed block
//! at once, in the same pass, so its maps never hold `*` or `/`; it reads
//! them in maps ddrescue wrote and retries them like `?`.

use std::fmt::Write as _;

/// What is known about an area of the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// `?`: not read yet.
    NonTried,
    /// `*`: failed, edges not read again (ddrescue's trimming phase).
    NonTrimmed,
    /// `/`: failed, not read sector by sector (ddrescue's scraping phase).
    NonScraped,
    /// `-`: failed sector by sector.
    Bad,
    /// `+`: read and at the destination.
    Finished,
}

impl Status {
    /// The mapfile character.
    pub fn char(self) -> char {
        match self {
            Status::NonTried => '?',
            Status::NonTrimmed => '*',
            Status::NonScraped => '/',
            Status::Bad => '-',
            Status::Finished => '+',
        }
    }

    fn from_char(c: char) -> Option<Status> {
        Some(match c {
            '?' => Status::NonTried,
            '*' => Status::NonTrimmed,
            '/' => Status::NonScraped,
            '-' => Status::Bad,
            '+' => Status::Finished,
            _ => return None,
        })
    }
}

/// One area of a map: `size` bytes at `pos`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    /// First byte.
    pub pos: u64,
    /// Length in bytes, at least 1.
    pub size: u64,
    /// What is known of it.
    pub status: Status,
}

impl Area {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.pos + self.size
    }
}

/// A whole map: areas covering `0..size`, sorted, contiguous, adjacent
/// areas of different status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Map {
    areas: Vec<Area>,
    /// The current position line's position.
    pub current: u64,
    /// The pass (1 for a first run; each run on an existing map adds one).
    pub pass: u32,
}

/// The current phase character ddrescue writes: `?` while copying, `-`
/// while retrying bad areas, `+` when finished.
pub fn phase_char(map: &Map, finished: bool) -> char {
    if finished {
        '+'
    } else if map.pass > 1 {
        '-'
    } else {
        '?'
    }
}

impl Map {
    /// A map of `size` bytes, none tried.
    pub fn new(size: u64) -> Map {
        let areas = if size == 0 {
            Vec::new()
        } else {
            vec![Area {
                pos: 0,
                size,
                status: Status::NonTried,
            }]
        };
        Map {
            areas,
            current: 0,
            pass: 1,
        }
    }

    /// The areas in order.
    pub fn areas(&self) -> &[Area] {
        &self.areas
    }

    /// Bytes the map covers.
    pub fn size(&self) -> u64 {
        self.areas.last().map_or(0, Area::end)
    }

    /// Parse a mapfile's text. An error names the line.
    pub fn parse(text: &str) -> Result<Map, String> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
        let Some((n, first)) = lines.next() else {
            return Err("no current position line".into());
        };
        let mut fields = first.split_whitespace();
        let current = fields
            .next()
            .and_then(number)
            .ok_or_else(|| format!("line {n}: a current position, then a status"))?;
        let phase = fields.next().and_then(single);
        if !phase.is_some_and(|c| "?*/-FG+".contains(c)) {
            return Err(format!("line {n}: unknown current status"));
        }
        let pass = match fields.next() {
            None => 1,
            Some(p) => p
                .parse::<u32>()
                .ok()
                .filter(|&p| p >= 1)
                .ok_or_else(|| format!("line {n}: a pass must be a positive number"))?,
        };
        let mut map = Map {
            areas: Vec::new(),
            current,
            pass,
        };
        for (n, line) in lines {
            let mut f = line.split_whitespace();
            let (Some(pos), Some(size), Some(status), None) = (
                f.next().and_then(number),
                f.next().and_then(number),
                f.next().and_then(single).and_then(Status::from_char),
                f.next(),
            ) else {
                return Err(format!("line {n}: expected `pos size status`"));
            };
            if pos != map.size() {
                return Err(format!(
                    "line {n}: area at {pos:#x}, expected one at {:#x}",
                    map.size()
                ));
            }
            if size == 0 {
                continue;
            }
            pos.checked_add(size)
                .ok_or_else(|| format!("line {n}: area past 2^64"))?;
            map.push(Area { pos, size, status });
        }
        Ok(map)
    }

    /// Make the map cover exactly `size` bytes: areas past it are cut,
    /// bytes missing at the end are not tried.
    pub fn fit(&mut self, size: u64) {
        self.areas.retain(|a| a.pos < size);
        if let Some(last) = self.areas.last_mut()
            && last.end() > size
        {
            last.size = size - last.pos;
        }
        let end = self.size();
        if end < size {
            self.push(Area {
                pos: end,
                size: size - end,
                status: Status::NonTried,
            });
        }
        self.current = self.current.min(size);
    }

    fn push(&mut self, area: Area) {
        if let Some(last) = self.areas.last_mut()
            && last.status == area.status
            && last.end() == area.pos
        {
            last.size += area.size;
            return;
        }
        self.areas.push(area);
    }

    /// Record that `len` bytes at `pos` are now `status`. Bytes past the
    /// map's end are ignored.
    pub fn set(&mut self, pos: u64, len: u64, status: Status) {
        let end = pos.saturating_add(len).min(self.size());
        if pos >= end {
            return;
        }
        let old = std::mem::take(&mut self.areas);
        for a in old {
            if a.end() <= pos || a.pos >= end {
                self.push(a);
                continue;
            }
            if a.pos < pos {
                self.push(Area {
                    size: pos - a.pos,
                    ..a
                });
            }
            if a.pos <= pos {
                self.push(Area {
                    pos,
                    size: end - pos,
                    status,
                });
            }
            if a.end() > end {
                self.push(Area {
                    pos: end,
                    size: a.end() - end,
                    status: a.status,
                });
            }
        }
    }

    /// Within the `len` bytes at `pos`, make every area of status `from`
    /// one of status `to`; the others keep theirs.
    pub fn replace(&mut self, pos: u64, len: u64, from: Status, to: Status) {
        let end = pos.saturating_add(len);
        let hits: Vec<(u64, u64)> = self
            .areas
            .iter()
            .filter(|a| a.status == from && a.end() > pos && a.pos < end)
            .map(|a| (a.pos.max(pos), a.end().min(end)))
            .collect();
        for (lo, hi) in hits {
            self.set(lo, hi - lo, to);
        }
    }

    /// Whether every byte of `len` at `pos` is finished.
    pub fn finished(&self, pos: u64, len: u64) -> bool {
        let end = pos + len;
        self.areas
            .iter()
            .filter(|a| a.end() > pos && a.pos < end)
            .all(|a| a.status == Status::Finished)
    }

    /// The areas still to read, in order: everything not finished.
    pub fn remaining(&self) -> impl Iterator<Item = &Area> {
        self.areas.iter().filter(|a| a.status != Status::Finished)
    }

    /// Bytes of each status: (finished, bad, not tried or not finished
    /// trying).
    pub fn totals(&self) -> (u64, u64, u64) {
        let mut t = (0, 0, 0);
        for a in &self.areas {
            match a.status {
                Status::Finished => t.0 += a.size,
                Status::Bad => t.1 += a.size,
                _ => t.2 += a.size,
            }
        }
        t
    }

    /// Whether the retries of this pass go backwards: ddrescue reads
    /// forward on its first pass and alternates after it.
    pub fn reverse(&self) -> bool {
        self.pass.is_multiple_of(2)
    }

    /// The mapfile text: `header` lines as comments, the current position
    /// line, the areas.
    pub fn format(&self, header: &[String], finished: bool) -> String {
        let mut out = String::new();
        for line in header {
            let _ = writeln!(out, "# {line}");
        }
        let _ = writeln!(out, "# current_pos  current_status  current_pass");
        let _ = writeln!(
            out,
            "0x{:08X}     {}               {}",
            self.current,
            phase_char(self, finished),
            self.pass
        );
        let _ = writeln!(out, "#      pos        size  status");
        for a in &self.areas {
            let _ = writeln!(
                out,
                "0x{:08X}  0x{:08X}  {}",
                a.pos,
                a.size,
                a.status.char()
            );
        }
        out
    }
}

/// One character, or nothing.
fn single(f: &str) -> Option<char> {
    let mut c = f.chars();
    let first = c.next()?;
    c.next().is_none().then_some(first)
}

/// A number as ddrescue reads it: `0x` hexadecimal, a leading `0` octal,
/// else decimal.
fn number(f: &str) -> Option<u64> {
    if let Some(hex) = f.strip_prefix("0x").or_else(|| f.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16).ok()
    } else if f.len() > 1 && f.starts_with('0') {
        u64::from_str_radix(&f[1..], 8).ok()
    } else {
        f.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map as GNU ddrescue 1.27 writes it (`ddrescue -d /dev/loop0 out
    /// map` over a device with two bad sectors).
    const DDRESCUE: &str = "\
# Mapfile. Created by GNU ddrescue version 1.27
# Command line: ddrescue -d /dev/loop0 out map
# Start time:   2026-12-02 06:10:01
# Current time: 2026-12-02 06:10:03
# Finished
# current_pos  current_status  current_pass
0x00081000     +               1
#      pos        size  status
0x00000000  0x00080200  +
0x00080200  0x00000200  -
0x00080400  0x00000C00  +
0x00081000  0x00000200  -
0x00081200  0x0077EE00  +
";

    fn area(pos: u64, size: u64, status: Status) -> Area {
        Area { pos, size, status }
    }

    #[test]
    fn parses_what_ddrescue_writes() {
        let map = Map::parse(DDRESCUE).unwrap();
        assert_eq!((map.current, map.pass), (0x81000, 1));
        assert_eq!(map.size(), 0x800000);
        assert_eq!(map.areas().len(), 5);
        assert_eq!(map.areas()[1], area(0x80200, 0x200, Status::Bad));
        assert_eq!(map.totals(), (0x800000 - 0x400, 0x400, 0));
        let bad: Vec<_> = map.remaining().map(|a| a.pos).collect();
        assert_eq!(bad, [0x80200, 0x81000]);
    }

    #[test]
    fn format_round_trips_and_merges() {
        let map = Map::parse(DDRESCUE).unwrap();
        let text = map.format(&["Mapfile. Created by bsync".into()], true);
        assert_eq!(Map::parse(&text).unwrap(), map);
        assert!(text.contains("\n0x00080400  0x00000C00  +\n"), "{text}");
        assert!(
            text.contains("\n0x00081000     +               1\n"),
            "{text}"
        );
    }

    #[test]
    fn reads_old_maps_without_a_pass_and_other_bases() {
        let map = Map::parse("0 ?\n0 1024 +\n02000 0x10 *\n1040 16 /\n").unwrap();
        assert_eq!(map.pass, 1);
        assert_eq!(
            map.areas(),
            [
                area(0, 1024, Status::Finished),
                area(1024, 16, Status::NonTrimmed),
                area(1040, 16, Status::NonScraped),
            ]
        );
    }

    #[test]
    fn refuses_what_is_not_a_map() {
        for (text, why) in [
            ("", "no current position"),
            ("0x0 Q 1\n", "line 1: unknown current status"),
            ("0 ? 0\n", "positive"),
            (
                "0 ?\n0 16 +\n32 16 +\n",
                "line 3: area at 0x20, expected one at 0x10",
            ),
            ("0 ?\n0 16 x\n", "line 2: expected"),
            ("0 ?\n0 16 + extra\n", "line 2: expected"),
            (
                "0 ?\n0 0xffffffffffffffff +\n1 0xffffffffffffffff +\n",
                "expected one at",
            ),
        ] {
            let e = Map::parse(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn set_splits_and_merges_areas() {
        let mut map = Map::new(100);
        map.set(10, 20, Status::Finished);
        map.set(0, 10, Status::Finished);
        assert_eq!(
            map.areas(),
            [
                area(0, 30, Status::Finished),
                area(30, 70, Status::NonTried)
            ]
        );
        map.set(40, 5, Status::Bad);
        map.set(90, 50, Status::Bad);
        assert_eq!(
            map.areas(),
            [
                area(0, 30, Status::Finished),
                area(30, 10, Status::NonTried),
                area(40, 5, Status::Bad),
                area(45, 45, Status::NonTried),
                area(90, 10, Status::Bad),
            ]
        );
        // A bad area shrinks as its sectors come back.
        map.set(30, 60, Status::Finished);
        map.set(92, 2, Status::Finished);
        assert_eq!(
            map.areas(),
            [
                area(0, 90, Status::Finished),
                area(90, 2, Status::Bad),
                area(92, 2, Status::Finished),
                area(94, 6, Status::Bad),
            ]
        );
        assert!(map.finished(0, 90) && !map.finished(80, 11));
        assert_eq!(map.totals(), (92, 8, 0));
    }

    #[test]
    fn replace_changes_one_status_within_a_range() {
        let mut map = Map::new(100);
        map.set(0, 20, Status::Finished);
        map.set(30, 10, Status::Bad);
        map.set(60, 10, Status::Bad);
        // Bad areas from 10 to 65 become not tried; the finished and the
        // bad ones outside stay.
        map.replace(10, 55, Status::Bad, Status::NonTried);
        assert_eq!(
            map.areas(),
            [
                area(0, 20, Status::Finished),
                area(20, 45, Status::NonTried),
                area(65, 5, Status::Bad),
                area(70, 30, Status::NonTried),
            ]
        );
    }

    #[test]
    fn fit_cuts_or_extends_to_the_source() {
        let mut map = Map::parse(DDRESCUE).unwrap();
        map.fit(0x80300);
        assert_eq!(map.areas().last(), Some(&area(0x80200, 0x100, Status::Bad)));
        assert_eq!(map.current, 0x80300);
        map.fit(0x90000);
        assert_eq!(
            map.areas().last(),
            Some(&area(0x80300, 0xfd00, Status::NonTried))
        );
        let mut empty = Map::new(0);
        empty.fit(512);
        assert_eq!(empty.areas(), [area(0, 512, Status::NonTried)]);
    }

    #[test]
    fn passes_alternate_direction_and_phase() {
        let mut map = Map::new(10);
        assert!(!map.reverse());
        assert_eq!(phase_char(&map, false), '?');
        map.pass = 2;
        assert!(map.reverse());
        assert_eq!(phase_char(&map, false), '-');
        assert_eq!(phase_char(&map, true), '+');
    }
}
