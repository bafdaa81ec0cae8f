//! Issue 11 §1: an independent C2SP tlog-tiles client, written from the text of the spec
//! (c2sp.org/tlog-tiles) and RFC 6962 §2.1 with nothing but `sha2` for the tree, fetches the
//! checkpoint and the hash tiles of a real server binary over HTTP on 127.0.0.1 and verifies the
//! checkpoint's root and an inclusion proof of an owner's entry. It shares no code with the
//! vault's tree or tiles.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use common::http::*;

type H = [u8; 32];

// ------------------------------------------------------------ the client, from the spec text

/// RFC 6962: `MTH({d(0)}) = SHA-256(0x00 || d(0))`.
fn leaf_hash(entry: &[u8]) -> H {
    Sha256::new().chain_update([0u8]).chain_update(entry).finalize().into()
}

/// RFC 6962: `SHA-256(0x01 || MTH(left) || MTH(right))`.
fn node(l: &H, r: &H) -> H {
    Sha256::new().chain_update([1u8]).chain_update(l).chain_update(r).finalize().into()
}

/// "k is the largest power of two smaller than n".
fn k_of(n: u64) -> u64 {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// "`<N>` ... zero-padded 3-digit path elements. All but the last path element MUST begin with
/// an `x`"; ".p/<W>" for partial tiles.
fn tile_path(level: u64, n: u64, width: Option<u64>) -> String {
    let mut elems = vec![format!("{:03}", n % 1000)];
    let mut rest = n / 1000;
    while rest > 0 {
        elems.push(format!("x{:03}", rest % 1000));
        rest /= 1000;
    }
    elems.reverse();
    let mut p = format!("tile/{level}/{}", elems.join("/"));
    if let Some(w) = width {
        p += &format!(".p/{w}");
    }
    p
}

/// The log as the client sees it: its prefix and what it fetched.
struct Client {
    prefix: String,
}

impl Client {
    fn get(&self, path: &str) -> Resp {
        call("GET", &format!("{}/{path}", self.prefix), None, &[], None)
    }

    /// "The partial tile at level l for a tree of size s has floor(s / 256**l) mod 256 entries";
    /// tiles before it are full. Returns the hashes of every tile of `level`, in order.
    fn level_hashes(&self, level: u32, size: u64) -> Vec<H> {
        let per = 256u64.pow(level);
        let count = size / per; // hashes at this level
        let mut out = Vec::new();
        for n in 0..count.div_ceil(256) {
            let width = (count - n * 256).min(256);
            let path = tile_path(level.into(), n, (width < 256).then_some(width));
            let r = self.get(&path);
            assert_eq!(r.status, 200, "{path}");
            assert_eq!(r.header("content-type"), Some("application/octet-stream"), "{path}");
            assert_eq!(r.body.len() as u64, width * 32, "{path}: a tile is `width` 32-byte hashes");
            if width == 256 {
                assert_eq!(r.header("cache-control"), Some("public, max-age=31536000, immutable"), "{path}");
            }
            out.extend(r.body.chunks(32).map(|c| <H>::try_from(c).unwrap()));
        }
        out
    }
}

/// MTH(D[start:end]) from level-0 hashes, using a level-1 hash for every aligned run of 256
/// leaves ("each hash in a tile is the Merkle Tree Hash of a full tile at the level below").
fn mth(leaves: &[H], level1: &[H], start: u64, end: u64) -> H {
    let n = end - start;
    if n == 1 {
        return leaves[start as usize];
    }
    if n == 256 && start.is_multiple_of(256) {
        if let Some(h) = level1.get((start / 256) as usize) {
            return *h;
        }
    }
    let k = k_of(n);
    node(&mth(leaves, level1, start, start + k), &mth(leaves, level1, start + k, end))
}

/// MTH of leaf hashes alone (RFC 6962 §2.1).
fn mth_leaves(leaves: &[H]) -> H {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = k_of(n as u64) as usize;
            node(&mth_leaves(&leaves[..k]), &mth_leaves(&leaves[k..]))
        }
    }
}

/// RFC 6962 §2.1.1 PATH(m, D[n]).
fn path(m: usize, leaves: &[H]) -> Vec<H> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = k_of(n as u64) as usize;
    if m < k {
        let mut p = path(m, &leaves[..k]);
        p.push(mth_leaves(&leaves[k..]));
        p
    } else {
        let mut p = path(m - k, &leaves[k..]);
        p.push(mth_leaves(&leaves[..k]));
        p
    }
}

/// Recomputes the root from a leaf hash and its audit path, following the recursion of PATH.
fn root_from_path(m: u64, n: u64, leaf: H, proof: &[H]) -> Option<H> {
    if n == 1 {
        return proof.is_empty().then_some(leaf);
    }
    let (last, rest) = proof.split_last()?;
    let k = k_of(n);
    if m < k {
        Some(node(&root_from_path(m, k, leaf, rest)?, last))
    } else {
        Some(node(last, &root_from_path(m - k, n - k, leaf, rest)?))
    }
}

/// The checkpoint's origin, size and root (c2sp.org/tlog-checkpoint), after checking the
/// note's Ed25519 signature by the vault key (c2sp.org/signed-note).
fn checkpoint(s: &Server) -> (String, u64, H) {
    let r = call("GET", &s.url("/v1/audit/checkpoint"), None, &[], None);
    assert_eq!(r.status, 200);
    let note = String::from_utf8(r.body).unwrap();
    let (text, sigs) = note.split_once("\n\n").unwrap();
    let text = format!("{text}\n");
    let key = call("GET", &s.url("/v1/vault-key"), None, &[], None).json();
    let pk: [u8; 32] = B64.decode(key["public_key"].as_str().unwrap()).unwrap().try_into().unwrap();
    let name = key["name"].as_str().unwrap();
    let key_hash: [u8; 32] = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update(b"\n")
        .chain_update([0x01])
        .chain_update(pk)
        .finalize()
        .into();
    let line = sigs.lines().find(|l| l.starts_with(&format!("\u{2014} {name} "))).unwrap();
    let sig = B64.decode(line.rsplit(' ').next().unwrap()).unwrap();
    assert_eq!(&sig[..4], &key_hash[..4], "the signature names the vault key");
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).unwrap();
    vk.verify_strict(text.as_bytes(), &ed25519_dalek::Signature::from_slice(&sig[4..]).unwrap()).unwrap();
    let mut lines = text.lines();
    let origin = lines.next().unwrap().to_owned();
    let size = lines.next().unwrap().parse().unwrap();
    let root = B64.decode(lines.next().unwrap()).unwrap().try_into().unwrap();
    (origin, size, root)
}

// ------------------------------------------------------------ the test

#[test]
fn issue_11_an_independent_tlog_tiles_client_verifies_the_log_over_http() {
    let s = Server::start(&[]);
    let citizen = s.owner(CITIZEN);
    let list = s.url(&format!("/v1/owners/{CITIZEN}/documents"));
    // Over one full tile of entries, from concurrent callers (the sequencer batches them).
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (list, citizen) = (list.clone(), citizen.clone());
            std::thread::spawn(move || {
                for _ in 0..75 {
                    assert_eq!(call("GET", &list, Some(&citizen), &[], None).status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let client = Client { prefix: s.url("/v1/audit") };
    let (origin, size, root) = checkpoint(&s);
    assert!(origin.starts_with("vault/"));
    assert!(size >= 300, "{size}");

    let leaves = client.level_hashes(0, size);
    let level1 = client.level_hashes(1, size);
    assert_eq!(leaves.len() as u64, size);
    assert_eq!(level1.len() as u64, size / 256);
    for (n, h) in level1.iter().enumerate() {
        assert_eq!(*h, mth_leaves(&leaves[n * 256..(n + 1) * 256]), "level 1 hash {n}");
    }
    assert_eq!(mth(&leaves, &level1, 0, size), root, "the tiles hash to the checkpoint's root");
    assert_eq!(mth_leaves(&leaves), root);

    // An owner's entry: its leaf bytes hash to the level-0 tile's hash, and its inclusion proof
    // (built from the tiles, and the server's) verifies against the checkpoint.
    let log = call("GET", &s.url(&format!("/v1/owners/{CITIZEN}/access-log")), Some(&citizen), &[], None).json();
    let index = log["entries"][280]["index"].as_u64().unwrap();
    assert!(index < size);
    let leaf =
        call("GET", &s.url(&format!("/v1/owners/{CITIZEN}/access-log/{index}/leaf")), Some(&citizen), &[], None).json();
    let leaf = B64.decode(leaf["leaf"].as_str().unwrap()).unwrap();
    assert_eq!(leaf_hash(&leaf), leaves[index as usize]);
    let proof = path(index as usize, &leaves);
    assert_eq!(root_from_path(index, size, leaf_hash(&leaf), &proof), Some(root));
    let theirs =
        call("GET", &s.url(&format!("/v1/audit/proof/inclusion?index={index}&size={size}")), None, &[], None).json();
    let theirs: Vec<H> = theirs["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| B64.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect();
    assert_eq!(theirs, proof, "the server's proof is the one the tiles give");
    let mut wrong = proof.clone();
    wrong[0][0] ^= 1;
    assert_ne!(root_from_path(index, size, leaf_hash(&leaf), &wrong), Some(root));

    // What does not exist yet is 404, as are malformed paths and entry bundles.
    let partial = size % 256;
    let last = size / 256;
    for p in [
        tile_path(0, last, None),              // the partial tile, asked for as full
        tile_path(0, last, Some(partial + 1)), // wider than the tree
        tile_path(0, last + 1, Some(1)),       // beyond the tree
        tile_path(1, 0, None),                 // level 1 is partial
        tile_path(2, 0, Some(1)),              // no level 2 yet
        tile_path(64, 0, None),                // no such level
        "tile/0/0".into(),                     // not 3 digits
        "tile/0/x000/000".into(),              // not canonical
        tile_path(0, last, Some(0)),           // empty tiles are never served
        "tile/entries/000".into(),             // entry bundles are not served
        tile_path(0, 0, None).replace("tile/0", "tile/00"),
    ] {
        let r = client.get(&p);
        assert_eq!((r.status, r.code()), (404, "not_found".to_owned()), "{p}");
    }

    // The log grows: the partial tile seen before is still served, unchanged, and the old
    // checkpoint is a prefix of the new tree (consistency from the tiles).
    let old_partial = client.get(&tile_path(0, last, Some(partial))).body;
    for _ in 0..(256 - partial) {
        assert_eq!(call("GET", &list, Some(&citizen), &[], None).status, 200);
    }
    let (_, size2, root2) = checkpoint(&s);
    assert!(size2 >= (last + 1) * 256);
    assert_eq!(client.get(&tile_path(0, last, Some(partial))).body, old_partial);
    let leaves2 = client.level_hashes(0, size2);
    let level1_2 = client.level_hashes(1, size2);
    assert_eq!(&leaves2[..size as usize], &leaves[..]);
    assert_eq!(mth(&leaves2, &level1_2, 0, size2), root2);
    assert_eq!(mth_leaves(&leaves2[..size as usize]), root, "the old checkpoint's tree is a prefix");
    let full = client.get(&tile_path(0, last, None));
    assert_eq!(&full.body[..old_partial.len()], &old_partial[..]);
}
