//! The audit tree as C2SP tlog-tiles of height 8 (SPEC.md §14, "Sequencer and tiles").
//!
//! Tile `n` at level `l` holds, for `i` in 0..256, `MTH(D[(n·256 + i)·256^l .. (n·256 + i + 1)·256^l])`:
//! level 0 holds leaf hashes, level `l` the roots of full tiles of level `l − 1`. The rightmost
//! tile of a level is partial (1 to 255 hashes) or absent. The sequencer keeps those partial
//! tiles in memory (the [`Edge`]) and so appends without reading the store; proofs read tiles
//! through [`TileNodes`].

use std::collections::HashMap;

use crate::log::merkle::{self, node_hash, Hash, MerkleError, Nodes};

/// Hashes in a full tile.
pub const WIDTH: usize = 256;
/// Bytes of a hash.
pub const HASH: usize = 32;
/// Bytes of a full tile.
pub const FULL_BYTES: usize = WIDTH * HASH;
/// The highest tile level a path may name (C2SP: 0 to 63).
pub const MAX_LEVEL: u8 = 63;

fn shr(x: u64, bits: u32) -> u64 {
    x.checked_shr(bits).unwrap_or(0)
}

/// The width of tile `index` at `level` in a tree of `size` leaves: 256 for a full tile, 1 to
/// 255 for the partial one, 0 when the tile does not exist.
pub fn width_at(size: u64, level: u8, index: u64) -> usize {
    let bits = 8 * u32::from(level);
    let full = shr(size, bits + 8);
    if index < full {
        WIDTH
    } else if index == full {
        (shr(size, bits) & 0xff) as usize
    } else {
        0
    }
}

/// The path of a tile below `tile/`: `<L>/<N>` or `<L>/<N>.p/<W>`, with `N` in 3-digit groups,
/// `x` before all but the last.
pub fn path(level: u8, index: u64, partial: Option<usize>) -> String {
    let mut groups = Vec::new();
    let mut n = index;
    loop {
        groups.push(n % 1000);
        n /= 1000;
        if n == 0 {
            break;
        }
    }
    let last = groups.len() - 1;
    let mut out = level.to_string();
    for (k, g) in groups.iter().rev().enumerate() {
        out.push('/');
        if k < last {
            out.push('x');
        }
        out.push_str(&format!("{g:03}"));
    }
    if let Some(w) = partial {
        out.push_str(&format!(".p/{w}"));
    }
    out
}

/// Parses a tile path (below `tile/`) in its one canonical form; None for anything else
/// (entry bundles, levels above 63, widths outside 1..=255, leading zeros, an index beyond u64).
pub fn parse_path(p: &str) -> Option<(u8, u64, Option<usize>)> {
    let mut segs: Vec<&str> = p.split('/').collect();
    let level_text = segs.first().copied()?;
    if level_text.is_empty() || !level_text.bytes().all(|b| b.is_ascii_digit()) || level_text.len() > 2 {
        return None;
    }
    let level: u8 = level_text.parse().ok()?;
    if level > MAX_LEVEL {
        return None;
    }
    segs.remove(0);
    let mut width = None;
    if segs.len() >= 2 && segs[segs.len() - 2].ends_with(".p") {
        let w_text = segs.pop()?;
        if w_text.is_empty() || !w_text.bytes().all(|b| b.is_ascii_digit()) || w_text.len() > 3 {
            return None;
        }
        let w: usize = w_text.parse().ok()?;
        if !(1..WIDTH).contains(&w) {
            return None;
        }
        width = Some(w);
        let last = segs.pop()?;
        segs.push(last.strip_suffix(".p")?);
    }
    if segs.is_empty() || segs.len() > 7 {
        return None;
    }
    let mut index: u64 = 0;
    let last = segs.len() - 1;
    for (k, s) in segs.iter().enumerate() {
        let digits = if k < last { s.strip_prefix('x')? } else { s };
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let g: u64 = digits.parse().ok()?;
        index = index.checked_mul(1000)?.checked_add(g)?;
    }
    // Exactly one spelling per tile (no `x000/` groups in front).
    (path(level, index, width) == p).then_some((level, index, width))
}

/// The Merkle Tree Hash of a power-of-two number of consecutive hashes (a perfect subtree).
pub fn perfect_root(hashes: &[Hash]) -> Hash {
    let mut layer: Vec<Hash> = hashes.to_vec();
    while layer.len() > 1 {
        layer = layer.chunks(2).map(|p| if p.len() == 2 { node_hash(&p[0], &p[1]) } else { p[0] }).collect();
    }
    layer.first().copied().unwrap_or_else(merkle::empty_root)
}

/// The hashes of tile bytes (their length a multiple of 32).
pub fn hashes_of(bytes: &[u8]) -> Vec<Hash> {
    bytes
        .chunks_exact(HASH)
        .map(|c| {
            let mut h = [0u8; HASH];
            h.copy_from_slice(c);
            h
        })
        .collect()
}

fn bytes_of(hashes: &[Hash]) -> Vec<u8> {
    hashes.concat()
}

/// Tiles by level and index.
pub type TileMap = HashMap<(u8, u64), std::sync::Arc<Vec<u8>>>;

/// A tile to write: level, index and its bytes.
pub type TileWrite = (u8, u64, Vec<u8>);

/// The right edge of the tree: per tile level, the hashes of its rightmost incomplete tile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edge {
    size: u64,
    levels: Vec<Vec<Hash>>,
}

/// The edge could not be rebuilt from the stored tiles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit tile {level}/{index} holds {have} hashes, the tree size needs {need}")]
pub struct EdgeError {
    /// Tile level.
    pub level: u8,
    /// Tile index.
    pub index: u64,
    /// Hashes stored (0 if the tile is missing).
    pub have: usize,
    /// Hashes needed.
    pub need: usize,
}

impl Edge {
    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; the tiles it fills are added to `full`. Returns the highest level
    /// whose partial tile changed.
    pub fn push(&mut self, leaf: Hash, full: &mut Vec<TileWrite>) -> usize {
        self.size += 1;
        let mut level = 0;
        let mut h = leaf;
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::with_capacity(WIDTH));
            }
            self.levels[level].push(h);
            if self.levels[level].len() < WIDTH {
                return level;
            }
            let index = shr(self.size, 8 * (level as u32 + 1)) - 1;
            h = perfect_root(&self.levels[level]);
            full.push((level as u8, index, bytes_of(&self.levels[level])));
            self.levels[level].clear();
            level += 1;
        }
    }

    /// The partial tiles of levels `0..=up_to` that are not empty.
    pub fn partials(&self, up_to: usize) -> Vec<TileWrite> {
        self.levels
            .iter()
            .enumerate()
            .take(up_to.saturating_add(1))
            .filter(|(_, l)| !l.is_empty())
            .map(|(level, l)| (level as u8, shr(self.size, 8 * (level as u32 + 1)), bytes_of(l)))
            .collect()
    }

    /// The RFC 9162 root of the tree.
    pub fn root(&self) -> Hash {
        // The perfect subtrees of the size's binary decomposition, largest first.
        let mut subtrees = Vec::new();
        for hashes in self.levels.iter().rev() {
            let mut at = 0;
            for r in (0..8).rev() {
                let n = 1usize << r;
                if hashes.len() & n != 0 {
                    subtrees.push(perfect_root(&hashes[at..at + n]));
                    at += n;
                }
            }
        }
        let Some(mut acc) = subtrees.pop() else { return merkle::empty_root() };
        while let Some(left) = subtrees.pop() {
            acc = node_hash(&left, &acc);
        }
        acc
    }

    /// Rebuilds the edge of a tree of `size` leaves from its stored partial tiles (one read per
    /// level that has one).
    pub fn rebuild<E>(
        size: u64,
        mut read: impl FnMut(u8, u64) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Result<Edge, EdgeError>, E> {
        let mut levels = Vec::new();
        let mut level: u8 = 0;
        while shr(size, 8 * u32::from(level)) > 0 {
            let need = (shr(size, 8 * u32::from(level)) & 0xff) as usize;
            let index = shr(size, 8 * (u32::from(level) + 1));
            let mut hashes = Vec::with_capacity(WIDTH);
            if need > 0 {
                let bytes = read(level, index)?.unwrap_or_default();
                let have = bytes.len() / HASH;
                if have < need || !bytes.len().is_multiple_of(HASH) {
                    return Ok(Err(EdgeError { level, index, have, need }));
                }
                hashes = hashes_of(&bytes[..need * HASH]);
            }
            levels.push(hashes);
            level += 1;
        }
        Ok(Ok(Edge { size, levels }))
    }
}

/// Subtree hashes computed from tiles, for the RFC 9162 algorithms of [`merkle`]. Tiles read
/// once per use are kept for the rest of it.
pub struct TileNodes<F> {
    read: F,
    seen: std::cell::RefCell<TileMap>,
}

impl<F> std::fmt::Debug for TileNodes<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TileNodes").field("tiles_read", &self.seen.borrow().len()).finish()
    }
}

impl<F: Fn(u8, u64) -> Option<std::sync::Arc<Vec<u8>>>> TileNodes<F> {
    /// Reads tiles with `read` (None when missing).
    pub fn new(read: F) -> Self {
        Self { read, seen: Default::default() }
    }
}

impl<F: Fn(u8, u64) -> Option<std::sync::Arc<Vec<u8>>>> Nodes for TileNodes<F> {
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
        let missing = MerkleError::MissingNode { level, index };
        let (tile_level, r) = (level / 8, u32::from(level % 8));
        let start = index.checked_shl(r).ok_or(missing.clone())?;
        let (tile, offset) = (start >> 8, (start & 0xff) as usize);
        let count = 1usize << r;
        let bytes = {
            let cached = self.seen.borrow().get(&(tile_level, tile)).cloned();
            match cached {
                Some(b) => b,
                None => {
                    let b = (self.read)(tile_level, tile).ok_or(missing.clone())?;
                    self.seen.borrow_mut().insert((tile_level, tile), b.clone());
                    b
                }
            }
        };
        let range = offset * HASH..(offset + count) * HASH;
        let slice = bytes.get(range).ok_or(missing)?;
        Ok(perfect_root(&hashes_of(slice)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::merkle::leaf_hash;

    #[test]
    fn paths_as_the_spec_spells_them() {
        assert_eq!(path(0, 1_234_067, None), "0/x001/x234/067");
        assert_eq!(path(1, 0, Some(17)), "1/000.p/17");
        assert_eq!(path(2, 1000, None), "2/x001/000");
        for p in ["0/x001/x234/067", "1/000.p/17", "63/000", "2/x001/000", "0/x018/x446/x744/x073/x709/x551/615"] {
            let (l, n, w) = parse_path(p).unwrap();
            assert_eq!(path(l, n, w), p);
        }
        for bad in [
            "",
            "0",
            "64/000",
            "01/000",
            "0/67",
            "0/x000/067",
            "0/001/002",
            "0/000.p/0",
            "0/000.p/256",
            "0/000.p/07",
            "entries/000",
            "0/000.p",
            "0/000/",
            "0/x018/x446/x744/x073/x709/x551/616",
            "-1/000",
            "0/0a0",
        ] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn widths_of_the_spec_example() {
        // 70,000 leaves: 273 full level-0 tiles and one of 112, one full level-1 tile and one
        // of 17, one level-2 tile of 1.
        let s = 70_000;
        assert_eq!((width_at(s, 0, 272), width_at(s, 0, 273), width_at(s, 0, 274)), (256, 112, 0));
        assert_eq!((width_at(s, 1, 0), width_at(s, 1, 1), width_at(s, 1, 2)), (256, 17, 0));
        assert_eq!((width_at(s, 2, 0), width_at(s, 3, 0)), (1, 0));
        assert_eq!((width_at(256, 0, 0), width_at(256, 1, 0), width_at(256, 0, 1)), (256, 1, 0));
        assert_eq!(width_at(u64::MAX, 7, 0), 255);
    }

    /// The edge's root, its tiles and the proofs read from them agree with the node-store tree
    /// of `merkle` for every size up to a little over two tile levels.
    #[test]
    fn edge_and_tiles_agree_with_the_merkle_tree() {
        let mut edge = Edge::default();
        let mut store: HashMap<(u8, u64), std::sync::Arc<Vec<u8>>> = HashMap::new();
        let leaves: Vec<Hash> = (0..66_000u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut prev_root = merkle::empty_root();
        for (i, &h) in leaves.iter().enumerate() {
            let mut full = Vec::new();
            let top = edge.push(h, &mut full);
            for (l, n, b) in full.into_iter().chain(edge.partials(top)) {
                store.insert((l, n), std::sync::Arc::new(b));
            }
            let size = i as u64 + 1;
            if size < 600 || size.is_multiple_of(4099) || size == 65_536 || size == 65_537 {
                let nodes = TileNodes::new(|l, n| store.get(&(l, n)).cloned());
                let root = merkle::root(&nodes, size).unwrap();
                assert_eq!(edge.root(), root, "size {size}");
                assert_eq!(root, naive_root(&leaves[..i + 1]), "size {size}");
                let idx = (i as u64 * 7919 + 13) % size;
                let proof = merkle::inclusion_proof(&nodes, idx, size).unwrap();
                assert!(merkle::verify_inclusion(&leaves[idx as usize], idx, size, &proof, &root));
                let old = size / 3 + 1;
                let old_root = merkle::root(&nodes, old).unwrap();
                let c = merkle::consistency_proof(&nodes, old, size).unwrap();
                assert!(merkle::verify_consistency(old, size, &old_root, &root, &c));
                let rebuilt =
                    Edge::rebuild::<()>(size, |l, n| Ok(store.get(&(l, n)).map(|b| b.to_vec()))).unwrap().unwrap();
                assert_eq!(rebuilt, edge);
                assert_ne!(root, prev_root);
                prev_root = root;
                // The store holds each tile as the spec defines it at this size.
                for (&(l, n), b) in &store {
                    assert_eq!(b.len() / HASH, width_at(size, l, n), "size {size}, tile {l}/{n}");
                }
            }
        }
        // A tile shorter than the size needs is found.
        let err = Edge::rebuild::<()>(300, |_, _| Ok(Some(vec![0u8; 32]))).unwrap().unwrap_err();
        assert_eq!((err.level, err.have, err.need), (0, 1, 44));
    }

    fn naive_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => merkle::empty_root(),
            1 => leaves[0],
            n => {
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }
}
