//! PostgreSQL write-ahead-log positions (`pg_lsn`) and the WAL segment file
//! names derived from them.

use std::fmt;
use std::ops::{Add, Sub};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A WAL position, printed `X/X` like PostgreSQL's `pg_lsn`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

/// Segment sizes PostgreSQL accepts (`initdb --wal-segsize`): powers of two, 1 MiB to 1 GiB.
const MIN_WAL_SEG_SIZE: u64 = 1 << 20;
const MAX_WAL_SEG_SIZE: u64 = 1 << 30;

/// Default WAL segment size (16 MiB).
pub const DEFAULT_WAL_SEG_SIZE: u64 = 16 << 20;

impl Lsn {
    /// PostgreSQL's `InvalidXLogRecPtr` (`0/0`).
    pub const INVALID: Lsn = Lsn(0);

    /// Whether this is `0/0`, which PostgreSQL uses for "no position".
    pub fn is_valid(self) -> bool {
        self != Self::INVALID
    }

    /// `self + bytes`, or `None` on overflow.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }

    /// Bytes from `earlier` to `self`, or `None` when `earlier` is ahead.
    pub fn checked_sub(self, earlier: Lsn) -> Option<u64> {
        self.0.checked_sub(earlier.0)
    }

    /// Bytes from `earlier` to `self`, zero when `earlier` is ahead (lag never goes negative).
    pub fn saturating_sub(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Number of the WAL segment holding this position (`XLByteToSeg`).
    ///
    /// `wal_seg_size` must be valid (see [`validate_wal_seg_size`]); zero is treated as 1
    /// so the function cannot panic.
    pub fn segment_number(self, wal_seg_size: u64) -> u64 {
        self.0 / wal_seg_size.max(1)
    }

    /// First position of the segment holding this position.
    pub fn segment_start(self, wal_seg_size: u64) -> Lsn {
        let size = wal_seg_size.max(1);
        Lsn(self.0 - self.0 % size)
    }

    /// The 24-hex-digit WAL file name holding this position (PostgreSQL's `XLogFileName`).
    pub fn wal_file_name(self, timeline: u32, wal_seg_size: u64) -> String {
        let seg = self.segment_number(wal_seg_size);
        let per_id = segments_per_xlog_id(wal_seg_size);
        format!(
            "{timeline:08X}{:08X}{:08X}",
            (seg / per_id) as u32,
            (seg % per_id) as u32
        )
    }

    /// Parses a WAL file name back to `(timeline, start of segment)` (`XLogFromFileName`).
    pub fn from_wal_file_name(name: &str, wal_seg_size: u64) -> Result<(u32, Lsn)> {
        let invalid = || Error::config(format!("Invalid WAL file name: {name}"));
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        let part = |range: std::ops::Range<usize>| {
            u32::from_str_radix(&name[range], 16).map_err(|_| invalid())
        };
        let timeline = part(0..8)?;
        let log = u64::from(part(8..16)?);
        let seg_in_log = u64::from(part(16..24)?);
        let per_id = segments_per_xlog_id(wal_seg_size);
        if seg_in_log >= per_id {
            return Err(invalid());
        }
        let seg = log * per_id + seg_in_log;
        let start = seg.checked_mul(wal_seg_size.max(1)).ok_or_else(invalid)?;
        Ok((timeline, Lsn(start)))
    }
}

/// Checks a segment size the way PostgreSQL's `IsValidWalSegSize` does.
pub fn validate_wal_seg_size(size: u64) -> Result<u64> {
    if size.is_power_of_two() && (MIN_WAL_SEG_SIZE..=MAX_WAL_SEG_SIZE).contains(&size) {
        Ok(size)
    } else {
        Err(Error::unsupported(format!(
            "invalid WAL segment size {size}: must be a power of two between 1 MiB and 1 GiB"
        )))
    }
}

/// `XLogSegmentsPerXLogId`: how many segments share one "log id" (high 32 bits).
fn segments_per_xlog_id(wal_seg_size: u64) -> u64 {
    ((1u64 << 32) / wal_seg_size.max(1)).max(1)
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

impl FromStr for Lsn {
    type Err = Error;

    /// Accepts what `pg_lsn_in` accepts: 1–8 hex digits, `/`, 1–8 hex digits.
    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::config(format!("Invalid LSN format: {s}"));
        let (hi, lo) = s.split_once('/').ok_or_else(invalid)?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid());
            }
            u64::from_str_radix(part, 16).map_err(|_| invalid())
        };
        Ok(Lsn((half(hi)? << 32) | half(lo)?))
    }
}

impl Add<u64> for Lsn {
    type Output = Lsn;

    /// Panics on overflow like integer addition in debug builds; use
    /// [`Lsn::checked_add`] for untrusted offsets.
    fn add(self, bytes: u64) -> Lsn {
        Lsn(self.0 + bytes)
    }
}

impl Sub<Lsn> for Lsn {
    type Output = u64;

    /// Byte distance; use [`Lsn::checked_sub`] when the order is not known.
    fn sub(self, earlier: Lsn) -> u64 {
        self.0 - earlier.0
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(l: Lsn) -> Self {
        l.0
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_formats_like_postgres() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::INVALID);
        assert_eq!("ffffffff/ffffffff".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
        assert_eq!("0/a".parse::<Lsn>().unwrap().to_string(), "0/A");
    }

    #[test]
    fn rejects_bad_formats_naming_the_input() {
        for bad in [
            "",
            "0",
            "/0",
            "0/",
            "1/2/3",
            "123456789/0",
            "g/0",
            " 0/0",
            "0/0 ",
            "+1/0",
        ] {
            let err = bad.parse::<Lsn>().unwrap_err();
            assert_eq!(err.to_string(), format!("Invalid LSN format: {bad}"));
            assert_eq!(err.kind(), crate::ErrorKind::Config);
        }
    }

    #[test]
    fn arithmetic_and_order() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap();
        let b = a + 1;
        assert_eq!(b.to_string(), "1/0");
        assert_eq!(b - a, 1);
        assert!(a < b);
        assert_eq!(a.checked_sub(b), None);
        assert_eq!(a.saturating_sub(b), 0);
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert!(!Lsn::INVALID.is_valid());
    }

    #[test]
    fn wal_file_names_match_postgres() {
        let seg = DEFAULT_WAL_SEG_SIZE;
        // Expected names worked out by hand from XLogFileName's formula (16 MiB segments).
        assert_eq!(
            Lsn(0x0100_0028).wal_file_name(1, seg),
            "000000010000000000000001"
        );
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn.wal_file_name(1, seg), "0000000100000016000000B3");
        assert_eq!(lsn.segment_number(seg), 0x16 * 256 + 0xB3);
        assert_eq!(lsn.segment_start(seg).to_string(), "16/B3000000");
        // 1 GiB segments: 4 per log id.
        let big = 1 << 30;
        assert_eq!(
            "2/C0000001".parse::<Lsn>().unwrap().wal_file_name(3, big),
            "000000030000000200000003"
        );
    }

    #[test]
    fn wal_file_name_round_trips_to_segment_start() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        let name = lsn.wal_file_name(7, DEFAULT_WAL_SEG_SIZE);
        let (tli, start) = Lsn::from_wal_file_name(&name, DEFAULT_WAL_SEG_SIZE).unwrap();
        assert_eq!((tli, start), (7, lsn.segment_start(DEFAULT_WAL_SEG_SIZE)));
        assert!(Lsn::from_wal_file_name("00000001000000000000010", DEFAULT_WAL_SEG_SIZE).is_err());
        // segment 0x100 does not exist within one log id at 16 MiB.
        assert!(Lsn::from_wal_file_name("000000010000000000000100", DEFAULT_WAL_SEG_SIZE).is_err());
    }

    #[test]
    fn validates_segment_sizes() {
        assert!(validate_wal_seg_size(16 << 20).is_ok());
        assert!(validate_wal_seg_size(1 << 30).is_ok());
        assert!(validate_wal_seg_size(0).is_err());
        assert!(validate_wal_seg_size(3 << 20).is_err());
        assert!(validate_wal_seg_size(1 << 31).is_err());
    }

    #[test]
    fn serde_uses_the_string_form() {
        let lsn: Lsn = "3/1F".parse().unwrap();
        assert_eq!(serde_json::to_string(&lsn).unwrap(), "\"3/1F\"");
        assert_eq!(serde_json::from_str::<Lsn>("\"3/1f\"").unwrap(), lsn);
        assert!(serde_json::from_str::<Lsn>("\"3-1f\"").is_err());
    }

    proptest! {
        #[test]
        fn parse_format_identity(v in any::<u64>()) {
            let lsn = Lsn(v);
            prop_assert_eq!(lsn.to_string().parse::<Lsn>().unwrap(), lsn);
        }

        #[test]
        fn wal_name_round_trip(v in any::<u64>(), tli in 1u32.., shift in 20u32..=30) {
            let size = 1u64 << shift;
            let lsn = Lsn(v);
            let (t, start) = Lsn::from_wal_file_name(&lsn.wal_file_name(tli, size), size).unwrap();
            prop_assert_eq!(t, tli);
            prop_assert_eq!(start, lsn.segment_start(size));
        }
    }
}
