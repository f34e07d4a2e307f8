//! Clusters of near duplicates: the connected components of the pair graph, by union-find.

use crate::curate::minhash::NearPair;

/// For each of `n` items, the smallest index in its cluster: items linked by a chain of pairs
/// share a cluster (a~b and b~c put a, b, c together even if a and c are not a pair), and an
/// item in no pair is its own cluster. Keeping the item whose id equals its index keeps exactly
/// one item per cluster. Pairs naming an index `>= n` are ignored.
pub fn clusters(n: usize, pairs: &[NearPair]) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..n).collect();
    for p in pairs.iter().filter(|p| p.a < n && p.b < n) {
        let (ra, rb) = (root(&mut parent, p.a), root(&mut parent, p.b));
        // The larger root goes under the smaller, so every root is the smallest index of its
        // set by induction, and the root is the cluster id. No union by rank: path halving alone
        // keeps a find at O(log n) amortized, plenty for a pass over pairs.
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            parent[hi] = lo;
        }
    }
    (0..n).map(|i| root(&mut parent, i)).collect()
}

/// The root of `i`'s set, halving the path on the way (each visited node skips to its
/// grandparent), which keeps later finds short.
fn root(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: usize, b: usize) -> NearPair {
        NearPair { a, b, jaccard: 0.9 }
    }

    #[test]
    fn chains_are_transitive() {
        // 1~3 and 3~5: one cluster {1, 3, 5} although 1 and 5 are not a pair.
        assert_eq!(clusters(6, &[pair(1, 3), pair(3, 5)]), vec![0, 1, 2, 1, 4, 1]);
    }

    #[test]
    fn cluster_id_is_the_smallest_index_whatever_the_pair_order() {
        // The chain 7-6-5-4-3-2 given from its far end; then 0 joins through 2.
        let mut pairs: Vec<NearPair> = (2..7).rev().map(|i| pair(i, i + 1)).collect();
        assert_eq!(clusters(8, &pairs), vec![0, 1, 2, 2, 2, 2, 2, 2]);
        pairs.push(pair(0, 2));
        assert_eq!(clusters(8, &pairs), vec![0, 1, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn singletons_map_to_themselves() {
        assert_eq!(clusters(4, &[]), vec![0, 1, 2, 3]);
        assert_eq!(clusters(0, &[]), Vec::<usize>::new());
    }

    #[test]
    fn out_of_range_pairs_are_ignored() {
        assert_eq!(clusters(3, &[pair(0, 1), pair(1, 9)]), vec![0, 0, 2]);
    }

    #[test]
    fn a_long_chain_collapses() {
        let n = 100_000;
        let pairs: Vec<NearPair> = (0..n - 1).rev().map(|i| pair(i, i + 1)).collect();
        assert!(clusters(n, &pairs).iter().all(|&c| c == 0));
    }
}
