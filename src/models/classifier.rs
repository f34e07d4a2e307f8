//! Sequence classification on an encoder: pool the last hidden states (masked mean, as
//! sentence-transformers does, or the first token, as BERT's CLS), dropout, a linear head; or
//! BERT's own head (`--pooling pooler`: [CLS] → the pretrained pooler's dense + tanh → dropout →
//! classifier, what `BertForSequenceClassification` computes). The head is named `classifier`
//! and the pooler `bert.pooler.dense` as in `BertForSequenceClassification`.
//!
//! # Shapes
//! hidden `[B, T, C]` → pooled `[B, C]` → (pooler `[B, C]`) → logits `[B, K]` for K labels.

use std::path::Path;

use super::bert::{self, Bert, BertConfig, EncoderInput};
use crate::autograd::{self, Loss, Module, Param, Tape, Var, WeightLayout};
use crate::error::{Error, Result};
use crate::formats::peft::{self, PREFIX, TaskType};
use crate::formats::safetensors::{SafetensorsSource, WeightSource, read_config, save_safetensors};
use crate::gpu::Gpu;
use crate::kernels::elementwise::Activation;
use crate::nn::{Linear, LoraConfig, Rng};
use crate::tensor::Tensor;
use crate::util::write_atomic;

/// How a sequence's token states become one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The mean over real (unpadded) tokens: what all-MiniLM-L6-v2 was trained with.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// BERT's pooler on the first token: dense + tanh, with the checkpoint's pretrained weights,
    /// trained with the head (what `BertForSequenceClassification` and PEFT's
    /// `AutoPeftModelForSequenceClassification` compute).
    Pooler,
}

impl Pooling {
    /// How the run summary names it.
    pub fn describe(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "CLS",
            Pooling::Pooler => "BERT pooler ([CLS], dense + tanh)",
        }
    }
}

/// The pooler's linear layer as `BertForSequenceClassification` names it.
pub const POOLER: &str = "bert.pooler.dense";

/// HF's `initializer_range` default: the head starts as N(0, 0.02), bias 0.
const HEAD_INIT_STD: f32 = 0.02;

pub struct SequenceClassifier {
    pub body: Bert,
    pub pooling: Pooling,
    /// Dropout on the pooled vector before the head.
    pub dropout: f32,
    /// `classifier.weight` `[K, C]`, `classifier.bias` `[K]`.
    pub classifier: Linear,
    /// `bert.pooler.dense.{weight,bias}` `[C, C]`, `[C]`: only with [`Pooling::Pooler`].
    pub pooler: Option<Linear>,
    pub labels: Vec<String>,
    /// Whether the head came trained from the checkpoint (else it is fresh).
    pub head_from_checkpoint: bool,
}

impl SequenceClassifier {
    /// The encoder of `dir` with a head for `labels`: the checkpoint's own `classifier` when it
    /// has one for as many labels (a model fine-tuned before), else a fresh one from `seed`.
    pub fn load(gpu: &Gpu, dir: &Path, labels: Vec<String>, pooling: Pooling, seed: u64) -> Result<Self> {
        let config: BertConfig = read_config(dir)?;
        let mut src = SafetensorsSource::open(dir)?;
        let body = Bert::from_source(gpu, config, &mut src, &dir.join("config.json"))?;
        let c = body.hidden_size();
        let k = labels.len();
        let reuse = src.shape_of("classifier.weight") == Some(&[k, c][..]);
        let classifier = if reuse {
            let w = src.tensor(gpu, "classifier.weight", &[k, c])?;
            let b = src.tensor(gpu, "classifier.bias", &[k])?;
            Linear::new("classifier", w, Some(b), WeightLayout::OutIn)
        } else {
            fresh_head(gpu, c, k, seed)?
        };
        let pooler = if pooling == Pooling::Pooler { Some(load_pooler(gpu, &mut src, dir, c)?) } else { None };
        // A head for another number of labels is replaced, as transformers does with
        // `ignore_mismatched_sizes`.
        src.finish(&|n| bert::ignored_by_encoder(n) || n.starts_with("classifier."))?;
        let mut model = Self::assemble(body, classifier, labels, pooling)?;
        model.pooler = pooler;
        model.head_from_checkpoint = reuse;
        Ok(model)
    }

    /// An encoder with a fresh head (and, for [`Pooling::Pooler`], a fresh pooler: an encoder
    /// built in memory has no pretrained one).
    pub fn new(gpu: &Gpu, body: Bert, labels: Vec<String>, pooling: Pooling, seed: u64) -> Result<Self> {
        let c = body.hidden_size();
        let head = fresh_head(gpu, c, labels.len(), seed)?;
        let mut model = Self::assemble(body, head, labels, pooling)?;
        if pooling == Pooling::Pooler {
            let mut rng = Rng::new(seed ^ 0x9001_00E5);
            let w = Tensor::from_f32(gpu, &rng.normal(c * c, HEAD_INIT_STD), &[c, c])?;
            model.pooler = Some(Linear::new(POOLER, w, Some(Tensor::zeros(gpu, &[c])?), WeightLayout::OutIn));
        }
        Ok(model)
    }

    fn assemble(body: Bert, classifier: Linear, labels: Vec<String>, pooling: Pooling) -> Result<Self> {
        if labels.len() < 2 {
            return Err(Error::invalid("classifier", format!("needs at least 2 labels, found {labels:?}")));
        }
        let dropout = body.config.classifier_dropout.unwrap_or(body.config.hidden_dropout_prob);
        Ok(SequenceClassifier { body, pooling, dropout, classifier, pooler: None, labels, head_from_checkpoint: false })
    }

    pub fn num_labels(&self) -> usize {
        self.labels.len()
    }

    /// The pooled vectors `[B, C]` (with the pooler: the [CLS] states it reads; the pooler is
    /// part of the head, so the `head` strategy's cache holds what it reads).
    pub fn pooled(&self, tape: &Tape, input: &EncoderInput) -> Result<Var> {
        let h = self.body.forward(tape, input)?;
        let weights = match self.pooling {
            Pooling::Mean => autograd::mean_weights(&input.mask, input.batch, input.seq),
            Pooling::Cls | Pooling::Pooler => autograd::first_token_weights(input.batch, input.seq),
        };
        autograd::pool(tape, &h, &weights)
    }

    /// Logits `[B, K]` from pooled vectors (dropout when the tape trains); the pooler's dense +
    /// tanh first when there is one, as `BertPooler` then `BertForSequenceClassification`.
    pub fn head(&self, tape: &Tape, pooled: &Var) -> Result<Var> {
        let pooled = match &self.pooler {
            Some(dense) => autograd::activation(tape, Activation::Tanh, &dense.forward(tape, pooled)?)?,
            None => pooled.clone(),
        };
        let x = autograd::dropout(tape, &pooled, self.dropout)?;
        self.classifier.forward(tape, &x)
    }

    pub fn logits(&self, tape: &Tape, input: &EncoderInput) -> Result<Var> {
        let pooled = self.pooled(tape, input)?;
        self.head(tape, &pooled)
    }

    /// Mean cross-entropy of the logits against `targets` (label ids), optionally weighted per
    /// class (PyTorch's `CrossEntropyLoss(weight=...)`).
    pub fn loss(&self, tape: &Tape, logits: &Var, targets: &[usize], class_weights: Option<&[f32]>) -> Result<Loss> {
        let t: Vec<i32> = targets.iter().map(|&x| x as i32).collect();
        match class_weights {
            None => autograd::cross_entropy(tape, logits, &t),
            Some(w) => autograd::cross_entropy_weighted(tape, logits, &t, w),
        }
    }

    /// Logits of a batch on the host, row-major `[B, K]` (no gradients, no dropout).
    pub fn predict(&self, gpu: &Gpu, input: &EncoderInput) -> Result<Vec<f32>> {
        self.logits(&Tape::no_grad(gpu), input)?.value.to_f32_vec(gpu)
    }

    /// Blocks counted from the output: 0 the head, 1 the top encoder layer, ..., L the first
    /// layer, L + 1 the embeddings. Progressive unfreezing and per-block learning rates use it.
    pub fn depth(&self, param_name: &str) -> usize {
        block_depth(param_name, self.body.layers.len())
    }

    /// The deepest block: the embeddings.
    pub fn max_depth(&self) -> usize {
        self.body.layers.len() + 1
    }

    /// Freezes everything, then attaches LoRA (trainable) to the targeted encoder linears.
    pub fn add_lora(&mut self, gpu: &Gpu, cfg: &LoraConfig, seed: u64) -> Result<usize> {
        cfg.validate()?;
        self.visit_params_mut(&mut |p| p.grad = None);
        let mut rng = Rng::new(seed);
        let mut adapted = 0;
        for lin in self.body.linears_mut() {
            adapted += lin.add_lora(gpu, cfg, &mut rng)? as usize;
        }
        if adapted == 0 {
            return Err(Error::invalid(
                "lora",
                format!(
                    "target modules {:?} match no layer of this BERT model; its linear layers are \
                     [\"query\", \"key\", \"value\", \"dense\"]",
                    cfg.target_modules
                ),
            ));
        }
        Ok(adapted)
    }

    /// Makes exactly the parameters `keep` accepts trainable (fresh zeroed gradients for newly
    /// trainable ones; frozen ones drop theirs).
    pub fn set_trainable(&mut self, gpu: &Gpu, keep: &dyn Fn(&str) -> bool) -> Result<()> {
        let mut result = Ok(());
        self.visit_params_mut(&mut |p| {
            let k = keep(&p.name);
            if result.is_ok() {
                result = p.set_trainable(gpu, k);
            }
        });
        result
    }
}

/// Writes the classifier as a Hugging Face `BertForSequenceClassification` folder (config.json
/// with the labels, model.safetensors, the base's tokenizer files) plus `kiln_classifier.json`
/// (the pooling). Any LoRA adapter is merged first. transformers loads the folder; its own head
/// pools with BERT's pooler, so kiln's mean pooling is reproduced by pooling by hand.
pub fn save_pretrained(gpu: &Gpu, model: &mut SequenceClassifier, base: &Path, dir: &Path) -> Result<()> {
    for lin in model.body.linears_mut() {
        lin.merge_lora(gpu)?;
    }
    let mut params = Vec::new();
    model.visit_params(&mut |p| params.push((p.name.clone(), p.value.clone())));
    let tensors = params
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_f32_vec(gpu)?, t.shape().to_vec())))
        .collect::<Result<Vec<_>>>()?;
    let mut config = serde_json::to_value(&model.body.config).expect("configs serialize");
    config["model_type"] = "bert".into();
    config["architectures"] = serde_json::json!(["BertForSequenceClassification"]);
    config["num_labels"] = model.labels.len().into();
    let ids = model.labels.iter().enumerate();
    config["id2label"] = ids.clone().map(|(i, l)| (i.to_string(), serde_json::Value::from(l.as_str()))).collect();
    config["label2id"] = ids.map(|(i, l)| (l.clone(), serde_json::Value::from(i))).collect();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    save_safetensors(&dir.join("model.safetensors"), &tensors, Some(Default::default()))?;
    write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&config).expect("json").as_bytes())?;
    let meta = classifier_meta(model);
    write_atomic(&dir.join(CLASSIFIER_META), serde_json::to_string_pretty(&meta).expect("json").as_bytes())?;
    for name in ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"] {
        let from = base.join(name);
        if from.is_file() {
            let bytes = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
            write_atomic(&dir.join(name), &bytes)?;
        }
    }
    Ok(())
}

/// [`SequenceClassifier::depth`] for a model of `layers` encoder layers.
pub fn block_depth(param_name: &str, layers: usize) -> usize {
    let Some(rest) = param_name.strip_prefix(bert::PREFIX) else { return 0 };
    // The pooler belongs to the head: it trains whenever the classifier does.
    if rest.starts_with("pooler.") {
        return 0;
    }
    match rest.strip_prefix("encoder.layer.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok()) {
        Some(i) => layers - i.min(layers.saturating_sub(1)),
        None => layers + 1,
    }
}

/// The checkpoint's pretrained pooler (`bert.pooler.dense` or, in a bare `BertModel`,
/// `pooler.dense`): `--pooling pooler` is BERT's head with its pretrained weights, so a checkpoint
/// without them is refused rather than given a random one.
fn load_pooler(gpu: &Gpu, src: &mut SafetensorsSource, dir: &Path, c: usize) -> Result<Linear> {
    let Some(prefix) = ["bert.pooler.dense", "pooler.dense"].into_iter().find(|p| src.contains(&format!("{p}.weight")))
    else {
        return Err(Error::Parse {
            path: dir.to_path_buf(),
            message:
                "no `pooler.dense.weight`: --pooling pooler needs BERT's pretrained pooler; use --pooling mean or cls"
                    .into(),
        });
    };
    let w = src.tensor(gpu, &format!("{prefix}.weight"), &[c, c])?;
    let b = src.tensor(gpu, &format!("{prefix}.bias"), &[c])?;
    Ok(Linear::new(POOLER, w, Some(b), WeightLayout::OutIn))
}

fn fresh_head(gpu: &Gpu, c: usize, k: usize, seed: u64) -> Result<Linear> {
    let mut rng = Rng::new(seed ^ 0xC1A5_51F1);
    let w = Tensor::from_f32(gpu, &rng.normal(k * c, HEAD_INIT_STD), &[k, c])?;
    Ok(Linear::new("classifier", w, Some(Tensor::zeros(gpu, &[k])?), WeightLayout::OutIn))
}

impl Module for SequenceClassifier {
    fn visit_params(&self, f: &mut dyn FnMut(&Param)) {
        self.body.visit_params(f);
        if let Some(p) = &self.pooler {
            p.visit_params(f);
        }
        self.classifier.visit_params(f);
    }

    fn visit_params_mut(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.body.visit_params_mut(f);
        if let Some(p) = &mut self.pooler {
            p.visit_params_mut(f);
        }
        self.classifier.visit_params_mut(f);
    }
}

/// Labels and pooling of a classifier, kept beside its adapter or checkpoint.
pub const CLASSIFIER_META: &str = "kiln_classifier.json";

pub fn classifier_meta(model: &SequenceClassifier) -> serde_json::Value {
    serde_json::json!({ "labels": model.labels, "pooling": model.pooling })
}

/// Reads `kiln_classifier.json`: (labels, pooling).
pub fn read_classifier_meta(dir: &Path) -> Result<(Vec<String>, Pooling)> {
    #[derive(serde::Deserialize)]
    struct Meta {
        labels: Vec<String>,
        pooling: Pooling,
    }
    let path = dir.join(CLASSIFIER_META);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let m: Meta =
        serde_json::from_str(&text).map_err(|e| Error::Parse { path: path.clone(), message: e.to_string() })?;
    Ok((m.labels, m.pooling))
}

impl SequenceClassifier {
    /// Writes the adapters and the head (PEFT's `modules_to_save`, saved under
    /// `base_model.model.classifier.{weight,bias}`) as a SEQ_CLS adapter, plus
    /// `kiln_classifier.json` (labels and pooling, which PEFT's config has no place for).
    pub fn save_adapter(&mut self, gpu: &Gpu, cfg: &LoraConfig, base_model: &str, dir: &Path) -> Result<()> {
        let mut head = Vec::new();
        if let Some(pooler) = &self.pooler {
            pooler.visit_params(&mut |p| head.push((p.name.clone(), p.value.clone())));
        }
        self.classifier.visit_params(&mut |p| head.push((p.name.clone(), p.value.clone())));
        let head = head
            .into_iter()
            .map(|(name, t)| Ok((name, t.to_f32_vec(gpu)?, t.shape().to_vec())))
            .collect::<Result<Vec<_>>>()?;
        let meta = classifier_meta(self);
        peft::write_adapter(gpu, self.body.linears_mut(), &head, cfg, TaskType::SeqCls, base_model, dir)?;
        let text = serde_json::to_string_pretty(&meta).expect("json values serialize");
        write_atomic(&dir.join(CLASSIFIER_META), text.as_bytes())?;
        write_atomic(&dir.join("README.md"), adapter_readme(self.pooling, base_model, &self.labels).as_bytes())
    }

    /// Attaches a SEQ_CLS adapter: LoRA on the encoder, and the head (and, with the pooler, its
    /// dense layer) from the adapter's `modules_to_save` when it has them. LoRA on BERT's pooler
    /// (PEFT puts it there when `dense` is targeted and the pooler is not saved whole) is skipped:
    /// kiln never trains one.
    pub fn load_adapter(&mut self, gpu: &Gpu, dir: &Path) -> Result<LoraConfig> {
        let (cfg, mut src) = peft::open_adapter(dir)?;
        self.visit_params_mut(&mut |p| p.grad = None);
        peft::attach(gpu, self.body.linears_mut(), &mut src, &cfg, dir)?;
        let head = &mut self.classifier;
        let (k, c) = (head.weight.value.dim(0), head.weight.value.dim(1));
        let w_key = format!("{PREFIX}{}", head.weight.name);
        if src.contains(&w_key) {
            head.weight.value = src.tensor(gpu, &w_key, &[k, c])?;
            if let Some(b) = &mut head.bias {
                b.value = src.tensor(gpu, &format!("{PREFIX}{}", b.name), &[k])?;
            }
        }
        if let Some(pooler) = &mut self.pooler {
            let c = pooler.weight.value.dim(0);
            let w_key = format!("{PREFIX}{POOLER}.weight");
            if src.contains(&w_key) {
                pooler.weight.value = src.tensor(gpu, &w_key, &[c, c])?;
                if let Some(b) = &mut pooler.bias {
                    b.value = src.tensor(gpu, &format!("{PREFIX}{POOLER}.bias"), &[c])?;
                }
            }
        }
        src.finish(&|n| n.contains(".pooler."))?;
        Ok(cfg)
    }
}

/// The adapter folder's README.md (PEFT writes one too): how to load it in PEFT. With the
/// pooler that is PEFT's own class unchanged; with mean or [CLS] pooling the five lines that
/// pool as kiln does, since `AutoPeftModelForSequenceClassification` would use BERT's pooler.
fn adapter_readme(pooling: Pooling, base_model: &str, labels: &[String]) -> String {
    let k = labels.len();
    let load = format!(
        "from peft import AutoPeftModelForSequenceClassification\n\
         from transformers import AutoTokenizer\n\n\
         model = AutoPeftModelForSequenceClassification.from_pretrained(ADAPTER_DIR, num_labels={k}).eval()\n\
         tok = AutoTokenizer.from_pretrained(model.peft_config[\"default\"].base_model_name_or_path)\n\
         enc = tok(texts, padding=True, truncation=True, max_length=MAX_LEN, return_tensors=\"pt\")\n"
    );
    let body = match pooling {
        Pooling::Pooler => format!(
            "BERT's own head (the pooler and the classifier, both trained and saved in `modules_to_save`), \
             so PEFT's class gives kiln's predictions unchanged:\n\n```python\n{load}\
             probs = model(**enc).logits.softmax(-1)\n```\n"
        ),
        Pooling::Mean | Pooling::Cls => {
            let pool = if pooling == Pooling::Mean {
                "h = model.base_model.model.bert(**enc).last_hidden_state; m = enc[\"attention_mask\"].unsqueeze(-1).float()\n\
                 probs = model.base_model.model.classifier((h * m).sum(1) / m.sum(1)).softmax(-1)"
            } else {
                "h = model.base_model.model.bert(**enc).last_hidden_state\n\
                 probs = model.base_model.model.classifier(h[:, 0]).softmax(-1)"
            };
            format!(
                "kiln pools the encoder's states itself ({} pooling), where PEFT's \
                 `AutoPeftModelForSequenceClassification` would use BERT's pooler on [CLS]: load with PEFT, \
                 then pool as kiln does (or train with `--pooling pooler` for an adapter PEFT's class reads \
                 unchanged):\n\n```python\n{load}{pool}\n```\n",
                pooling.describe()
            )
        }
    };
    format!(
        "---\nbase_model: {base_model}\nlibrary_name: peft\npipeline_tag: text-classification\n---\n\n\
         # A kiln SEQ_CLS LoRA adapter\n\nLabels, in the order of the logits: {}. Made by `kiln train`; \
         `kiln eval` and `kiln predict` read this folder as it is. `MAX_LEN`: the run's `--max-len` \
         (`max_len` in its settings.json; kiln's default is 128).\n\n{body}",
        labels.join(", ")
    )
}
