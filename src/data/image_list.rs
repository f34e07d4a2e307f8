//! A user's labelled images for `kiln train --data`: a folder per class (torchvision's
//! ImageFolder), the same under `train/` (and `valid/`, `test/`), or a csv/jsonl listing each
//! image's path (column or key `image`, or `path`), its `label` and an optional `group`, with
//! paths relative to the list's folder (`train.csv`/`train.jsonl` and friends in a folder, or one
//! file; a kiln run's data/*.jsonl, whose `text` is the path, reads too). Each image becomes an [`Example`] whose text is its path, so the splitting and
//! subsampling of text classification apply unchanged. Also the decoded images held in memory
//! at their evaluation size ([`ImageBank`]).

use std::path::{Path, PathBuf};

use image::RgbImage;
use image::imageops::FilterType;

use super::classify::{Example, Splits};
use super::images::{EXTENSIONS, ImageFolder, decode, resized_dims};
use crate::error::{Error, Result};

/// The splits found at `path`; a split not given is empty (the caller splits train).
pub fn read(path: &Path) -> Result<Splits> {
    if path.is_file() {
        return Ok(Splits { train: read_list(path)?, ..Splits::default() });
    }
    if !path.is_dir() {
        return Err(Error::Parse { path: path.to_path_buf(), message: "no such file or folder".into() });
    }
    let mut splits = Splits::default();
    let mut found = false;
    for (name, set) in [("train", &mut splits.train), ("valid", &mut splits.valid), ("test", &mut splits.test)] {
        let dir = path.join(name);
        let list = ["csv", "jsonl"].map(|x| path.join(format!("{name}.{x}"))).into_iter().find(|p| p.is_file());
        if dir.is_dir() {
            *set = from_folder(&dir)?;
            found = true;
        } else if let Some(list) = list {
            *set = read_list(&list)?;
            found = true;
        }
    }
    if !found {
        splits.train = from_folder(path)?;
    }
    Ok(splits)
}

fn from_folder(dir: &Path) -> Result<Vec<Example>> {
    let f = ImageFolder::scan(dir)?;
    Ok(f.items
        .into_iter()
        .map(|(p, k)| Example { text: p.display().to_string(), label: f.classes[k].clone(), group: None, line: 0 })
        .collect())
}

/// One listed image as read: (line, image, label, group).
type Row = (usize, Option<String>, Option<String>, Option<String>);

/// A csv (with a header) or jsonl list of images.
fn read_list(file: &Path) -> Result<Vec<Example>> {
    let base = file.parent().unwrap_or(Path::new("."));
    let bad = |line: usize, m: String| Error::Parse { path: file.to_path_buf(), message: format!("line {line}: {m}") };
    let mut rows: Vec<Row> = Vec::new();
    if file.extension().is_some_and(|x| x == "jsonl") {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(i + 1, e.to_string()))?;
            let s = |k: &str| match &v[k] {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            // `text` is where a kiln run's data/*.jsonl keeps the path.
            rows.push((i + 1, s("image").or_else(|| s("path")).or_else(|| s("text")), s("label"), s("group")));
        }
    } else {
        let mut reader =
            csv::Reader::from_path(file).map_err(|e| Error::Parse { path: file.into(), message: e.to_string() })?;
        let headers = reader.headers().map_err(|e| bad(1, e.to_string()))?.clone();
        let col = |names: &[&str]| headers.iter().position(|h| names.contains(&h.trim()));
        let (image, label, group) = (col(&["image", "path"]), col(&["label"]), col(&["group"]));
        for (i, rec) in reader.records().enumerate() {
            let rec = rec.map_err(|e| bad(i + 2, e.to_string()))?;
            let get =
                |c: Option<usize>| c.and_then(|c| rec.get(c)).map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
            rows.push((i + 2, get(image), get(label), get(group)));
        }
    }
    let mut out = Vec::new();
    for (line, image, label, group) in rows {
        let image = image.ok_or_else(|| bad(line, "no `image` (or `path`) given".into()))?;
        let label = label.ok_or_else(|| bad(line, "no `label` given".into()))?;
        // Absolute, so the run folder's copy of the split (data/*.jsonl) is read from anywhere.
        let p: PathBuf = std::path::absolute(base.join(&image)).unwrap_or_else(|_| base.join(&image));
        if !p.is_file() {
            return Err(bad(line, format!("image `{}` does not exist", p.display())));
        }
        out.push(Example { text: p.display().to_string(), label, group, line });
    }
    if out.is_empty() {
        return Err(Error::Parse { path: file.to_path_buf(), message: "lists no images".into() });
    }
    Ok(out)
}

/// Whether `data` holds labelled images: a list with an image column (`image` or `path`, or a
/// `text` that names an image file, as a kiln run's data/*.jsonl), a folder of class folders,
/// such a folder under `train/`, or a folder with such lists (`train.csv`, `test.jsonl`, ...).
pub fn looks_like_images(data: &Path) -> bool {
    if data.is_file() {
        let text = std::fs::read_to_string(data).unwrap_or_default();
        let first = text.lines().next().unwrap_or("");
        if first.split(',').any(|h| matches!(h.trim(), "image" | "path")) {
            return true;
        }
        let Ok(v) = serde_json::from_str::<serde_json::Value>(first) else { return false };
        let names_image = |p: &str| {
            let p = Path::new(p);
            p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
        };
        return v.get("image").is_some()
            || v.get("path").is_some()
            || v["text"].as_str().is_some_and(|t| names_image(t) && Path::new(t).is_file());
    }
    let lists = ["train", "valid", "test"].iter().flat_map(|s| ["csv", "jsonl"].map(|x| data.join(format!("{s}.{x}"))));
    if let Some(list) = lists.into_iter().find(|p| p.is_file()) {
        return looks_like_images(&list);
    }
    let root = if data.join("train").is_dir() { data.join("train") } else { data.to_path_buf() };
    ImageFolder::scan(&root).is_ok()
}

/// Decoded images in memory, the short side resized to the evaluation size once, so epochs
/// decode nothing (the training crops are taken from these, not from the full-size files).
pub struct ImageBank {
    pub images: Vec<RgbImage>,
}

impl ImageBank {
    pub fn load(paths: &[&str], short_side: u32) -> Result<ImageBank> {
        let mut images = Vec::with_capacity(paths.len());
        for p in paths {
            images.push(decode_resized(Path::new(p), short_side)?);
        }
        Ok(ImageBank { images })
    }
}

/// One file decoded to RGB, its short side made `short_side` (the aspect ratio kept, as
/// torchvision's `Resize(int)`).
pub fn decode_resized(path: &Path, short_side: u32) -> Result<RgbImage> {
    let img = decode(path)?.to_rgb8();
    let (w, h) = img.dimensions();
    let (nw, nh) = resized_dims(w, h, short_side);
    if (nw, nh) == (w, h) {
        return Ok(img);
    }
    Ok(image::imageops::resize(&img, nw, nh, FilterType::Triangle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path, w: u32, h: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7])).save(path).unwrap();
    }

    #[test]
    fn folders_lists_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        png(&d.join("cats/a.png"), 8, 6);
        png(&d.join("dogs/b.png"), 6, 8);
        let s = read(d).unwrap();
        assert_eq!(s.train.iter().map(|e| e.label.as_str()).collect::<Vec<_>>(), ["cats", "dogs"]);
        assert!(s.valid.is_empty());
        std::fs::write(d.join("list.csv"), "image,label,group\ncats/a.png,cat,indoor\ndogs/b.png,dog,\n").unwrap();
        let s = read(&d.join("list.csv")).unwrap();
        assert_eq!(s.train[0].group.as_deref(), Some("indoor"));
        assert_eq!(s.train[1].group, None);
        std::fs::write(
            d.join("list.jsonl"),
            "{\"path\": \"cats/a.png\", \"label\": 1}\n{\"image\": \"x.png\", \"label\": 0}\n",
        )
        .unwrap();
        let e = read(&d.join("list.jsonl")).unwrap_err().to_string();
        assert!(e.contains("list.jsonl") && e.contains("line 2") && e.contains("x.png"), "{e}");
        let img = decode_resized(&d.join("dogs/b.png"), 3).unwrap();
        assert_eq!(img.dimensions(), (3, 4));
        std::fs::write(d.join("cats/bad.png"), b"\x89PNG\r\n\x1a\ntruncated").unwrap();
        let e = decode_resized(&d.join("cats/bad.png"), 3).unwrap_err().to_string();
        assert!(e.contains("bad.png") && e.contains("cannot decode"), "{e}");
    }
}
