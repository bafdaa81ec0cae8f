//! OpenAPI schemas of the identifier and time newtypes (feature `openapi`), so the service's
//! `/openapi.json` is generated from the same types that parse requests: each pattern below
//! accepts exactly the strings the type's `parse` accepts.

use std::borrow::Cow;

use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::engine::provenance::PublicKey;
use crate::ids::{AgencyId, Digest, DocType, DocumentId, GrantId, KeyId, OwnerId, Purpose};
use crate::time::Timestamp;

/// `a-z 0-9 . _ -`, 1 to 64 characters, starting with a letter or digit.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,63}$";
/// `citizen:` + 12 digits, or `org:` + 10 digits with an optional `-` + 3 digits.
pub const OWNER_PATTERN: &str = "^(citizen:[0-9]{12}|org:[0-9]{10}(-[0-9]{3})?)$";
/// 64 lowercase hex characters.
pub const DIGEST_PATTERN: &str = "^[0-9a-f]{64}$";
/// 32 lowercase hex characters.
pub const ID_PATTERN: &str = "^[0-9a-f]{32}$";
/// `YYYY-MM-DDTHH:MM:SSZ`, years 0000 to 9999, real calendar days only (leap years included).
pub const TIME_PATTERN: &str = concat!(
    "^([0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])",
    "|[0-9]{4}-(0[13-9]|1[0-2])-(29|30)",
    "|[0-9]{4}-(0[13578]|1[02])-31",
    "|([0-9]{2}(0[48]|[2468][048]|[13579][26])|([02468][048]|[13579][26])00)-02-29)",
    "T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$"
);
/// Standard base64 of 32 bytes.
pub const KEY_PATTERN: &str = "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$";

fn string(pattern: &str, description: &str, example: &str, date_time: bool) -> RefOr<Schema> {
    let mut b = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .description(Some(description))
        .examples([serde_json::Value::String(example.to_owned())]);
    if date_time {
        b = b.format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)));
    }
    RefOr::T(Schema::Object(b.build()))
}

macro_rules! schema {
    ($t:ty, $name:literal, $pattern:expr, $desc:literal, $example:literal) => {
        schema!($t, $name, $pattern, $desc, $example, false);
    };
    ($t:ty, $name:literal, $pattern:expr, $desc:literal, $example:literal, $dt:expr) => {
        impl PartialSchema for $t {
            fn schema() -> RefOr<Schema> {
                string($pattern, $desc, $example, $dt)
            }
        }
        impl ToSchema for $t {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

schema!(OwnerId, "OwnerId", OWNER_PATTERN, "An owner: a citizen or an organisation.", "citizen:001099012345");
schema!(
    Digest,
    "Digest",
    DIGEST_PATTERN,
    "BLAKE3-256 of the plaintext content, lowercase hex.",
    "2dfecf5537128321903c2470e0125ba9cc23fc8fea9d057e99075c9952741901"
);
schema!(AgencyId, "AgencyId", NAME_PATTERN, "An agency id.", "ubnd-xa-hung-dong");
schema!(DocType, "DocType", NAME_PATTERN, "A document type.", "giay-khai-sinh");
schema!(Purpose, "Purpose", NAME_PATTERN, "A purpose: the procedure code a read is for.", "1.001193");
schema!(KeyId, "KeyId", NAME_PATTERN, "The id of one of an agency's keys.", "k2024");
schema!(DocumentId, "DocumentId", ID_PATTERN, "A document id.", "0f1e2d3c4b5a69788796a5b4c3d2e1f0");
schema!(GrantId, "GrantId", ID_PATTERN, "A grant id.", "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5");
schema!(crate::engine::events::WebhookId, "WebhookId", NAME_PATTERN, "A webhook subscription id.", "dossier-main");
schema!(
    crate::engine::events::EventId,
    "EventId",
    "^msg_[0-9a-f]{32}$",
    "An event id: the `webhook-id` header, stable across delivery attempts.",
    "msg_0192f1a2b3c4d5e60123456789abcdef"
);
schema!(Timestamp, "Timestamp", TIME_PATTERN, "RFC 3339 UTC, whole seconds, with a `Z`.", "2025-03-01T08:00:00Z", true);
schema!(
    PublicKey,
    "PublicKey",
    KEY_PATTERN,
    "An Ed25519 public key, standard base64 of 32 bytes.",
    "Vwm8nGAcxYX4s+lhc7sBQ2U9GUbXrXvnsGfRgQfuNBE="
);
