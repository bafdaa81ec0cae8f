//! The body of a batch deposit (SPEC.md §20): a strict reader of a tar whose members come in
//! pairs, a `.json` deposit body and then the content it describes.
//!
//! Only what a plain writer produces is accepted: 512-byte ustar (POSIX `ustar\0` `00`) or GNU
//! (`ustar ` ` \0`) headers whose checksum verifies, numeric fields in octal, type `0` (or NUL):
//! a regular file. PAX extended headers (`x`, `g`), GNU long names (`L`, `K`), sparse members
//! (`S`), links, devices, directories and FIFOs are refused, and so is a base-256 size. A member
//! must fit, padding included, in what is left of the body, so nothing is ever allocated from a
//! declared size: the reader hands out ranges of the body it was given.

use std::ops::Range;

use vault::NewDocument;

/// Size of a tar block.
const BLOCK: usize = 512;

/// Largest deposit body member (as for a JSON request body).
pub const MAX_DEPOSIT_BODY: usize = 2 << 20;

/// Why a batch body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Not a batch this reader accepts (400 `invalid_request`).
    #[error("batch: {0}")]
    Malformed(String),
    /// A content above the server's content limit (413 `too_large`).
    #[error("batch: {0} is larger than the server accepts")]
    TooLarge(String),
}

fn bad(m: impl Into<String>) -> BatchError {
    BatchError::Malformed(m.into())
}

/// One regular-file member: its name and where its bytes are in the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's path (UTF-8).
    pub name: String,
    /// Its data, as a range of the body.
    pub data: Range<usize>,
}

/// The members of a tar body, in order; stops at the first error.
#[derive(Debug)]
pub struct Members<'a> {
    body: &'a [u8],
    pos: usize,
    done: bool,
}

/// Reads the members of `body`.
pub fn members(body: &[u8]) -> Members<'_> {
    Members { body, pos: 0, done: false }
}

/// A numeric header field: optional leading spaces, octal digits, then only NULs or spaces.
/// An empty field is 0 unless `required`.
fn octal(field: &[u8], what: &str, required: bool) -> Result<u64, BatchError> {
    let start = field.iter().position(|&b| b != b' ').unwrap_or(field.len());
    let s = &field[start..];
    let end = s.iter().position(|b| !(b'0'..=b'7').contains(b)).unwrap_or(s.len());
    let (digits, rest) = s.split_at(end);
    if !rest.iter().all(|&b| b == 0 || b == b' ') {
        return Err(bad(format!("the {what} field of a header is not octal")));
    }
    if digits.is_empty() {
        return if required { Err(bad(format!("a header has no {what}"))) } else { Ok(0) };
    }
    // At most 12 octal digits (36 bits): always fits.
    digits.iter().try_fold(0u64, |n, &d| n.checked_mul(8).map(|n| n + u64::from(d - b'0'))).ok_or_else(|| bad(what))
}

/// A NUL-terminated text field.
fn text(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Parses one header block; returns the member's name and declared size.
fn header(h: &[u8]) -> Result<(String, u64), BatchError> {
    let stored = octal(&h[148..156], "checksum", true)?;
    let sum: u64 = h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u64::from(b) }).sum();
    if sum != stored {
        return Err(bad("a header's checksum does not verify"));
    }
    let posix = &h[257..263] == b"ustar\0" && &h[263..265] == b"00";
    let gnu = &h[257..263] == b"ustar " && &h[263..265] == b" \0";
    if !posix && !gnu {
        return Err(bad("only ustar or GNU tar headers are accepted"));
    }
    match h[156] {
        b'0' | 0 => {}
        b'x' | b'g' => return Err(bad("PAX extended headers are not accepted")),
        b'L' | b'K' => return Err(bad("GNU long names are not accepted (names are at most 100 bytes)")),
        b'S' => return Err(bad("sparse members are not accepted")),
        b'1' | b'2' => return Err(bad("links are not accepted; members are regular files")),
        b'3' | b'4' | b'6' => return Err(bad("devices and FIFOs are not accepted; members are regular files")),
        b'5' => return Err(bad("directories are not accepted; members are regular files")),
        _ => return Err(bad("only regular-file members (type 0) are accepted")),
    }
    for (range, what) in [(100..108, "mode"), (108..116, "uid"), (116..124, "gid"), (136..148, "mtime")] {
        octal(&h[range], what, false)?;
    }
    let size = octal(&h[124..136], "size", true)?;
    let name = text(&h[..100]);
    let prefix = if posix { text(&h[345..500]) } else { &[][..] };
    let mut full = Vec::with_capacity(prefix.len() + 1 + name.len());
    if !prefix.is_empty() {
        full.extend_from_slice(prefix);
        full.push(b'/');
    }
    full.extend_from_slice(name);
    if name.is_empty() {
        return Err(bad("a member has no name"));
    }
    let name = String::from_utf8(full).map_err(|_| bad("a member name is not UTF-8"))?;
    Ok((name, size))
}

impl Iterator for Members<'_> {
    type Item = Result<Member, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.step();
        if !matches!(r, Some(Ok(_))) {
            self.done = true;
        }
        r
    }
}

impl Members<'_> {
    fn step(&mut self) -> Option<Result<Member, BatchError>> {
        let rest = &self.body[self.pos..];
        if rest.is_empty() {
            return None; // no end-of-archive blocks: the body simply ends
        }
        let Some(h) = rest.get(..BLOCK) else {
            return Some(Err(bad("the body ends inside a header")));
        };
        if h.iter().all(|&b| b == 0) {
            // End of archive: only zero blocks (padding) may follow.
            if !rest.iter().all(|&b| b == 0) {
                return Some(Err(bad("data after the end-of-archive blocks")));
            }
            return None;
        }
        let (name, size) = match header(h) {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        let left = rest.len() - BLOCK;
        // Compared as u64 before any conversion: a declared size never drives an allocation.
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        if padded > left as u64 {
            return Some(Err(bad(format!("member {name:?} claims more bytes than the body holds"))));
        }
        // padded ≤ left, a usize: the conversions cannot fail or truncate.
        let (size, padded) = (size as usize, padded as usize);
        let start = self.pos + BLOCK;
        self.pos = start + padded;
        Some(Ok(Member { name, data: start..start + size }))
    }
}

/// The documents of a batch body: for each pair, the range of the content in `body` and the
/// deposit body. A content above `max_content` is [`BatchError::TooLarge`]; more than
/// `max_items` documents, a deposit body without its content, or one that does not parse is
/// [`BatchError::Malformed`].
pub fn items(body: &[u8], max_content: u64, max_items: usize) -> Result<Vec<(Range<usize>, NewDocument)>, BatchError> {
    let mut out = Vec::new();
    let mut pending: Option<NewDocument> = None;
    for member in members(body) {
        let Member { name, data } = member?;
        match pending.take() {
            None => {
                if !name.ends_with(".json") {
                    return Err(bad(format!("member {name:?} should be a deposit body (.json)")));
                }
                if data.len() > MAX_DEPOSIT_BODY {
                    return Err(bad(format!("{name}: a deposit body is at most 2 MiB")));
                }
                pending = Some(serde_json::from_slice(&body[data]).map_err(|e| bad(format!("{name}: {e}")))?);
            }
            Some(new) => {
                if data.len() as u64 > max_content {
                    return Err(BatchError::TooLarge(name));
                }
                if out.len() == max_items {
                    return Err(bad(format!("at most {max_items} documents per batch")));
                }
                out.push((data, new));
            }
        }
    }
    if pending.is_some() {
        return Err(bad("the last deposit body has no content after it"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header block as a plain writer makes it (GNU or POSIX magic), checksum set.
    fn block(name: &str, size: u64, typeflag: u8, posix: bool) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000600");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = typeflag;
        if posix {
            h[257..265].copy_from_slice(b"ustar\x0000");
        } else {
            h[257..265].copy_from_slice(b"ustar  \x00");
        }
        checksum(&mut h);
        h
    }

    fn checksum(h: &mut [u8]) {
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    }

    fn member(out: &mut Vec<u8>, name: &str, data: &[u8]) {
        out.extend(block(name, data.len() as u64, b'0', false));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }

    fn deposit_json() -> Vec<u8> {
        br#"{"digest":"0000000000000000000000000000000000000000000000000000000000000000","doc_type":"giay-khai-sinh","title":"t","media_type":"application/pdf"}"#.to_vec()
    }

    #[test]
    fn reads_what_the_tar_crate_writes() {
        let mut b = tar::Builder::new(Vec::new());
        for (name, bytes) in [("0.json", deposit_json()), ("0.bin", b"hello".to_vec())] {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, name, bytes.as_slice()).unwrap();
        }
        let body = b.into_inner().unwrap();
        let got = items(&body, 1 << 20, 10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(&body[got[0].0.clone()], b"hello");
        // POSIX ustar headers too, with a prefix.
        let mut body = Vec::new();
        let mut h = block("0.json", deposit_json().len() as u64, 0, true);
        h[345..348].copy_from_slice(b"dir");
        checksum(&mut h);
        body.extend(h);
        body.extend(deposit_json());
        body.resize(body.len().div_ceil(BLOCK) * BLOCK, 0);
        member(&mut body, "0.bin", b"x");
        body.extend([0u8; 1024]);
        let m: Vec<Member> = members(&body).collect::<Result<_, _>>().unwrap();
        assert_eq!(m[0].name, "dir/0.json");
        assert_eq!(items(&body, 1 << 20, 10).unwrap().len(), 1);
    }

    #[test]
    fn item_9_6_refuses_everything_but_plain_regular_files() {
        for t in [b'S', b'x', b'g', b'L', b'K', b'1', b'2', b'3', b'4', b'5', b'6', b'7', b'V'] {
            let mut body = block("a.json", 0, t, false);
            body.extend([0u8; 1024]);
            assert!(matches!(items(&body, 1 << 20, 10), Err(BatchError::Malformed(_))), "type {}", t as char);
        }
        // A GNU sparse member declaring a huge real size, 1,536 bytes in all.
        let mut sparse = block("a.bin", 8_000_000_000, b'S', false);
        sparse[483..495].copy_from_slice(b"77777777777\0");
        checksum(&mut sparse);
        sparse.extend([0u8; 1024]);
        assert!(items(&sparse, u64::MAX, 10).is_err());
        // A size larger than the body.
        let mut body = block("a.json", 1 << 30, b'0', false);
        body.extend([0u8; 1024]);
        let e = items(&body, u64::MAX, 10).unwrap_err();
        assert!(e.to_string().contains("more bytes than the body holds"), "{e}");
        // A base-256 size.
        let mut h = block("a.json", 0, b'0', false);
        h[124] = 0x80;
        h[135] = 1;
        checksum(&mut h);
        assert!(items(&h, u64::MAX, 10).is_err());
        // A bad checksum, no magic, junk after the end, a truncated header.
        let mut h = block("a.json", 0, b'0', false);
        h[0] = b'b';
        assert!(items(&h, u64::MAX, 10).is_err());
        let mut h = block("a.json", 0, b'0', false);
        h[257..265].fill(0);
        checksum(&mut h);
        assert!(items(&h, u64::MAX, 10).is_err());
        let mut h = vec![0u8; 1024];
        h.push(1);
        assert!(items(&h, u64::MAX, 10).is_err());
        assert!(items(&[1u8; 100], u64::MAX, 10).is_err());
        // Octal fields with junk.
        let mut h = block("a.json", 0, b'0', false);
        h[136..148].copy_from_slice(b"12 34567\0\0\0\0");
        checksum(&mut h);
        assert!(items(&h, u64::MAX, 10).is_err());
    }

    #[test]
    fn pairs_limits_and_sizes() {
        let mut body = Vec::new();
        member(&mut body, "0.json", &deposit_json());
        member(&mut body, "0.bin", &[7u8; 600]);
        assert_eq!(items(&body, 599, 10), Err(BatchError::TooLarge("0.bin".into())));
        assert_eq!(items(&body, 600, 10).unwrap().len(), 1);
        assert!(items(&body, 600, 0).is_err());
        let mut unpaired = Vec::new();
        member(&mut unpaired, "0.json", &deposit_json());
        assert!(items(&unpaired, 600, 10).is_err());
        let mut wrong = Vec::new();
        member(&mut wrong, "0.bin", b"x");
        assert!(items(&wrong, 600, 10).is_err());
        assert_eq!(items(&[], 600, 10).unwrap().len(), 0);
    }
}
