//! Identifiers that are parsed once and trusted afterwards ("parse, don't validate").
//!
//! Every identifier that crosses a trust boundary (HTTP path, JSON body, file on disk) is one of
//! these newtypes. Their constructors are the only place the syntax rules of SPEC.md live.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identifier was refused. The message names the rule so a caller can fix the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct IdError {
    /// Which kind of identifier was being parsed (`owner id`, `digest`, ...).
    pub kind: &'static str,
    /// What rule the input broke.
    pub reason: &'static str,
}

fn err(kind: &'static str, reason: &'static str) -> IdError {
    IdError { kind, reason }
}

fn all_digits(s: &[u8]) -> bool {
    s.iter().all(|b| b.is_ascii_digit())
}

/// Implements `Display`, `FromStr`, `Serialize`, `Deserialize` and `as_str` for a string newtype
/// whose constructor is `parse(&str) -> Result<Self, IdError>`.
macro_rules! string_id {
    ($t:ident) => {
        impl $t {
            /// The canonical text form.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl FromStr for $t {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// An owner of documents: `citizen:` + 12 digits (personal identification number) or
/// `org:` + 10 digits (enterprise/tax code) with an optional `-` + 3 digits (branch).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(String);

impl OwnerId {
    /// Parses an owner id, refusing anything but the two forms above.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const K: &str = "owner id";
        if let Some(pin) = s.strip_prefix("citizen:") {
            if pin.len() == 12 && all_digits(pin.as_bytes()) {
                return Ok(Self(s.to_owned()));
            }
            return Err(err(K, "a citizen id is `citizen:` followed by exactly 12 digits"));
        }
        if let Some(code) = s.strip_prefix("org:") {
            // Byte-wise: a multi-byte character can never be a digit, and slicing bytes cannot
            // split a character.
            let c = code.as_bytes();
            let ok = match c.len() {
                10 => all_digits(c),
                14 => all_digits(&c[..10]) && c[10] == b'-' && all_digits(&c[11..]),
                _ => false,
            };
            if ok {
                return Ok(Self(s.to_owned()));
            }
            return Err(err(K, "an organisation id is `org:` followed by 10 digits, optionally `-` and 3 digits"));
        }
        Err(err(K, "it must start with `citizen:` or `org:`"))
    }
}
string_id!(OwnerId);

/// A name in the shared alphabet of agency ids, document types, purposes and key ids:
/// 1 to 64 characters of `a-z 0-9 . _ -`, starting with a letter or digit.
fn check_name(kind: &'static str, s: &str) -> Result<(), IdError> {
    if s.is_empty() || s.len() > 64 {
        return Err(err(kind, "it must be 1 to 64 characters long"));
    }
    let b = s.as_bytes();
    if !(b[0].is_ascii_lowercase() || b[0].is_ascii_digit()) {
        return Err(err(kind, "it must start with a lowercase letter or a digit"));
    }
    if !b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')) {
        return Err(err(kind, "only `a-z`, `0-9`, `.`, `_` and `-` are allowed"));
    }
    Ok(())
}

macro_rules! name_id {
    ($t:ident, $kind:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $t(String);
        impl $t {
            /// Parses the name, refusing anything outside the shared name alphabet.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_name($kind, s)?;
                Ok(Self(s.to_owned()))
            }
        }
        string_id!($t);
    };
}

name_id!(AgencyId, "agency id", "An agency (issuer or reader of documents), e.g. `ubnd-xa-hung-dong`.");
name_id!(DocType, "document type", "A document type, e.g. `giay-khai-sinh`.");
name_id!(Purpose, "purpose", "A purpose: the procedure code a read is for, e.g. `1.001193`.");
name_id!(KeyId, "key id", "The id of one of an agency's keys.");

/// The public address of a content: BLAKE3-256 of its plaintext, 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Parses 64 lowercase hex characters.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        const K: &str = "digest";
        if s.len() != 64 {
            return Err(err(K, "it must be 64 lowercase hex characters (BLAKE3-256)"));
        }
        if !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(err(K, "it must be lowercase hex"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| err(K, "it must be lowercase hex"))?;
        Ok(Self(out))
    }

    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Wraps raw digest bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The canonical text form (64 lowercase hex characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Self(*h.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl FromStr for Digest {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Defines a 128-bit random identifier rendered as 32 lowercase hex characters.
macro_rules! random_id {
    ($t:ident, $kind:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $t([u8; 16]);

        impl $t {
            /// Parses 32 lowercase hex characters.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(err($kind, "it must be 32 lowercase hex characters"));
                }
                let mut out = [0u8; 16];
                hex::decode_to_slice(s, &mut out).map_err(|_| err($kind, "it must be lowercase hex"))?;
                Ok(Self(out))
            }

            /// A fresh random id.
            pub fn random() -> Self {
                Self(crate::crypto::keys::random_array())
            }

            /// Wraps raw id bytes.
            pub fn from_bytes(b: [u8; 16]) -> Self {
                Self(b)
            }

            /// The raw 16 bytes.
            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($t))
            }
        }

        impl FromStr for $t {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

random_id!(DocumentId, "document id", "A document id: 128 random bits, 32 lowercase hex characters.");
random_id!(GrantId, "grant id", "A grant id: 128 random bits, 32 lowercase hex characters.");

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn owner_ids() {
        for ok in ["citizen:001099012345", "org:0101234567", "org:0101234567-001"] {
            assert_eq!(OwnerId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "citizen:",
            "citizen:00109901234",
            "citizen:0010990123456",
            "citizen:00109901234a",
            "Citizen:001099012345",
            "org:010123456",
            "org:0101234567-01",
            "org:0101234567_001",
            "org:0101234567-0011",
            "org:0101234567-",
            "person:001099012345",
            "citizen:００１０９９０１２３４５",
            " citizen:001099012345",
        ] {
            assert!(OwnerId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names() {
        for ok in ["giay-khai-sinh", "1.001193", "a", "cccd_2", &"a".repeat(64)] {
            DocType::parse(ok).unwrap();
        }
        for bad in ["", "-x", ".x", "_x", "Abc", "a b", "á", &"a".repeat(65), "a/b"] {
            assert!(DocType::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn digests() {
        let d = Digest::of(b"hello");
        assert_eq!(Digest::parse(&d.to_hex()).unwrap(), d);
        assert!(Digest::parse(&d.to_hex().to_uppercase()).is_err());
        assert!(Digest::parse(&d.to_hex()[..63]).is_err());
        assert!(Digest::parse(&format!("{}0", d.to_hex())).is_err());
        assert!(Digest::parse(&"g".repeat(64)).is_err());
    }

    proptest! {
        #[test]
        fn digest_text_round_trip(b in any::<[u8; 32]>()) {
            let d = Digest::from_bytes(b);
            prop_assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
            let json = serde_json::to_string(&d).unwrap();
            prop_assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        }

        #[test]
        fn document_id_round_trip(b in any::<[u8; 16]>()) {
            let id = DocumentId::from_bytes(b);
            prop_assert_eq!(DocumentId::parse(&id.to_string()).unwrap(), id);
        }

        #[test]
        fn owner_id_round_trip(pin in "[0-9]{12}", code in "[0-9]{10}", branch in proptest::option::of("[0-9]{3}")) {
            let c = format!("citizen:{pin}");
            prop_assert_eq!(OwnerId::parse(&c).unwrap().to_string(), c);
            let o = match branch { Some(b) => format!("org:{code}-{b}"), None => format!("org:{code}") };
            prop_assert_eq!(OwnerId::parse(&o).unwrap().to_string(), o);
        }

        #[test]
        fn owner_id_parse_never_panics(s in ".{0,40}") {
            let _ = OwnerId::parse(&s);
            let _ = DocType::parse(&s);
            let _ = Digest::parse(&s);
            let _ = DocumentId::parse(&s);
        }
    }
}
