//! The test vectors of SPEC.md, recomputed. If one of these fails, either the code or SPEC.md
//! is wrong; never change a vector without changing the format version.

use std::io::Cursor;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::crypto::keys::{MasterKey, OwnerKeys, SecretKey};
use crate::crypto::seal::{self, aad};
use crate::crypto::stream::BlobWriter;
use crate::{Digest, DocType};

/// The content of api.md's statement vector: "Giấy khai sinh — bản điện tử\n".
pub(crate) const CONTENT: &str = "Gi\u{1ea5}y khai sinh \u{2014} b\u{1ea3}n \u{111}i\u{1ec7}n t\u{1eed}\n";

fn seq(start: u8) -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = start.wrapping_add(i as u8);
    }
    k
}

pub(crate) struct Vectors {
    pub lines: Vec<(String, String)>,
}

pub(crate) fn compute() -> Vectors {
    let mut lines = Vec::new();
    let mut put = |k: &str, v: String| lines.push((k.to_string(), v));
    let master = MasterKey::from_bytes([0x2a; 32]);
    put("master key (base64)", master.to_base64().to_string());
    let wrap = master.wrap_key();
    put("master wrap key", hex::encode(wrap.expose()));
    let index = SecretKey::from_bytes(seq(0x80));
    put("index key", hex::encode(index.expose()));
    let sealed_index = seal::seal_v1_with_nonce(&wrap, &aad(b"Mindex-key"), index.expose(), [0x01; 12]);
    put("sealed index key (nonce 01*12)", hex::encode(&sealed_index));
    let subkey = {
        let mut m = wrap.expose().to_vec();
        m.extend_from_slice(&[0x01; 24]);
        blake3::derive_key(seal::SUBKEY_CONTEXT, &m)
    };
    put("subkey of version 2 for the master wrap key and nonce 01*24", hex::encode(subkey));
    let sealed_index = seal::seal_with_nonce(&wrap, &aad(b"Mindex-key"), index.expose(), [0x01; 24]);
    put("sealed index key, version 2 (nonce 01*24)", hex::encode(&sealed_index));
    let owner = "citizen:001099012345";
    let op = blake3::keyed_hash(index.expose(), owner.as_bytes());
    put("owner ref of citizen:001099012345", hex::encode(&op.as_bytes()[..16]));
    let owner_key = SecretKey::from_bytes(seq(0x00));
    put("owner key", hex::encode(owner_key.expose()));
    let ok = OwnerKeys::derive(&owner_key);
    put("owner records key", hex::encode(ok.records.expose()));
    put("owner blob-wrap key", hex::encode(ok.blob_wrap.expose()));
    put("owner blob-name key", hex::encode(ok.names.expose()));
    put("owner type-tag key", hex::encode(ok.type_tags.expose()));
    let digest = Digest::of(CONTENT.as_bytes());
    put("content digest", digest.to_hex());
    put("blob name", hex::encode(ok.blob_name(&digest)));
    put(
        "type tag of giay-khai-sinh",
        hex::encode(ok.type_tag(&DocType::parse("giay-khai-sinh").unwrap_or_else(|_| unreachable!()))),
    );
    let mut binding = op.as_bytes()[..16].to_vec();
    binding.extend_from_slice(digest.as_bytes());
    let blob = |data: &[u8]| {
        let mut w = BlobWriter::with_key(Cursor::new(Vec::new()), SecretKey::from_bytes(seq(0x40)))
            .unwrap_or_else(|_| unreachable!());
        w.update(data).unwrap_or_else(|_| unreachable!());
        let f = w.finish().unwrap_or_else(|_| unreachable!());
        f.write_header_with_nonce(&ok.blob_wrap, &binding, [0x07; 12]).unwrap_or_else(|_| unreachable!()).into_inner()
    };
    put("content key", hex::encode(seq(0x40)));
    put("blob of the content (wrap nonce 07*12)", hex::encode(blob(CONTENT.as_bytes())));
    let big: Vec<u8> = (0..65537u32).map(|i| (i % 251) as u8).collect();
    put(
        "BLAKE3 of the blob of 65537 bytes i%251 (same keys, same binding)",
        blake3::hash(&blob(&big)).to_hex().to_string(),
    );
    // An audit leaf (SPEC.md §14): another citizen's refused listing of this owner's documents.
    let refs = index.derive(crate::crypto::keys::ctx::AUDIT_REFS);
    put("audit reference key", hex::encode(refs.expose()));
    let draft = crate::log::audit::Draft {
        time: crate::Timestamp::parse("2025-03-01T08:00:00Z").unwrap_or_else(|_| unreachable!()),
        actor: crate::log::audit::Actor::AnotherOwner,
        action: "document.list",
        owner: None,
        document: None,
        purpose: None,
        grant: None,
        outcome: "refused:forbidden".into(),
    };
    let mut op16 = [0u8; 16];
    op16.copy_from_slice(&op.as_bytes()[..16]);
    let leaf = crate::log::audit::leaf_text(&refs, 7, &draft, Some(&op16));
    put("leaf 7, another-owner refused document.list (base64)", B64.encode(leaf.as_bytes()));
    put("its leaf hash", hex::encode(crate::log::merkle::leaf_hash(leaf.as_bytes())));
    Vectors { lines }
}

#[cfg(test)]
mod tests {
    /// Every vector line of SPEC.md's "Test vectors" section is recomputed here.
    #[test]
    fn spec_vectors_hold() {
        let spec = include_str!("../../SPEC.md");
        let v = super::compute();
        let mut missing = Vec::new();
        for (k, val) in &v.lines {
            let line = format!("- {k}: `{val}`");
            if !spec.contains(&line) {
                missing.push(line);
            }
        }
        assert!(missing.is_empty(), "SPEC.md lacks or disagrees with:\n{}", missing.join("\n"));
    }
}
