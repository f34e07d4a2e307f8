//! `kiln eval` of an image classifier saved by kiln (a run folder, or its `model/`): the
//! scores per class with the confusion matrix and calibration, per-group gaps (the list's
//! `group` column, e.g. ELPV's cell type), built-in image edge cases (blank, noise, a single
//! pixel, a long strip), and latency (decode, transform, forward and read back of one file) and
//! throughput per batch size.
//!
//! # Shapes
//! one image `[3, S, S]` after the evaluation transform; a batch `[N, 3, S, S]`; logits `[N, K]`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;

use super::calibration::softmax;
use super::classifier::{Scored, argmax, classification_scores};
use super::counterfactual::TermPair;
use super::edge_cases::{EdgeCase, EdgeResult};
use super::family::{Family, Head, Parts, Scoring, classifier_group_rows, limit, run_settings};
use super::latency::{Percentiles, ThroughputPoint};
use super::report::{CounterfactualReport, GroupReport, ImageInput, LatencyReport};
use super::settings::EvalSettings;
use super::slices::{SliceMetric, read_column};
use crate::autograd::{Tape, Var};
use crate::data::classify::{Example, LabelSet};
use crate::data::image_list::{self, ImageBank};
use crate::data::images::EvalTransform;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::models::image_classifier::ImageClassifier;
use crate::nn::BnMode;
use crate::tensor::Tensor;
use crate::train::vision::{eval_transform, predict};
use crate::util::SplitMix64;

/// The test images at `data`: a list (csv/jsonl, as `kiln train` reads, or a run's
/// data/test.jsonl), a folder with a `test` split, or a folder of class folders (all of it).
fn test_examples(data: &Path) -> Result<Vec<Example>> {
    let s = image_list::read(data)?;
    if !s.test.is_empty() {
        Ok(s.test)
    } else if s.valid.is_empty() {
        Ok(s.train)
    } else {
        Err(Error::Parse { path: data.to_path_buf(), message: "has train and valid splits but no test split".into() })
    }
}

/// The list file a `--group-by` column is read from.
fn list_file(data: &Path) -> Option<PathBuf> {
    if data.is_file() {
        return Some(data.to_path_buf());
    }
    ["test.csv", "test.jsonl"].iter().map(|n| data.join(n)).find(|p| p.is_file())
}

/// An image classifier scored on labelled images.
pub struct ImageFamily<'a> {
    gpu: &'a Gpu,
    model: ImageClassifier,
    labels: Vec<String>,
    tf: EvalTransform,
    paths: Vec<PathBuf>,
    /// The test images decoded, their short side at the transform's `resize`.
    bank: ImageBank,
    scored: Scored,
}

/// Loads the image classifier and scores the test set.
pub fn score_images<'a>(
    s: &EvalSettings,
    gpu: &'a Gpu,
    data: &Path,
    model_dir: PathBuf,
    labels: Vec<String>,
    run: Option<PathBuf>,
) -> Result<(ImageFamily<'a>, Scoring)> {
    let mut parts = Parts::new();
    if s.swap_terms.is_some() {
        return Err(Error::invalid("--swap-terms", "term swaps are for text models; this is an image classifier"));
    }
    let examples = limit(test_examples(data)?, s.limit);
    let gold = LabelSet { names: labels.clone() }.ids(&examples, &data.display().to_string())?;
    let (group_column, groups) = image_groups(s, data, &examples)?;
    // The run's own sizes unless --image-size says otherwise.
    let settings = run_settings(&run);
    let from_run = |key: &str| settings.as_ref().and_then(|r| r[key].as_u64()).map(|x| x as u32);
    let size = s.image_size.or_else(|| from_run("image_size")).unwrap_or(224);
    let resize = match s.image_size {
        Some(_) => None,
        None => from_run("resize"),
    }
    .unwrap_or((size * 256).div_ceil(224));
    if size < 32 {
        return Err(Error::invalid("--image-size", format!("{size} is below 32 (the CNNs downsample 32×)")));
    }
    let model = parts.run("load", || ImageClassifier::load(gpu, &model_dir, labels.len(), BnMode::Frozen, s.seed))?;
    if !model.head_from_checkpoint() {
        return Err(Error::Parse {
            path: model_dir.clone(),
            message: format!("the checkpoint has no head for its {} labels", labels.len()),
        });
    }
    let tf = eval_transform(&model, resize, size);
    let paths: Vec<PathBuf> = examples.iter().map(|e| PathBuf::from(&e.text)).collect();
    let bank = parts.run("decode", || {
        let p: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        ImageBank::load(&p, resize)
    })?;
    let mut peak = gpu.allocated_bytes();
    let scored = parts.run("scores", || {
        let p = predict(gpu, &model, &bank, &tf, None, s.batch_size)?;
        let probs: Vec<Vec<f64>> = p.logits.chunks(labels.len()).map(softmax).collect();
        let pred = probs.iter().map(|p| argmax(p)).collect();
        Ok(Scored { gold, pred, probs })
    })?;
    peak = peak.max(gpu.allocated_bytes());
    let mut report = Head {
        task: "image-classification",
        model: &model_dir,
        adapter: None,
        data,
        examples: examples.len(),
        max_len: size as usize,
        max_positions: 0,
        truncated: 0,
    }
    .report(gpu);
    report.image =
        Some(ImageInput { architecture: model.architecture(), resize, crop: size, mean: tf.mean, std: tf.std });
    report.classification = Some(classification_scores(&labels, &scored)?);
    let family = ImageFamily { gpu, model, labels, tf, paths, bank, scored };
    Ok((family, Scoring { parts, peak, pairs: None, group_column, groups, report }))
}

/// The groups of the test images: `--group-by COLUMN` of the list, or the list's `group`
/// column when it has one.
fn image_groups(s: &EvalSettings, data: &Path, examples: &[Example]) -> Result<(Option<String>, Vec<Option<String>>)> {
    let own = || examples.iter().map(|e| e.group.clone()).collect::<Vec<_>>();
    match s.group_by.as_deref() {
        Some("group") => Ok((Some("group".into()), own())),
        Some(col) => {
            let file = list_file(data).ok_or_else(|| {
                Error::invalid("--group-by", format!("`{col}` needs a csv or jsonl list of the images, not a folder"))
            })?;
            Ok((Some(col.to_string()), limit(read_column(&file, col)?, s.limit)))
        }
        None if examples.iter().any(|e| e.group.is_some()) => Ok((Some("group".into()), own())),
        None => Ok((None, Vec::new())),
    }
}

impl ImageFamily<'_> {
    /// Class probabilities of transformed images `[N, 3, S, S]` (flat).
    fn probabilities(&self, pixels: &[f32], n: usize) -> Result<Vec<Vec<f64>>> {
        let c = self.tf.crop as usize;
        let x = Var::constant(Tensor::from_f32(self.gpu, pixels, &[n, 3, c, c])?);
        let logits = self.model.logits(&Tape::no_grad(self.gpu), &x)?.value.to_f32_vec(self.gpu)?;
        Ok(logits.chunks(self.labels.len()).map(softmax).collect())
    }

    /// The built-in cases: images a deployed model meets that no training set holds.
    fn builtin_cases(&self) -> Vec<(String, String, RgbImage, Option<String>)> {
        let r = self.tf.resize.max(1);
        let mut rng = SplitMix64::new(0x1_3a6e);
        let noise = RgbImage::from_fn(r, r, |_, _| {
            let v = rng.next_u64();
            image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
        });
        let strip_h = (r / 8).max(1);
        vec![
            ("black".into(), format!("{r}×{r} black"), RgbImage::new(r, r), None),
            ("white".into(), format!("{r}×{r} white"), RgbImage::from_pixel(r, r, image::Rgb([255; 3])), None),
            ("noise".into(), format!("{r}×{r} uniform RGB noise"), noise, None),
            (
                "one pixel".into(),
                "1×1 grey".into(),
                RgbImage::from_pixel(1, 1, image::Rgb([128; 3])),
                Some(format!("upscaled to {r}×{r}")),
            ),
            (
                "long strip".into(),
                format!("{}×{strip_h} horizontal gradient", 8 * r),
                RgbImage::from_fn(8 * r, strip_h, |x, _| image::Rgb([(x * 255 / (8 * r)) as u8; 3])),
                Some(format!(
                    "the centre crop sees {} of {} columns after the resize",
                    self.tf.crop,
                    8 * r * r / strip_h
                )),
            ),
        ]
    }
}

impl Family for ImageFamily<'_> {
    fn slice_metrics(&self) -> Vec<SliceMetric> {
        vec![SliceMetric {
            name: "accuracy".into(),
            num: self.scored.correct(),
            den: vec![1.0; self.paths.len()],
            higher_is_better: true,
            gap: true,
        }]
    }

    fn complete_group_rows(&self, report: &mut GroupReport, groups: &[Option<String>]) -> Result<()> {
        classifier_group_rows(report, groups, &self.scored.gold, &self.scored.pred)
    }

    fn counterfactual(&self, _: &[TermPair], _: &str, _: &EvalSettings) -> Result<CounterfactualReport> {
        Err(Error::invalid("--swap-terms", "term swaps are for text models; this is an image classifier"))
    }

    fn edge_cases(&self, _user: &[EdgeCase]) -> Vec<EdgeResult> {
        self.builtin_cases()
            .into_iter()
            .map(|(name, input, img, note)| {
                let mut r = EdgeResult::new(&EdgeCase { name, text: String::new() });
                r.input = input;
                r.note = note;
                match self.probabilities(&self.tf.apply(&img), 1) {
                    Ok(mut p) => {
                        let p = p.remove(0);
                        let c = argmax(&p);
                        r.output = Some(self.labels[c].clone());
                        r.probability = Some(p[c]);
                    }
                    Err(e) => r.error = Some(e.to_string()),
                }
                r
            })
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// One image end to end (decode the file, transform, forward, read back), cycling through
    /// the test files; throughput on images decoded and transformed beforehand, so it measures
    /// the model.
    fn latency(&self, s: &EvalSettings, peak: &mut u64) -> Result<LatencyReport> {
        let mut times = Vec::with_capacity(s.latency_runs);
        for i in 0..s.warmup + s.latency_runs {
            let t0 = Instant::now();
            let pixels = self.tf.load(&self.paths[i % self.paths.len()])?;
            self.probabilities(&pixels, 1)?;
            if i >= s.warmup {
                times.push(t0.elapsed().as_secs_f64());
            }
            *peak = (*peak).max(self.gpu.allocated_bytes());
        }
        let n = self.bank.images.len();
        let max_batch = s.batch_sizes.iter().copied().max().unwrap_or(1);
        let one: Vec<Vec<f32>> = (0..max_batch.min(n)).map(|i| self.tf.apply(&self.bank.images[i])).collect();
        let mut throughput = Vec::new();
        for &b in &s.batch_sizes {
            let pixels: Vec<f32> = (0..b).flat_map(|i| one[i % one.len()].iter().copied()).collect();
            let point = ThroughputPoint::measure(b, 0, s.throughput_batches, s.warmup > 0, || {
                self.probabilities(&pixels, b).map(|_| ())
            })?;
            *peak = (*peak).max(self.gpu.allocated_bytes());
            throughput.push(point);
        }
        Ok(LatencyReport { warmup_runs: s.warmup, single: Some(Percentiles::of(&times)), throughput, generation: None })
    }
}
