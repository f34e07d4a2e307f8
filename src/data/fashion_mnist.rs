//! Fashion-MNIST (Zalando, MIT; Debian's `dataset-fashion-mnist`): 60,000 training and 10,000
//! test images of clothing, 28×28 grayscale, ten balanced classes, in IDX files
//! ([`super::idx`]). kiln's image pipeline reads image files, so the arrays are written once as
//! PNGs with a `train.csv` and a `test.csv` list (`image,label`) into the cache; `kiln train
//! --task fashion-mnist` then reads that folder like any user's image list, and `kiln eval
//! --data <it>/test.csv` can score a run on the official test set.

use std::path::{Path, PathBuf};

use super::fetch::put_in_place;
use super::idx;
use crate::error::{Error, Result};

/// The class names, in label order (the data set's README).
pub const CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

/// The IDX files of each split, as Debian ships them (`{split}-images-idx3-ubyte.gz`, ...).
pub const SPLITS: [(&str, &str); 2] = [("train", "train"), ("test", "t10k")];

/// A split's images `[N, 28, 28]` and labels `[N]`, checked against each other.
pub fn read_split(idx_dir: &Path, prefix: &str) -> Result<(Vec<usize>, idx::Idx, Vec<u8>)> {
    let images_path = idx_dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
    let labels_path = idx_dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
    let images = idx::read(&images_path)?;
    let labels = idx::read(&labels_path)?;
    if images.dims.len() != 3 {
        return Err(Error::Parse {
            path: images_path,
            message: format!("dimensions {:?}; images are [N, rows, cols]", images.dims),
        });
    }
    if labels.dims != [images.dims[0]] {
        return Err(Error::Parse {
            path: labels_path,
            message: format!("dimensions {:?}; expected [{}], one label per image", labels.dims, images.dims[0]),
        });
    }
    if let Some((i, l)) = labels.data.iter().enumerate().find(|(_, l)| **l as usize >= CLASSES.len()) {
        return Err(Error::Parse {
            path: labels_path,
            message: format!("label {l} of image {i} is not a class (0..{})", CLASSES.len() - 1),
        });
    }
    Ok((images.dims.clone(), images, labels.data))
}

/// Writes the splits of `idx_dir` as `out/images/{train,test}/NNNNN.png` with `out/{train,test}.csv`,
/// unless `out` is there already (it is assembled beside and renamed into place, so a folder
/// under its final name is whole); returns `out`.
pub fn as_image_list(idx_dir: &Path, out: &Path) -> Result<PathBuf> {
    if out.join("test.csv").is_file() {
        return Ok(out.to_path_buf());
    }
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let built = write_pngs(idx_dir, &partial);
    put_in_place(built, &partial, out, &out.join("test.csv"))?;
    Ok(out.to_path_buf())
}

fn write_pngs(idx_dir: &Path, dir: &Path) -> Result<()> {
    for (split, prefix) in SPLITS {
        let (dims, images, labels) = read_split(idx_dir, prefix)?;
        let (rows, cols) = (dims[1], dims[2]);
        // Under images/, so that the folder's `train.csv` is its training list (a `train/`
        // folder would be read as class folders instead).
        let folder = dir.join("images").join(split);
        std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
        let mut csv = String::from("image,label\n");
        for (i, pixels) in images.data.chunks(rows * cols).enumerate() {
            let file = format!("images/{split}/{i:05}.png");
            let img = image::GrayImage::from_raw(cols as u32, rows as u32, pixels.to_vec()).expect("sizes checked");
            img.save(dir.join(&file))
                .map_err(|e| Error::Parse { path: dir.join(&file), message: format!("cannot write the PNG: {e}") })?;
            csv.push_str(&format!("{file},{}\n", CLASSES[labels[i] as usize]));
        }
        crate::util::write_atomic(&dir.join(format!("{split}.csv")), csv.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// Gzipped IDX files of `n` images per split: image i is all `i * 9`, label `i % 10`.
    pub fn tiny(dir: &Path, n: usize) {
        let gz = |path: PathBuf, bytes: Vec<u8>| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&bytes).unwrap();
            std::fs::write(path, enc.finish().unwrap()).unwrap();
        };
        for (_, prefix) in SPLITS {
            let pixels: Vec<u8> = (0..n).flat_map(|i| vec![(i * 9) as u8; 28 * 28]).collect();
            gz(dir.join(format!("{prefix}-images-idx3-ubyte.gz")), idx::to_bytes(&[n, 28, 28], &pixels));
            let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
            gz(dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), idx::to_bytes(&[n], &labels));
        }
    }

    #[test]
    fn writes_an_image_list_once_and_names_bad_labels() {
        let tmp = tempfile::tempdir().unwrap();
        let idx_dir = tmp.path().join("idx");
        std::fs::create_dir_all(&idx_dir).unwrap();
        tiny(&idx_dir, 12);
        let out = as_image_list(&idx_dir, &tmp.path().join("png")).unwrap();
        let csv = std::fs::read_to_string(out.join("train.csv")).unwrap();
        assert_eq!(csv.lines().count(), 13);
        assert_eq!(csv.lines().nth(2), Some("images/train/00001.png,Trouser"));
        let img = image::open(out.join("images/test/00011.png")).unwrap().to_luma8();
        assert_eq!((img.dimensions(), img.get_pixel(5, 5).0[0]), ((28, 28), 99));
        // A second call finds the folder whole and writes nothing.
        std::fs::remove_file(out.join("images/test/00000.png")).unwrap();
        as_image_list(&idx_dir, &out).unwrap();
        assert!(!out.join("images/test/00000.png").exists());

        let labels = idx_dir.join("t10k-labels-idx1-ubyte.gz");
        std::fs::write(&labels, idx::to_bytes(&[12], &[10; 12])).unwrap();
        let e = read_split(&idx_dir, "t10k").unwrap_err().to_string();
        assert!(e.contains("t10k-labels") && e.contains("label 10"), "{e}");
        std::fs::write(&labels, idx::to_bytes(&[11], &[0; 11])).unwrap();
        let e = read_split(&idx_dir, "t10k").unwrap_err().to_string();
        assert!(e.contains("one label per image"), "{e}");
        assert!(!tmp.path().join("png2").exists() && as_image_list(&idx_dir, &tmp.path().join("png2")).is_err());
        assert!(!tmp.path().join("png2").exists(), "a failed build leaves no folder");
    }
}
