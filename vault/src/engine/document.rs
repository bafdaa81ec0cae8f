//! Document records: what a deposit says about a content.

use serde::{Deserialize, Serialize};

use crate::ids::{AgencyId, Digest, DocType, DocumentId, IdError, KeyId, OwnerId, Purpose};
use crate::time::Timestamp;

/// The most Unicode scalar values in a title or reference.
pub const MAX_TEXT: usize = 256;

/// An issuer's signature over a document's statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Signature {
    /// The issuer key that signed.
    pub key_id: KeyId,
    /// The Ed25519 signature, standard base64.
    pub value: String,
}

/// What a depositor says about a content (the request body of a deposit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewDocument {
    /// The content, which must already be held for the owner.
    pub digest: Digest,
    /// The document type.
    pub doc_type: DocType,
    /// A human title (at most 256 characters, no control characters).
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 256, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")
    )]
    pub title: String,
    /// The media type of the content, e.g. `application/pdf`.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 255, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")
    )]
    pub media_type: String,
    /// A file name to offer on download.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 255, pattern = "^[^/\\\\\\u0000-\\u001f\\u007f-\\u009f]*$"))]
    pub file_name: Option<String>,
    /// The issuing agency; `None` for an owner's own upload.
    #[serde(default)]
    pub issuer: Option<AgencyId>,
    /// When the issuer issued it.
    #[serde(default)]
    pub issued_at: Option<Timestamp>,
    /// Start of validity.
    #[serde(default)]
    pub valid_from: Option<Timestamp>,
    /// End of validity (exclusive).
    #[serde(default)]
    pub valid_until: Option<Timestamp>,
    /// Document number or dossier code (at most 256 characters, no control characters).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 256, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"))]
    pub reference: Option<String>,
    /// The procedure that produced it.
    #[serde(default)]
    pub procedure: Option<Purpose>,
    /// The issuer's signature over the statement.
    #[serde(default)]
    pub signature: Option<Signature>,
}

/// A revocation by the issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Revocation {
    /// When it was revoked.
    pub at: Timestamp,
    /// Why.
    pub reason: String,
}

/// A stored document record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Document {
    /// The document id.
    pub id: DocumentId,
    /// Whose document it is.
    pub owner: OwnerId,
    /// Content size in bytes.
    pub size: u64,
    /// When it was deposited.
    pub deposited_at: Timestamp,
    /// Whether the issuer's signature was verified at deposit.
    pub verified: bool,
    /// The revocation, if revoked.
    pub revocation: Option<Revocation>,
    /// Everything the depositor said.
    #[serde(flatten)]
    pub meta: NewDocument,
}

/// Validity of a document at a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Status {
    /// Usable.
    Valid,
    /// Past `valid_until`.
    Expired,
    /// Before `valid_from`.
    NotYetValid,
    /// Revoked by its issuer.
    Revoked,
}

impl Document {
    /// Status at `at`: revoked if revoked; else not yet valid before `valid_from`; else expired
    /// from `valid_until` on; else valid.
    pub fn status(&self, at: Timestamp) -> Status {
        if self.revocation.is_some() {
            Status::Revoked
        } else if self.meta.valid_from.is_some_and(|f| at < f) {
            Status::NotYetValid
        } else if self.meta.valid_until.is_some_and(|u| at >= u) {
            Status::Expired
        } else {
            Status::Valid
        }
    }
}

/// Checks a free-text field: at most `max` Unicode scalar values, no control characters (Cc).
pub fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), IdError> {
    if s.chars().count() > max {
        let reason = match max {
            200 => "it is longer than 200 characters",
            255 => "it is longer than 255 characters",
            256 => "it is longer than 256 characters",
            1000 => "it is longer than 1000 characters",
            _ => "it is too long",
        };
        return Err(IdError { kind: field, reason });
    }
    if s.chars().any(char::is_control) {
        return Err(IdError { kind: field, reason: "it contains control characters" });
    }
    Ok(())
}

impl NewDocument {
    /// Checks the free-text fields and the date order.
    pub fn validate(&self) -> Result<(), IdError> {
        check_text("title", &self.title, MAX_TEXT)?;
        if self.title.is_empty() {
            return Err(IdError { kind: "title", reason: "it must not be empty" });
        }
        if let Some(r) = &self.reference {
            check_text("reference", r, MAX_TEXT)?;
        }
        check_text("media_type", &self.media_type, 255)?;
        if self.media_type.is_empty() {
            return Err(IdError { kind: "media_type", reason: "it must not be empty" });
        }
        if let Some(f) = &self.file_name {
            check_text("file_name", f, 255)?;
            if f.contains('/') || f.contains('\\') {
                return Err(IdError { kind: "file_name", reason: "it must not contain a path separator" });
            }
        }
        if let (Some(from), Some(until)) = (self.valid_from, self.valid_until) {
            if until < from {
                return Err(IdError { kind: "valid_until", reason: "it is before valid_from" });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(valid_from: Option<&str>, valid_until: Option<&str>) -> Document {
        Document {
            id: DocumentId::from_bytes([1; 16]),
            owner: OwnerId::parse("citizen:001099012345").unwrap(),
            size: 1,
            deposited_at: Timestamp::parse("2024-01-01T00:00:00Z").unwrap(),
            verified: false,
            revocation: None,
            meta: NewDocument {
                digest: Digest::of(b"x"),
                doc_type: DocType::parse("cccd").unwrap(),
                title: "Căn cước".into(),
                media_type: "application/pdf".into(),
                file_name: None,
                issuer: None,
                issued_at: None,
                valid_from: valid_from.map(|s| Timestamp::parse(s).unwrap()),
                valid_until: valid_until.map(|s| Timestamp::parse(s).unwrap()),
                reference: None,
                procedure: None,
                signature: None,
            },
        }
    }

    #[test]
    fn status_rules() {
        let t = |s| Timestamp::parse(s).unwrap();
        let d = doc(Some("2024-01-01T00:00:00Z"), Some("2025-01-01T00:00:00Z"));
        assert_eq!(d.status(t("2023-12-31T23:59:59Z")), Status::NotYetValid);
        assert_eq!(d.status(t("2024-01-01T00:00:00Z")), Status::Valid);
        assert_eq!(d.status(t("2024-12-31T23:59:59Z")), Status::Valid);
        assert_eq!(d.status(t("2025-01-01T00:00:00Z")), Status::Expired);
        let mut r = d.clone();
        r.revocation = Some(Revocation { at: t("2024-06-01T00:00:00Z"), reason: "x".into() });
        assert_eq!(r.status(t("2024-02-01T00:00:00Z")), Status::Revoked);
        assert_eq!(doc(None, None).status(t("1990-01-01T00:00:00Z")), Status::Valid);
    }

    #[test]
    fn text_rules() {
        let mut d = doc(None, None).meta;
        d.validate().unwrap();
        d.title = "á".repeat(256);
        d.validate().unwrap();
        d.title = "á".repeat(257);
        assert!(d.validate().is_err());
        d.title = "a\u{7}b".into();
        assert!(d.validate().is_err());
        d.title = "ok".into();
        d.reference = Some("x\ny".into());
        assert!(d.validate().is_err());
    }

    #[test]
    fn json_round_trip() {
        let d = doc(Some("2024-01-01T00:00:00Z"), None);
        let j = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Document>(&j).unwrap(), d);
    }
}
