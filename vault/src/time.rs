//! Timestamps: RFC 3339 UTC with whole seconds and a `Z`, nothing else.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use crate::ids::IdError;

/// A point in time with whole-second precision, stored as seconds since the Unix epoch.
///
/// Its only text form is `YYYY-MM-DDTHH:MM:SSZ` (e.g. `2025-03-01T08:00:00Z`); offsets, fractions
/// and lowercase separators are refused, so that every signer and verifier agrees on the bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(i64);

const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

impl Timestamp {
    /// Parses the one accepted text form.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let bad = IdError {
            kind: "time",
            reason: "it must be RFC 3339 UTC with whole seconds and a `Z`, e.g. 2025-03-01T08:00:00Z",
        };
        if s.len() != 20 {
            return Err(bad);
        }
        let t = PrimitiveDateTime::parse(s, FORMAT).map_err(|_| bad.clone())?;
        let t = t.assume_utc();
        // Round trip: refuses anything the parser accepted loosely.
        if t.format(FORMAT).ok().as_deref() != Some(s) {
            return Err(bad);
        }
        Ok(Self(t.unix_timestamp()))
    }

    /// The current time, truncated to whole seconds.
    pub fn now() -> Self {
        Self(OffsetDateTime::now_utc().unix_timestamp())
    }

    /// From seconds since the Unix epoch; `None` outside years 0000–9999.
    pub fn from_unix(secs: i64) -> Option<Self> {
        let t = OffsetDateTime::from_unix_timestamp(secs).ok()?;
        (0..=9999).contains(&t.year()).then_some(Self(secs))
    }

    /// Seconds since the Unix epoch.
    pub fn unix(self) -> i64 {
        self.0
    }

    /// This time plus `secs` seconds (saturating at the representable range).
    pub fn plus_seconds(self, secs: i64) -> Self {
        Self::from_unix(self.0.saturating_add(secs)).unwrap_or(self)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Every constructed Timestamp lies in years 0000-9999, which always formats.
        match OffsetDateTime::from_unix_timestamp(self.0).ok().and_then(|t| t.format(FORMAT).ok()) {
            Some(s) => f.write_str(&s),
            None => write!(f, "@{}", self.0),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl FromStr for Timestamp {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_only_the_canonical_form() {
        let t = Timestamp::parse("2025-03-01T08:00:00Z").unwrap();
        assert_eq!(t.unix(), 1_740_816_000);
        assert_eq!(t.to_string(), "2025-03-01T08:00:00Z");
        for bad in [
            "2025-03-01T08:00:00+00:00",
            "2025-03-01T08:00:00.5Z",
            "2025-03-01t08:00:00z",
            "2025-03-01 08:00:00Z",
            "2025-02-30T08:00:00Z",
            "2025-03-01T24:00:00Z",
            "2025-3-01T08:00:00Z",
            "",
            "1740816000",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    proptest! {
        #[test]
        fn round_trip(secs in -62_167_219_200i64..253_402_300_799) {
            let t = Timestamp::from_unix(secs).unwrap();
            prop_assert_eq!(Timestamp::parse(&t.to_string()).unwrap(), t);
        }
    }
}
