//! PostgreSQL server versions, parsed from `server_version_num` or `server_version`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A server release. From PostgreSQL 10 on, `major` is the major version and
/// `minor` the bug-fix release (`15.18`); before 10 the major release had two
/// parts, kept here as `major.minor` (`9.6`) with the bug-fix number dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PgVersion {
    /// `15` for 15.18; `9` for 9.6.24.
    pub major: u32,
    /// `18` for 15.18; `6` for 9.6.24; `0` for development snapshots and betas.
    pub minor: u32,
}

impl PgVersion {
    /// Builds a version from its parts.
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// Decodes `server_version_num` (`150018` → 15.18, `90624` → 9.6).
    pub fn from_num(num: u32) -> Result<Self> {
        if num >= 100_000 {
            Ok(Self::new(num / 10_000, num % 10_000))
        } else if num >= 70_000 {
            Ok(Self::new(num / 10_000, (num / 100) % 100))
        } else {
            Err(Error::unsupported(format!(
                "Invalid server_version_num: {num}"
            )))
        }
    }

    /// Parses `server_version` text: `18.6`, `15.18 (Debian 15.18-0+deb12u1)`,
    /// `19beta1`, `16devel`, `9.6.24`, and `version()` output starting with `PostgreSQL `.
    pub fn parse_server_version(text: &str) -> Result<Self> {
        let invalid = || Error::unsupported(format!("Invalid server_version: {text}"));
        let trimmed = text.trim();
        let trimmed = trimmed.strip_prefix("PostgreSQL ").unwrap_or(trimmed);
        let token = trimmed.split_whitespace().next().ok_or_else(invalid)?;
        let (major, rest) = leading_number(token).ok_or_else(invalid)?;
        if major < 10 {
            // Old scheme: major release is the first two components.
            let rest = rest.strip_prefix('.').ok_or_else(invalid)?;
            let (minor, _) = leading_number(rest).ok_or_else(invalid)?;
            return Ok(Self::new(major, minor));
        }
        match rest.strip_prefix('.') {
            Some(after_dot) => {
                let (minor, _) = leading_number(after_dot).ok_or_else(invalid)?;
                Ok(Self::new(major, minor))
            }
            // `16devel`, `19beta1`, `18rc1` or a bare `17`.
            None if rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_alphabetic()) => {
                Ok(Self::new(major, 0))
            }
            None => Err(invalid()),
        }
    }

    /// The `server_version_num` encoding of this version.
    pub fn to_num(self) -> u32 {
        if self.major >= 10 {
            self.major * 10_000 + self.minor
        } else {
            self.major * 10_000 + self.minor * 100
        }
    }

    /// Whether the server is at least this major version (`at_least(16)` for `origin = none`).
    pub fn at_least(self, major: u32) -> bool {
        self.major >= major
    }
}

/// Splits a leading decimal number off `s`.
fn leading_number(s: &str) -> Option<(u32, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n = s[..end].parse().ok()?;
    Some((n, &s[end..]))
}

impl fmt::Display for PgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl FromStr for PgVersion {
    type Err = Error;

    /// Accepts either a `server_version` string or a bare `server_version_num`.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        if t.len() >= 5 && t.bytes().all(|b| b.is_ascii_digit()) {
            let num = t
                .parse()
                .map_err(|_| Error::unsupported(format!("Invalid server_version_num: {t}")))?;
            return Self::from_num(num);
        }
        Self::parse_server_version(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_server_version_num() {
        assert_eq!(PgVersion::from_num(150018).unwrap(), PgVersion::new(15, 18));
        assert_eq!(PgVersion::from_num(180006).unwrap(), PgVersion::new(18, 6));
        assert_eq!(PgVersion::from_num(100000).unwrap(), PgVersion::new(10, 0));
        assert_eq!(PgVersion::from_num(90624).unwrap(), PgVersion::new(9, 6));
        assert_eq!(PgVersion::from_num(90624).unwrap().to_string(), "9.6");
        assert!(PgVersion::from_num(42).is_err());
    }

    #[test]
    fn from_server_version_text() {
        let cases = [
            ("18.6", (18, 6)),
            ("15.18 (Debian 15.18-0+deb12u1)", (15, 18)),
            ("19beta1", (19, 0)),
            ("18rc1", (18, 0)),
            ("16devel", (16, 0)),
            ("17", (17, 0)),
            ("9.6.24", (9, 6)),
            (
                "PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64-pc-linux-gnu",
                (15, 18),
            ),
        ];
        for (text, (major, minor)) in cases {
            assert_eq!(
                PgVersion::parse_server_version(text).unwrap(),
                PgVersion::new(major, minor),
                "{text}"
            );
        }
        for bad in ["", "devel", "9", "15-x", "x.y"] {
            let err = PgVersion::parse_server_version(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn from_str_accepts_both_forms_and_num_round_trips() {
        assert_eq!(
            "150018".parse::<PgVersion>().unwrap(),
            PgVersion::new(15, 18)
        );
        assert_eq!(
            "15.18".parse::<PgVersion>().unwrap(),
            PgVersion::new(15, 18)
        );
        for num in [90624u32, 90600, 100001, 150018, 180006] {
            let v = PgVersion::from_num(num).unwrap();
            assert_eq!(PgVersion::from_num(v.to_num()).unwrap(), v);
        }
        assert_eq!(PgVersion::new(15, 18).to_num(), 150018);
    }

    #[test]
    fn ordering_and_at_least() {
        let v15 = PgVersion::new(15, 18);
        let v18 = PgVersion::new(18, 6);
        assert!(v15 < v18);
        assert!(PgVersion::new(15, 2) < PgVersion::new(15, 18));
        assert!(PgVersion::new(9, 6) < PgVersion::new(10, 0));
        assert!(v18.at_least(16));
        assert!(!v15.at_least(16));
        assert_eq!(v15.to_string(), "15.18");
    }
}
