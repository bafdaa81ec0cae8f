//! The audit log's Merkle tree: RFC 9162 (as RFC 6962) with SHA-256.
//!
//! `leaf hash = SHA-256(0x00 || leaf)`, `node hash = SHA-256(0x01 || left || right)`, and a tree
//! of `n` leaves splits at `k`, the largest power of two below `n`. Any RFC 6962 verifier can
//! check the roots and proofs made here.
//!
//! The algorithms read the hash of *complete* subtrees (`2^level` leaves starting at a multiple
//! of `2^level`) through [`Nodes`], so any root, inclusion proof or consistency proof needs
//! O(log n) of them, never a scan. The vault serves them from its C2SP tlog-tiles
//! (`tiles::TileNodes`); [`append_nodes`] is the node-per-key layout logs had before tiles.

use sha2::{Digest as _, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash of a leaf.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

/// The hash of an inner node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// Read access to the stored complete-subtree hashes.
pub trait Nodes {
    /// Hash of the complete subtree at `level` with index `index` (leaves
    /// `index·2^level .. (index+1)·2^level`). Errors when missing.
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError>;
}

/// A tree hash that should exist does not (storage damage) or a request is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// A stored node is missing.
    #[error("audit tree node {level}/{index} is missing")]
    MissingNode {
        /// Level of the node.
        level: u8,
        /// Index within the level.
        index: u64,
    },
    /// The request lies outside the tree.
    #[error("{0}")]
    OutOfRange(&'static str),
}

/// Hash of the leaves `start .. start+n` (n ≥ 1), where `start` is a multiple of the largest
/// power of two not above `n` (true for every range the RFC algorithms ask for).
pub fn subtree(nodes: &impl Nodes, start: u64, n: u64) -> Result<Hash, MerkleError> {
    subtree_memo(nodes, start, n, &mut Memo::default())
}

/// Hashes of incomplete subtrees already computed for one proof. The right-edge subtrees a proof
/// needs are nested (each is the right part of the previous one), so with this memo a proof
/// reads each stored node at most once: O(log n) reads.
type Memo = std::collections::HashMap<(u64, u64), Hash>;

fn subtree_memo(nodes: &impl Nodes, start: u64, n: u64, memo: &mut Memo) -> Result<Hash, MerkleError> {
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return nodes.node(n.trailing_zeros() as u8, start / n);
    }
    if let Some(h) = memo.get(&(start, n)) {
        return Ok(*h);
    }
    let k = split(n);
    let h = node_hash(&subtree_memo(nodes, start, k, memo)?, &subtree_memo(nodes, start + k, n - k, memo)?);
    memo.insert((start, n), h);
    Ok(h)
}

/// The root of the first `size` leaves.
pub fn root(nodes: &impl Nodes, size: u64) -> Result<Hash, MerkleError> {
    if size == 0 {
        return Ok(empty_root());
    }
    subtree(nodes, 0, size)
}

/// RFC 9162 §2.1.3.1 inclusion proof of leaf `index` in the tree of `size` leaves.
pub fn inclusion_proof(nodes: &impl Nodes, index: u64, size: u64) -> Result<Vec<Hash>, MerkleError> {
    if index >= size {
        return Err(MerkleError::OutOfRange("index must be below the tree size"));
    }
    let mut proof = Vec::new();
    // PATH(m, D[start:start+n]); hashes are collected leaf-to-root.
    fn path(
        nodes: &impl Nodes,
        m: u64,
        start: u64,
        n: u64,
        out: &mut Vec<Hash>,
        memo: &mut Memo,
    ) -> Result<(), MerkleError> {
        if n <= 1 {
            return Ok(());
        }
        let k = split(n);
        if m < k {
            path(nodes, m, start, k, out, memo)?;
            out.push(subtree_memo(nodes, start + k, n - k, memo)?);
        } else {
            path(nodes, m - k, start + k, n - k, out, memo)?;
            out.push(subtree_memo(nodes, start, k, memo)?);
        }
        Ok(())
    }
    path(nodes, index, 0, size, &mut proof, &mut Memo::default())?;
    Ok(proof)
}

/// RFC 9162 §2.1.4.1 consistency proof between the trees of `old` and `new` leaves.
pub fn consistency_proof(nodes: &impl Nodes, old: u64, new: u64) -> Result<Vec<Hash>, MerkleError> {
    if old > new {
        return Err(MerkleError::OutOfRange("from must not exceed to"));
    }
    let mut proof = Vec::new();
    if old == 0 || old == new {
        return Ok(proof);
    }
    // SUBPROOF(m, D[start:start+n], b)
    struct Ctx<'a, N> {
        nodes: &'a N,
        memo: Memo,
        out: Vec<Hash>,
    }
    fn sub<N: Nodes>(c: &mut Ctx<'_, N>, m: u64, start: u64, n: u64, b: bool) -> Result<(), MerkleError> {
        if m == n {
            if !b {
                let h = subtree_memo(c.nodes, start, n, &mut c.memo)?;
                c.out.push(h);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            sub(c, m, start, k, b)?;
            let h = subtree_memo(c.nodes, start + k, n - k, &mut c.memo)?;
            c.out.push(h);
        } else {
            sub(c, m - k, start + k, n - k, false)?;
            let h = subtree_memo(c.nodes, start, k, &mut c.memo)?;
            c.out.push(h);
        }
        Ok(())
    }
    let mut c = Ctx { nodes, memo: Memo::default(), out: Vec::new() };
    sub(&mut c, old, 0, new, true)?;
    proof = c.out;
    Ok(proof)
}

/// RFC 9162 §2.1.3.2: does `proof` show leaf hash `leaf` at `index` in the tree of `size` with
/// root `root`?
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: does `proof` show the tree of `old` leaves with root `old_root` is a
/// prefix of the tree of `new` leaves with root `new_root`?
pub fn verify_consistency(old: u64, new: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty();
    }
    let mut proof = proof.to_vec();
    if old.is_power_of_two() {
        proof.insert(0, *old_root);
    }
    let Some((first, rest)) = proof.split_first() else { return false };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && fr == *old_root && sr == *new_root
}

/// The complete-subtree hashes that appending leaf number `index` (with hash `leaf`) creates:
/// `(level, index, hash)` for level 0 and every level whose subtree it completes. `left` gives
/// the stored left sibling at a level.
pub fn append_nodes(
    index: u64,
    leaf: Hash,
    mut left: impl FnMut(u8, u64) -> Result<Hash, MerkleError>,
) -> Result<Vec<(u8, u64, Hash)>, MerkleError> {
    let mut out = vec![(0u8, index, leaf)];
    let (mut i, mut level, mut h) = (index, 0u8, leaf);
    while i & 1 == 1 {
        h = node_hash(&left(level, i - 1)?, &h);
        i >>= 1;
        level += 1;
        out.push((level, i, h));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// The stored-node side, built by appending.
    #[derive(Default)]
    struct Mem(HashMap<(u8, u64), Hash>, u64);
    impl Nodes for Mem {
        fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
            self.0.get(&(level, index)).copied().ok_or(MerkleError::MissingNode { level, index })
        }
    }
    impl Mem {
        fn push(&mut self, leaf: &[u8]) {
            let map = &self.0;
            let nodes = append_nodes(self.1, leaf_hash(leaf), |l, i| {
                map.get(&(l, i)).copied().ok_or(MerkleError::MissingNode { level: l, index: i })
            })
            .unwrap();
            for (l, i, h) in nodes {
                self.0.insert((l, i), h);
            }
            self.1 += 1;
        }
    }

    /// An independent, naive RFC 9162 implementation over the whole leaf list (§2.1.1–2.1.4),
    /// written from the RFC's definitions, sharing nothing with the code above but the two
    /// hash functions.
    mod naive {
        use super::super::{leaf_hash, node_hash, Hash};
        fn k(n: usize) -> usize {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            k
        }
        pub fn mth(d: &[Vec<u8>]) -> Hash {
            match d.len() {
                0 => sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new()).into(),
                1 => leaf_hash(&d[0]),
                n => node_hash(&mth(&d[..k(n)]), &mth(&d[k(n)..])),
            }
        }
        pub fn path(m: usize, d: &[Vec<u8>]) -> Vec<Hash> {
            let n = d.len();
            if n == 1 {
                return vec![];
            }
            let k = k(n);
            if m < k {
                let mut p = path(m, &d[..k]);
                p.push(mth(&d[k..]));
                p
            } else {
                let mut p = path(m - k, &d[k..]);
                p.push(mth(&d[..k]));
                p
            }
        }
        fn subproof(m: usize, d: &[Vec<u8>], b: bool) -> Vec<Hash> {
            let n = d.len();
            if m == n {
                return if b { vec![] } else { vec![mth(d)] };
            }
            let k = k(n);
            if m <= k {
                let mut p = subproof(m, &d[..k], b);
                p.push(mth(&d[k..]));
                p
            } else {
                let mut p = subproof(m - k, &d[k..], false);
                p.push(mth(&d[..k]));
                p
            }
        }
        pub fn proof(m: usize, d: &[Vec<u8>]) -> Vec<Hash> {
            if m == 0 || m == d.len() {
                vec![]
            } else {
                subproof(m, d, true)
            }
        }
    }

    fn leaves(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("leaf {i}").into_bytes()).collect()
    }

    #[test]
    fn rfc6962_known_roots() {
        // The 8-leaf tree of the RFC 6962 / certificate-transparency test data.
        let data: Vec<Vec<u8>> =
            ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
                .iter()
                .map(|h| hex::decode(h).unwrap())
                .collect();
        let mut mem = Mem::default();
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        assert_eq!(
            hex::encode(root(&mem, 0).unwrap()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for (i, d) in data.iter().enumerate() {
            mem.push(d);
            assert_eq!(hex::encode(root(&mem, i as u64 + 1).unwrap()), roots[i], "size {}", i + 1);
        }
    }

    #[test]
    fn every_size_to_300_matches_the_naive_implementation() {
        let all = leaves(300);
        let mut mem = Mem::default();
        for n in 1..=300usize {
            mem.push(&all[n - 1]);
            let d = &all[..n];
            let r = root(&mem, n as u64).unwrap();
            assert_eq!(r, naive::mth(d), "root {n}");
            for m in 0..n {
                let p = inclusion_proof(&mem, m as u64, n as u64).unwrap();
                assert_eq!(p, naive::path(m, d), "path {m}/{n}");
                assert!(verify_inclusion(&leaf_hash(&d[m]), m as u64, n as u64, &p, &r));
            }
            for m in 0..=n {
                let p = consistency_proof(&mem, m as u64, n as u64).unwrap();
                assert_eq!(p, naive::proof(m, d), "consistency {m}/{n}");
                assert!(verify_consistency(m as u64, n as u64, &naive::mth(&d[..m]), &r, &p), "verify {m}/{n}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn tampered_proofs_are_rejected(n in 2u64..300, m_seed in any::<u64>(), j_seed in any::<usize>(), bit in 0usize..256) {
            let all = leaves(n as usize);
            let mut mem = Mem::default();
            for l in &all {
                mem.push(l);
            }
            let r = root(&mem, n).unwrap();
            let m = m_seed % n;
            let leaf = leaf_hash(&all[m as usize]);
            let p = inclusion_proof(&mem, m, n).unwrap();
            prop_assert!(verify_inclusion(&leaf, m, n, &p, &r));
            // Any flipped bit in any proof hash, the leaf or the root fails.
            if !p.is_empty() {
                let mut bad = p.clone();
                let j = j_seed % bad.len();
                bad[j][bit / 8] ^= 1 << (bit % 8);
                prop_assert!(!verify_inclusion(&leaf, m, n, &bad, &r));
                prop_assert!(!verify_inclusion(&leaf, m, n, &p[..p.len() - 1], &r));
            }
            let mut bad_leaf = leaf;
            bad_leaf[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!verify_inclusion(&bad_leaf, m, n, &p, &r));
            prop_assert!(!verify_inclusion(&leaf, (m + 1) % n, n, &p, &r) || all[m as usize] == all[((m + 1) % n) as usize]);
            let mut extended = p.clone();
            extended.push(r);
            prop_assert!(!verify_inclusion(&leaf, m, n, &extended, &r));

            let old = 1 + m_seed % (n - 1);
            let old_root = root(&mem, old).unwrap();
            let c = consistency_proof(&mem, old, n).unwrap();
            prop_assert!(verify_consistency(old, n, &old_root, &r, &c));
            let mut bad = c.clone();
            let j = j_seed % bad.len();
            bad[j][bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!verify_consistency(old, n, &old_root, &r, &bad));
            let mut forked = old_root;
            forked[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!verify_consistency(old, n, &forked, &r, &c));
        }
    }

    /// Proofs read O(log n) stored nodes, whatever the shape of the tree.
    #[test]
    fn proofs_read_logarithmically_many_nodes() {
        struct Counting<'a>(&'a Mem, std::cell::Cell<usize>);
        impl Nodes for Counting<'_> {
            fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
                self.1.set(self.1.get() + 1);
                self.0.node(level, index)
            }
        }
        let mut mem = Mem::default();
        for i in 0..100_003u32 {
            mem.push(&i.to_le_bytes());
        }
        for n in [1_000u64, 65_536, 77_777, 100_003] {
            let bound = 2 * (64 - n.leading_zeros() as usize) + 2;
            for m in [0, n / 3, n - 1] {
                let c = Counting(&mem, std::cell::Cell::new(0));
                inclusion_proof(&c, m, n).unwrap();
                assert!(c.1.get() <= bound, "inclusion {m}/{n}: {} reads", c.1.get());
                let c = Counting(&mem, std::cell::Cell::new(0));
                consistency_proof(&c, m.max(1), n).unwrap();
                assert!(c.1.get() <= bound, "consistency {m}/{n}: {} reads", c.1.get());
            }
        }
    }

    #[test]
    fn out_of_range_requests() {
        let mut mem = Mem::default();
        mem.push(b"a");
        assert!(inclusion_proof(&mem, 1, 1).is_err());
        assert!(consistency_proof(&mem, 2, 1).is_err());
        assert!(!verify_inclusion(&leaf_hash(b"a"), 1, 1, &[], &root(&mem, 1).unwrap()));
    }
}
