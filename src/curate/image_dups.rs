//! `kiln data inspect` on images: exact duplicates (the same decoded pixels, whatever the file
//! format), near duplicates by a perceptual hash, duplicate clusters whose labels disagree, and
//! leakage: images duplicating one of an earlier file (train before valid before test) or of
//! another group.
//!
//! The perceptual hash is dHash: the image in grayscale shrunk to 9×8 (a triangle filter, so
//! every pixel counts), and one bit per pair of horizontal neighbours, set where the left is
//! darker. It survives re-encoding, resizing and small brightness changes; two images are near
//! duplicates when their hashes differ in at most `max_distance` of the 64 bits. Candidates come
//! from the pigeonhole principle: cut the hash into `max_distance + 1` bands, and two hashes
//! within that distance agree exactly on at least one band, so bucketing by each band finds
//! every pair without comparing all of them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use image::imageops::FilterType;
use serde::Serialize;

use super::cluster::clusters;
use super::minhash::NearPair;
use super::parallel::par_map;
use crate::data::classify::Example;
use crate::data::images::decode;
use crate::error::Result;
use crate::util::Hash64;

/// One listed image: its file (index into the inspected lists), its row and line for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageId {
    pub file: usize,
    pub row: usize,
    pub path: String,
}

/// A list of images to inspect: a name (a file, or a folder's split) and its images.
pub struct ImageList {
    pub name: String,
    pub images: Vec<Example>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageFileReport {
    pub name: String,
    pub images: usize,
    pub labels: BTreeMap<String, usize>,
    /// Largest label count over the smallest (None with fewer than two labels).
    pub imbalance_ratio: Option<f64>,
    /// Width × height of the images, and how many have each.
    pub sizes: BTreeMap<String, usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImagePair {
    pub a: ImageId,
    pub b: ImageId,
    /// Bits in which their dHashes differ (0 for different pixels with the same hash).
    pub distance: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageLeak {
    pub image: ImageId,
    /// The earlier image it duplicates (through its cluster).
    pub with: ImageId,
    pub exact: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageInspection {
    pub files: Vec<ImageFileReport>,
    /// Hash bits two near duplicates may differ in.
    pub max_distance: u32,
    /// Groups of images with the same decoded pixels (two or more).
    pub exact_duplicates: Vec<Vec<ImageId>>,
    /// Near-duplicate pairs of images with different pixels.
    pub near_duplicates: Vec<ImagePair>,
    /// Duplicate clusters (exact and near, transitively) whose images carry more than one label.
    pub label_conflicts: Vec<Vec<ImageId>>,
    /// Images duplicating an image of an earlier list.
    pub file_leaks: Vec<ImageLeak>,
    /// Images duplicating an image of another group that comes before them.
    pub group_leaks: Vec<ImageLeak>,
}

/// The 64-bit dHash of an image (see the module doc).
pub fn dhash(img: &image::DynamicImage) -> u64 {
    let small = image::imageops::resize(&img.to_luma8(), 9, 8, FilterType::Triangle);
    let mut h = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            let bit = small.get_pixel(x, y).0[0] < small.get_pixel(x + 1, y).0[0];
            h = (h << 1) | bit as u64;
        }
    }
    h
}

/// What one file is compared by: (the content hash of its dimensions and RGB pixels, its
/// dHash, its width and height).
type Hashes = (u64, u64, (u32, u32));

/// The content hash (dimensions and RGB pixels) and the dHash of one file.
fn hashes(path: &Path) -> Result<Hashes> {
    let img = decode(path)?;
    let rgb = img.to_rgb8();
    let mut content = Hash64::default();
    content.u64(rgb.width() as u64);
    content.u64(rgb.height() as u64);
    // Eight bytes a word: the hash folds words, so this is 8× fewer mixes than per byte.
    for chunk in rgb.as_raw().chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        content.u64(u64::from_le_bytes(w));
    }
    Ok((content.0, dhash(&img), rgb.dimensions()))
}

/// Pairs `(i, j)`, `i < j`, of hashes within `max_distance` bits, found by band buckets.
pub fn near_pairs(hashes: &[u64], max_distance: u32) -> Vec<(usize, usize, u32)> {
    let bands = (max_distance + 1).min(64) as usize;
    let mut found: Vec<(usize, usize, u32)> = Vec::new();
    for b in 0..bands {
        // Band b: bits [64·b/bands, 64·(b+1)/bands).
        let (lo, hi) = (64 * b / bands, 64 * (b + 1) / bands);
        let mask = if hi - lo == 64 { u64::MAX } else { ((1u64 << (hi - lo)) - 1) << lo };
        let mut buckets: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, &h) in hashes.iter().enumerate() {
            buckets.entry(h & mask).or_default().push(i);
        }
        for members in buckets.values() {
            for (k, &i) in members.iter().enumerate() {
                for &j in &members[k + 1..] {
                    let d = (hashes[i] ^ hashes[j]).count_ones();
                    if d <= max_distance {
                        found.push((i.min(j), i.max(j), d));
                    }
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Inspects the lists together: duplicates and leaks are found across all of them.
pub fn inspect_images(lists: &[ImageList], max_distance: u32) -> Result<ImageInspection> {
    let all: Vec<(usize, usize, &Example)> =
        lists.iter().enumerate().flat_map(|(f, l)| l.images.iter().enumerate().map(move |(r, e)| (f, r, e))).collect();
    let id = |k: usize| ImageId { file: all[k].0, row: all[k].1, path: all[k].2.text.clone() };
    let hashed: Vec<Result<Hashes>> = par_map(all.len(), |k| hashes(Path::new(&all[k].2.text)));
    let hashed: Vec<Hashes> = hashed.into_iter().collect::<Result<_>>()?;

    let mut files: Vec<ImageFileReport> = lists
        .iter()
        .map(|l| {
            let mut labels = BTreeMap::new();
            for e in &l.images {
                *labels.entry(e.label.clone()).or_insert(0) += 1;
            }
            let counts: Vec<usize> = labels.values().copied().collect();
            let imbalance_ratio = (counts.len() >= 2)
                .then(|| *counts.iter().max().expect("two") as f64 / *counts.iter().min().expect("two") as f64);
            ImageFileReport {
                name: l.name.clone(),
                images: l.images.len(),
                labels,
                imbalance_ratio,
                sizes: BTreeMap::new(),
            }
        })
        .collect();
    for (k, h) in hashed.iter().enumerate() {
        *files[all[k].0].sizes.entry(format!("{}×{}", h.2.0, h.2.1)).or_insert(0) += 1;
    }

    // Exact groups by content hash, in order of their first image.
    let mut first_of: HashMap<u64, usize> = HashMap::new();
    let exact_of: Vec<usize> = hashed.iter().enumerate().map(|(k, h)| *first_of.entry(h.0).or_insert(k)).collect();
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (k, &f) in exact_of.iter().enumerate() {
        groups.entry(f).or_default().push(k);
    }
    let exact_duplicates: Vec<Vec<ImageId>> =
        groups.values().filter(|g| g.len() > 1).map(|g| g.iter().map(|&k| id(k)).collect()).collect();

    // Near pairs among one representative of each exact group.
    let reps: Vec<usize> = groups.keys().copied().collect();
    let rep_hashes: Vec<u64> = reps.iter().map(|&k| hashed[k].1).collect();
    let near: Vec<(usize, usize, u32)> =
        near_pairs(&rep_hashes, max_distance).into_iter().map(|(i, j, d)| (reps[i], reps[j], d)).collect();
    let near_duplicates: Vec<ImagePair> =
        near.iter().map(|&(a, b, d)| ImagePair { a: id(a), b: id(b), distance: d }).collect();

    // Clusters over exact copies and near pairs.
    let mut links: Vec<NearPair> =
        near.iter().map(|&(a, b, d)| NearPair { a, b, jaccard: 1.0 - d as f64 / 64.0 }).collect();
    links.extend(exact_of.iter().enumerate().filter(|(k, f)| *k != **f).map(|(k, &f)| NearPair {
        a: f,
        b: k,
        jaccard: 1.0,
    }));
    let cluster = clusters(all.len(), &links);
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (k, &c) in cluster.iter().enumerate() {
        members.entry(c).or_default().push(k);
    }
    let label_conflicts: Vec<Vec<ImageId>> = members
        .values()
        .filter(|m| m.len() > 1 && m.iter().any(|&k| all[k].2.label != all[m[0]].2.label))
        .map(|m| m.iter().map(|&k| id(k)).collect())
        .collect();
    // A leak: the first member of the image's cluster that sits in an earlier list (or an
    // earlier image of another group).
    let mut file_leaks = Vec::new();
    let mut group_leaks = Vec::new();
    for m in members.values().filter(|m| m.len() > 1) {
        for &k in m {
            let exact = |w: usize| exact_of[w] == exact_of[k];
            if let Some(&w) = m.iter().find(|&&w| all[w].0 < all[k].0) {
                file_leaks.push(ImageLeak { image: id(k), with: id(w), exact: exact(w) });
            }
            let g = &all[k].2.group;
            if g.is_some()
                && let Some(&w) =
                    m.iter().take_while(|&&w| w < k).find(|&&w| all[w].2.group.is_some() && &all[w].2.group != g)
            {
                group_leaks.push(ImageLeak { image: id(k), with: id(w), exact: exact(w) });
            }
        }
    }
    Ok(ImageInspection {
        files,
        max_distance,
        exact_duplicates,
        near_duplicates,
        label_conflicts,
        file_leaks,
        group_leaks,
    })
}

/// What a person reads first: counts per list, then each finding with a few examples.
pub fn summary(ins: &ImageInspection, examples: usize) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for f in &ins.files {
        let labels: Vec<String> = f.labels.iter().map(|(l, n)| format!("{n} {l}")).collect();
        let sizes: Vec<String> = f.sizes.iter().map(|(sz, n)| format!("{n} at {sz}")).collect();
        let _ = writeln!(s, "{}: {} images ({}); {}", f.name, f.images, labels.join(", "), sizes.join(", "));
        if let Some(r) = f.imbalance_ratio {
            let _ = writeln!(s, "  label imbalance {r:.2} (largest over smallest)");
        }
    }
    let copies: usize = ins.exact_duplicates.iter().map(|g| g.len() - 1).sum();
    let _ =
        writeln!(s, "exact duplicates (same pixels): {} groups, {copies} redundant images", ins.exact_duplicates.len());
    for g in ins.exact_duplicates.iter().take(examples) {
        let _ = writeln!(s, "  {}", g.iter().map(|i| i.path.as_str()).collect::<Vec<_>>().join("  =  "));
    }
    let _ = writeln!(
        s,
        "near duplicates (dHash within {} of 64 bits): {} pairs",
        ins.max_distance,
        ins.near_duplicates.len()
    );
    for p in ins.near_duplicates.iter().take(examples) {
        let _ = writeln!(s, "  {}  ~  {}  ({} bits)", p.a.path, p.b.path, p.distance);
    }
    let _ = writeln!(s, "duplicate clusters whose labels disagree: {}", ins.label_conflicts.len());
    let names = |f: usize| ins.files[f].name.as_str();
    let _ = writeln!(s, "leaks across lists (an image duplicating one of an earlier list): {}", ins.file_leaks.len());
    for l in ins.file_leaks.iter().take(examples) {
        let kind = if l.exact { "exact" } else { "near" };
        let _ = writeln!(
            s,
            "  {} ({}) {kind} copy of {} ({})",
            l.image.path,
            names(l.image.file),
            l.with.path,
            names(l.with.file)
        );
    }
    let _ = writeln!(s, "leaks across groups: {}", ins.group_leaks.len());
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::SplitMix64;

    /// The band buckets find exactly the pairs an all-pairs comparison finds.
    #[test]
    fn band_buckets_find_every_pair_within_the_distance() {
        let mut rng = SplitMix64::new(7);
        let mut hashes: Vec<u64> = (0..300).map(|_| rng.next_u64()).collect();
        // Planted neighbours: copies of earlier hashes with 0..=6 bits flipped.
        for k in 0..120 {
            let mut h = hashes[k];
            for f in 0..(k % 7) {
                h ^= 1 << ((k * 13 + f * 29) % 64);
            }
            hashes.push(h);
        }
        for d in [0, 3, 4, 6] {
            let mut brute = Vec::new();
            for i in 0..hashes.len() {
                for j in i + 1..hashes.len() {
                    let dist = (hashes[i] ^ hashes[j]).count_ones();
                    if dist <= d {
                        brute.push((i, j, dist));
                    }
                }
            }
            assert!(!brute.is_empty());
            assert_eq!(near_pairs(&hashes, d), brute, "distance {d}");
        }
    }

    #[test]
    fn dhash_survives_brightness_and_resizing_but_not_a_mirror() {
        let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([((x * 7 + y * 3) % 200) as u8 + 20; 3]));
        let h = dhash(&image::DynamicImage::ImageRgb8(img.clone()));
        let brighter = image::RgbImage::from_fn(64, 48, |x, y| {
            let v = img.get_pixel(x, y).0[0] + 10;
            image::Rgb([v; 3])
        });
        assert_eq!(dhash(&image::DynamicImage::ImageRgb8(brighter)), h);
        let smaller = image::imageops::resize(&img, 32, 24, FilterType::Triangle);
        assert!((dhash(&image::DynamicImage::ImageRgb8(smaller)) ^ h).count_ones() <= 4);
        let mirrored = image::imageops::flip_horizontal(&img);
        assert!((dhash(&image::DynamicImage::ImageRgb8(mirrored)) ^ h).count_ones() > 16);
    }
}
