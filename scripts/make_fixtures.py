#!/usr/bin/env python3
"""Writes the small decoder fixtures that kiln's Rust tests read (they never run Python).

    python3 scripts/make_fixtures.py [--out tests/fixtures]

For each of two tiny random decoders (GPT-2 and Llama layouts) it writes, under `<out>/<name>/`:
  - `config.json` + `model.safetensors`: the base model, `save_pretrained(safe_serialization=True)`;
  - `peft_adapter/`: a PEFT LoRA adapter (`adapter_config.json` + `adapter_model.safetensors`),
    saved by real PEFT, with non-zero random A and B;
  - `expected.safetensors`: reference tensors computed with transformers/PEFT in fp32:
      input_ids      int32   [2, 7]   random ids in [0, 96); row 1 right-padded (last 2 = id 0)
      attention_mask int32   [2, 7]   row 0 all ones, row 1 ones then two zeros
      labels         int32   [2, 7]   input_ids with -100 where attention_mask == 0
      logits         float32 [2, 7, 96]  base model(input_ids, attention_mask)
      loss           float32 [1]      base model loss with labels (HF shifts internally)
      lora_logits    float32 [2, 7, 96]  base + LoRA adapter
      lora_loss      float32 [1]
      grad.<key>     float32          d lora_loss / d (LoRA weight), <key> as in
                                      adapter_model.safetensors
      merged_logits  float32 [2, 7, 96]  peft_model.merge_and_unload()
      greedy_ids     int32   [1, 10]  base model greedy generate from input_ids[0, :4],
                                      6 new tokens, no eos stopping (first 4 = prompt)

The same files for the decoder families kiln maps onto its one configurable decoder, each with
what sets it apart (LoRA on every linear layer, PEFT's `all-linear`), plus `model.gguf`: the same
weights in f32 written with gguf-py the way llama.cpp's convert_hf_to_gguf.py names and lays them
out for the architecture (Q/K rows permuted for `llama` only):
  llama3_tiny   rope_scaling llama3 (factor 8, original context 16), GQA 4/2       (gguf: llama)
  qwen2_tiny    q/k/v biases, tied embeddings                                     (gguf: qwen2)
  qwen3_tiny    per-head q/k RMSNorm, head_dim 12 != 32/4, untied                 (gguf: qwen3)
  mistral_tiny  sliding_window 4 < SEQ 7 (eager attention, checked to matter)     (gguf: llama)
  phi3_tiny     fused qkv_proj / gate_up_proj, partial_rotary_factor 0.5, longrope from 8  (gguf: phi3)
  gemma3_tiny   GeGLU (tanh), embeddings x sqrt(hidden), sandwich norms, q/k norms, norms as 1 + w,
                6 layers (5 local with window 4 and RoPE base 1e4, layer 5 global with base 1e6
                and linear scaling 2), head_dim 12 != 16/2, query_pre_attn_scalar 10, tied head
                (gguf: gemma3, norms stored as 1 + w as llama.cpp's converter writes them)
The greedy ids of these run 10 new tokens (prompt 4, so 14 positions: past mistral's window, and
past phi3's original context of 8, where transformers drops the cache and re-encodes the whole
sequence with LongRoPE's long factors; the logits' 7 positions stay within it, on the short ones).

For a tiny random BERT (`bert_tiny/`, a `BertForSequenceClassification` with 3 labels, so its
checkpoint has the `bert.` prefix, a pooler and a classifier) it writes the model, a PEFT SEQ_CLS
adapter (`peft_adapter/`: LoRA on query/key/value/dense, classifier in modules_to_save) and
`expected.safetensors` with:
      input_ids, token_type_ids, attention_mask int32 [2, 7]  (row 0 two segments, row 1 padded)
      labels         int32   [2]      class_weights float32 [3]
      hidden         float32 [2, 7, 32]  BertModel last_hidden_state
      pooled_mean    float32 [2, 32]  masked mean of hidden (sentence-transformers' pooling)
      pooled_cls     float32 [2, 32]  hidden[:, 0]
      logits_mean, logits_cls  float32 [2, 3]  the checkpoint's classifier on each pooling
      loss_mean      float32 [1]      CrossEntropyLoss on logits_mean
      loss_weighted  float32 [1]      CrossEntropyLoss(weight=class_weights) on logits_mean
      grad.<name>    float32          d loss_mean / d parameter (classifier, layer 1 query, word
                                      embeddings), every parameter trainable
      lora_logits    float32 [2, 3]   base + adapter, mean pooling, adapter's classifier
      lora_loss      float32 [1]
      lora_grad.<key> float32         d lora_loss / d adapter weight, keys as in the adapter file

For the GGUF block codecs (`quant/`): per block type T (q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k,
q4_k, q5_k, q6_k), `T.blocks` (random but valid blocks: random quant bytes, f16 scales drawn from
sane magnitudes of both signs, some zero) and `T.f32` (little-endian f32: gguf-py's
`gguf.quants.dequantize` of them, the values kiln must equal bit for bit).

Under `tokenizers/` it writes tiny tokenizers with the real pre-tokenizers of Llama 3, Qwen2,
SmolLM and GPT-2 (and a Llama-2-style SentencePiece BPE), their GGUF copies and six families'
chat templates with transformers' ids: see scripts/tokenizer_fixtures.py (`--tokenizers-only`
writes just those, without torch work).

For two tiny random torchvision-layout ResNets (`resnet18_tiny/`: basic blocks, width 3, and
`resnet50_tiny/`: bottlenecks, width 2; 3 classes; the module is written out below with
torchvision's names, so torchvision itself is not needed) it writes `model.safetensors` (the
state dict, `num_batches_tracked` included, BN statistics and affine weights random) and
`expected.safetensors` with:
      images         float32 [2, 3, 40, 40]   labels int32 [2]
      logits_eval    float32 [2, 3]   model.eval(): BN with the running statistics
      loss_eval      float32 [1]      CrossEntropyLoss on logits_eval
      grad_eval.<name>   float32      d loss_eval / d parameter, for fc, and layer4's last
                                      block's conv2/bn2 and first block's downsample
      logits_train   float32 [2, 3]   model.train(): BN with batch statistics (run after eval)
      loss_train     float32 [1]
      grad_train.<name>  float32      as grad_eval, for loss_train
      running.<bn>.running_mean / .running_var  float32  after the training forward

For a tiny EfficientNet-Lite (`efficientnet_lite_tiny/`, built by the efficientnet-lite-pytorch
package's code: width 0.1, depth 0.5, 10 MBConv blocks, 3 classes) it writes `config.json`,
`model.safetensors` and `expected.safetensors` with images [2, 3, 40, 40], labels, and the same
logits/loss/grad entries in both BN modes (gradients of `_fc`, `_bn1` and the last block's
depthwise conv and its three BNs; its project conv's in evaluation mode only).

`rope_scaling.json` holds RoPE scaling cases: for each, a config as an older `config.json` writes
it (`legacy`: `rope_scaling` + top-level `rope_theta`) and as transformers 5 saves it (`saved`:
`rope_parameters`), a `seq_len` (null = at load time) and what transformers' ROPE_INIT_FUNCTIONS
(or the model's default rope) return for it: `inv_freq` (float32 values) and `attention_factor`.

Deterministic: fixed seeds, eval mode, all dropouts 0; running it twice gives identical bytes.
Needs: torch, transformers (5.x), peft (0.21.x), safetensors.
"""

import argparse
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file
from safetensors.torch import load_file
from transformers import (AutoModelForCausalLM, BertConfig, BertForSequenceClassification, Gemma3ForCausalLM,
                          Gemma3TextConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, Phi3Config, Phi3ForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

VOCAB = 96
BATCH, SEQ = 2, 7
PAD_TAIL = 2


def init_weights(model, seed, std=0.2):
    """Random init with a larger std than the HF default, so outputs are far from trivial.

    Every parameter gets N(0, std); norm weights (LayerNorm / RMSNorm) get 1 + N(0, std).
    Tied parameters are visited once (named_parameters deduplicates). Gemma's norms compute
    x * (1 + w), so theirs get N(0, std): a multiplier near 1 as well."""
    g = torch.Generator().manual_seed(seed)
    one_plus_w = getattr(model.config, "model_type", "") == "gemma3_text"
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * std
            is_norm_weight = name.endswith(".weight") and (
                ".ln_" in name or name.startswith("transformer.ln_f")
                or "norm" in name.split(".")[-2]
            )
            p.copy_(noise + 1.0 if is_norm_weight and not one_plus_w else noise)


def make_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=g, dtype=torch.int64)
    attention_mask = torch.ones(BATCH, SEQ, dtype=torch.int64)
    attention_mask[1, SEQ - PAD_TAIL:] = 0
    input_ids[attention_mask == 0] = 0
    labels = input_ids.clone()
    labels[attention_mask == 0] = -100
    return input_ids, attention_mask, labels


def adapter_key(param_name):
    # PEFT saves `...lora_A.default.weight` as `...lora_A.weight` (no adapter name).
    return param_name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")


def tidy_adapter_dir(adir):
    """PEFT writes target_modules and modules_to_save from sets (order depends on
    PYTHONHASHSEED): sort them so the output is byte-identical across runs; the model-card
    README it writes is not needed."""
    cpath = os.path.join(adir, "adapter_config.json")
    with open(cpath) as f:
        acfg = json.load(f)
    for key in ["target_modules", "modules_to_save"]:
        if acfg.get(key) is not None:
            acfg[key] = sorted(acfg[key])
    with open(cpath, "w") as f:
        json.dump(acfg, f, indent=2, sort_keys=True)
        f.write("\n")
    readme = os.path.join(adir, "README.md")
    if os.path.exists(readme):
        os.remove(readme)


def build(name, model, targets, fan_in_fan_out, out_root, seed, new_tokens=6, check=None):
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    model = model.float().eval()
    init_weights(model, seed)
    model.save_pretrained(out, safe_serialization=True)

    input_ids, attention_mask, labels = make_inputs(seed + 1)
    exp = {
        "input_ids": input_ids.to(torch.int32),
        "attention_mask": attention_mask.to(torch.int32),
        "labels": labels.to(torch.int32),
    }

    with torch.no_grad():
        o = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    exp["logits"] = o.logits.float().contiguous()
    exp["loss"] = o.loss.float().reshape(1)

    if check is not None:
        check(model, input_ids, attention_mask, exp["logits"])

    # Greedy decoding with the base model (before PEFT injects layers into it).
    prompt = input_ids[:1, :4]
    with torch.no_grad():
        gen = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=new_tokens,
            eos_token_id=None,
            pad_token_id=0,
        )
        # Cross-check with a plain argmax loop (no eos handling, no logits processors).
        ref = prompt
        for _ in range(new_tokens):
            nxt = model(input_ids=ref).logits[:, -1].argmax(-1, keepdim=True)
            ref = torch.cat([ref, nxt], dim=1)
    assert gen.shape == (1, 4 + new_tokens), gen.shape
    assert torch.equal(gen, ref), (gen, ref)
    exp["greedy_ids"] = gen.to(torch.int32)

    lcfg = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
    )
    peft_model = get_peft_model(model, lcfg)
    peft_model.eval()
    g = torch.Generator().manual_seed(seed + 2)
    lora_params = {}
    with torch.no_grad():
        for pname, p in peft_model.named_parameters():
            if ".lora_A." in pname or ".lora_B." in pname:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.3)
                lora_params[adapter_key(pname)] = p
    adir = os.path.join(out, "peft_adapter")
    peft_model.save_pretrained(adir)
    tidy_adapter_dir(adir)

    saved_keys = set(get_peft_model_state_dict(peft_model).keys())
    assert saved_keys == set(lora_params), (saved_keys ^ set(lora_params))

    exp.update(adapter_expected(peft_model, lora_params, input_ids, attention_mask, labels, name))
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(out, "expected.safetensors"))
    return out


def adapter_expected(peft_model, params, input_ids, attention_mask, labels, what):
    """lora_logits, lora_loss and grad.<key> for each adapter parameter in `params` (all must get
    a non-zero gradient), and merged_logits after merge_and_unload, which must match lora_logits."""
    exp = {}
    peft_model.zero_grad(set_to_none=True)
    o = peft_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    o.loss.backward()
    exp["lora_logits"] = o.logits.detach().float().contiguous()
    exp["lora_loss"] = o.loss.detach().float().reshape(1)
    for k in sorted(params):
        grad = params[k].grad
        assert grad is not None and grad.abs().max() > 0, k
        exp["grad." + k] = grad.detach().float().contiguous().clone()
    merged = peft_model.merge_and_unload()
    merged.eval()
    with torch.no_grad():
        mo = merged(input_ids=input_ids, attention_mask=attention_mask)
    exp["merged_logits"] = mo.logits.float().contiguous()
    err = (exp["merged_logits"] - exp["lora_logits"]).abs().max().item()
    assert err < 1e-4, f"{what}: merged vs unmerged logits differ by {err}"
    return exp


def build_dora(name, targets, fan_in_fan_out, out_root, seed):
    """DoRA (PEFT's `use_dora`) on an existing fixture's base model, under `<name>/dora/`:
    `peft_adapter/` and `expected.safetensors` with lora_logits, lora_loss, grad.<key> (A, B and
    `lora_magnitude_vector`) and merged_logits, on the fixture's own inputs. A and B are random
    and non-zero, so ||W + s·BA|| differs from ||W||; the magnitude is moved off its init
    (||W||) so that m/||W + s·BA|| is not close to 1 either."""
    base_dir = os.path.join(out_root, name)
    out = os.path.join(base_dir, "dora")
    os.makedirs(out, exist_ok=True)
    base = load_file(os.path.join(base_dir, "expected.safetensors"))
    input_ids, attention_mask = base["input_ids"].long(), base["attention_mask"].long()
    labels = base["labels"].long()
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=targets, fan_in_fan_out=fan_in_fan_out, use_dora=True)
    # Loaded from a folder, the model would record its absolute path in the adapter config.
    model.config.name_or_path = None
    model.name_or_path = None
    peft_model = get_peft_model(model, lcfg)
    peft_model.eval()
    g = torch.Generator().manual_seed(seed)
    params = {}
    with torch.no_grad():
        for pname, p in peft_model.named_parameters():
            if ".lora_A." in pname or ".lora_B." in pname:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.3)
            elif ".lora_magnitude_vector." in pname:
                p.mul_(1.0 + 0.2 * torch.randn(p.shape, generator=g, dtype=torch.float32))
            else:
                continue
            # Saved without the adapter name; the magnitude as `<module>.lora_magnitude_vector`.
            key = pname.replace(".default.", ".").replace(".lora_magnitude_vector.weight", ".lora_magnitude_vector")
            params[key] = p
    adir = os.path.join(out, "peft_adapter")
    peft_model.save_pretrained(adir)
    tidy_adapter_dir(adir)
    saved_keys = set(get_peft_model_state_dict(peft_model).keys())
    assert saved_keys == set(params), (saved_keys ^ set(params))

    exp = adapter_expected(peft_model, params, input_ids, attention_mask, labels, f"{name} dora")
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(out, "expected.safetensors"))
    return out


def gpt2():
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=4,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        summary_first_dropout=0.0,
        tie_word_embeddings=True,
        # GPT-2's default bos/eos (50256) lie outside this vocab; use its last id instead.
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
    )
    return GPT2LMHeadModel(cfg)


def llama():
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        attention_bias=False,
        attention_dropout=0.0,
        mlp_bias=False,
        hidden_act="silu",
    )
    return LlamaForCausalLM(cfg)


# ---- the families of kiln's configurable decoder ----

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_LINEAR = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
# Shared by every family fixture; bos/eos inside the tiny vocab.
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, attention_dropout=0.0,
              hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=None)


def llama3():
    cfg = LlamaConfig(**COMMON, tie_word_embeddings=False,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 16})
    return LlamaForCausalLM(cfg)


def qwen2():
    cfg = Qwen2Config(**COMMON, tie_word_embeddings=True, rope_theta=10000.0, use_sliding_window=False)
    return Qwen2ForCausalLM(cfg)


def qwen3():
    cfg = Qwen3Config(**COMMON, head_dim=12, tie_word_embeddings=False, rope_theta=1000000.0,
                      use_sliding_window=False, attention_bias=False)
    return Qwen3ForCausalLM(cfg)


def mistral():
    cfg = MistralConfig(**COMMON, sliding_window=4, tie_word_embeddings=False, rope_theta=10000.0)
    # The eager attention applies the sliding-window mask as given; check_window proves it matters.
    return MistralForCausalLM._from_config(cfg, attn_implementation="eager")


def gemma3():
    # Small (hidden 16, 2 heads) so six layers, the fewest with a global one at the default
    # pattern of 6 (which the GGUF reader assumes, as llama.cpp does), stay under the size cap.
    cfg = Gemma3TextConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=6,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=12, query_pre_attn_scalar=10,
                           max_position_embeddings=64, rms_norm_eps=1e-6, attention_dropout=0.0, sliding_window=4,
                           hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
                           rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                              "rope_theta": 1000000.0},
                                            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}},
                           bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return Gemma3ForCausalLM._from_config(cfg, attn_implementation="eager")


def check_gemma3_window(model, input_ids, attention_mask, logits):
    """The local layers' window of 4 must change the logits of a 7-token sequence."""
    cfg = model.config.__class__(**{**model.config.to_dict(), "sliding_window": 64})
    full = Gemma3ForCausalLM._from_config(cfg, attn_implementation="eager").float().eval()
    full.load_state_dict(model.state_dict(), strict=False)
    full.tie_weights()
    with torch.no_grad():
        lf = full(input_ids=input_ids, attention_mask=attention_mask).logits
    assert (lf - logits)[0, 4:].abs().max().item() > 1e-2, "the sliding window changes nothing"
    assert (lf - logits)[0, :4].abs().max().item() < 1e-5, "positions inside the window must not change"


def check_window(model, input_ids, attention_mask, logits):
    """The window of 4 must change the logits of a 7-token sequence (or the fixture tests nothing)."""
    full = MistralForCausalLM._from_config(model.config.__class__(**{**model.config.to_dict(), "sliding_window": None}),
                                           attn_implementation="eager").float().eval()
    full.load_state_dict(model.state_dict())
    with torch.no_grad():
        lf = full(input_ids=input_ids, attention_mask=attention_mask).logits
        sdpa = MistralForCausalLM._from_config(model.config, attn_implementation="sdpa").float().eval()
        sdpa.load_state_dict(model.state_dict())
        ls = sdpa(input_ids=input_ids, attention_mask=attention_mask).logits
    diff = (lf - logits)[0, 4:].abs().max().item()
    assert diff > 1e-2, f"sliding window changes nothing ({diff})"
    assert (lf - logits)[0, :4].abs().max().item() < 1e-5, "positions inside the window must not change"
    assert (ls - logits)[0].abs().max().item() < 1e-4, "sdpa and eager disagree on the window"


def phi3():
    cfg = Phi3Config(**{**COMMON, "num_key_value_heads": 4}, tie_word_embeddings=False, rope_theta=10000.0,
                     partial_rotary_factor=0.5, original_max_position_embeddings=8, resid_pdrop=0.0,
                     embd_pdrop=0.0,
                     rope_scaling={"type": "longrope", "short_factor": [1.0, 1.7], "long_factor": [2.5, 9.0]})
    return Phi3ForCausalLM(cfg)


FAMILIES = [
    # name, model, LoRA targets, gguf arch, seed
    ("llama3_tiny", llama3, ALL_LINEAR, "llama", 1111, None),
    ("qwen2_tiny", qwen2, ALL_LINEAR, "qwen2", 2222, None),
    ("qwen3_tiny", qwen3, ALL_LINEAR, "qwen3", 3333, None),
    ("mistral_tiny", mistral, ALL_LINEAR, "llama", 4444, check_window),
    ("phi3_tiny", phi3, PHI3_LINEAR, "phi3", 5555, None),
    ("gemma3_tiny", gemma3, ALL_LINEAR, "gemma3", 6666, check_gemma3_window),
]


def llama_permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: per head, rotate-half pairs (i, i + D/2)
    become interleaved pairs (2i, 2i + 1), which llama.cpp's rope expects."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(out, arch, linear_f16=False):
    """The model in `out` as convert_hf_to_gguf.py would write it in f32 (metadata keys and tensor
    names per architecture), without a tokenizer (the tests load weights only). With `linear_f16`
    the linear weights are F16 (`--outtype f16` keeps norms f32 the same way)."""
    import gguf
    import numpy as np
    from safetensors.torch import load_file

    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    sd = load_file(os.path.join(out, "model.safetensors"))
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rope = cfg.get("rope_parameters") or {}
    if arch == "gemma3":
        # Gemma3Model writes the global layers' RoPE; the local base and layer pattern are implied.
        rope = rope["full_attention"]
    w = gguf.GGUFWriter(os.path.join(out, "model.gguf"), arch)
    w.add_name(os.path.basename(out))
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if linear_f16 else gguf.LlamaFileType.ALL_F32)
    if arch == "phi3":
        rot = int(rope.get("partial_rotary_factor", 1.0) * cfg["hidden_size"]) // n_head
        w.add_rope_dimension_count(rot)
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        w.add_sliding_window(cfg.get("sliding_window") or 0)
        scale = cfg["max_position_embeddings"] / rope["original_max_position_embeddings"]
        w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(rope["original_max_position_embeddings"])))
        w.add_tensor("rope_factors_long.weight", np.array(rope["long_factor"], dtype=np.float32))
        w.add_tensor("rope_factors_short.weight", np.array(rope["short_factor"], dtype=np.float32))
    else:
        w.add_rope_dimension_count(head_dim)
        if "head_dim" in cfg:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        if cfg.get("sliding_window"):
            # llama.cpp's key for a window (written for the archs whose graphs use one).
            w.add_sliding_window(cfg["sliding_window"])
    if rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    if rope.get("rope_type") == "llama3":
        # LlamaModel.generate_extra_tensors: llama3 scaling as per-frequency divisors.
        base, dim = rope["rope_theta"], head_dim
        factor, lo, hi = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        factors = []
        for i in range(0, dim, 2):
            wavelen = 2 * math.pi / (1.0 / base ** (i / dim))
            if wavelen < old / hi:
                factors.append(1.0)
            elif wavelen > old / lo:
                factors.append(factor)
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        w.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))

    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    per_layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
                 "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "self_attn.qkv_proj": "attn_qkv",
                 "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.gate_up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down"}
    if arch == "gemma3":
        per_layer.update({"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
                          "post_feedforward_layernorm": "post_ffw_norm"})
    for name in sorted(sd):
        t = sd[name].float().numpy()
        if arch == "gemma3" and name.endswith("norm.weight"):
            # Gemma3Model.modify_tensors: llama.cpp multiplies by the stored weight, so 1 + w.
            t = t + 1
        if name in names:
            gname = names[name]
        else:
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            gname = f"blk.{layer}.{per_layer[module]}.{kind}"
            if arch == "llama" and module == "self_attn.q_proj":
                t = llama_permute(t, n_head)
            elif arch == "llama" and module == "self_attn.k_proj":
                t = llama_permute(t, n_kv)
            if linear_f16 and name not in names and t.ndim == 2:
                t = t.astype(np.float16)
        w.add_tensor(gname, np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def build_bf16(out_root, seed):
    """A tiny Llama saved in bf16 (every linear's rows whole blocks of 32), with transformers'
    logits of those bf16 weights computed in f32 (`from_pretrained(dtype=bfloat16).float()`), the
    same for the weights rounded on to f16, and an F16 GGUF copy (which holds those f16 values)."""
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
                      attention_bias=False, attention_dropout=0.0, mlp_bias=False, hidden_act="silu",
                      bos_token_id=1, eos_token_id=2)
    out = os.path.join(out_root, "llama_bf16_tiny")
    os.makedirs(out, exist_ok=True)
    model = LlamaForCausalLM(cfg).float().eval()
    init_weights(model, seed)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    from safetensors import safe_open
    with safe_open(os.path.join(out, "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())

    input_ids, attention_mask, labels = make_inputs(seed + 1)
    exp = {"input_ids": input_ids.to(torch.int32), "attention_mask": attention_mask.to(torch.int32),
           "labels": labels.to(torch.int32)}
    ref = LlamaForCausalLM.from_pretrained(out, dtype=torch.bfloat16).float().eval()
    with torch.no_grad():
        o = ref(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        exp["logits"] = o.logits.float().contiguous()
        exp["loss"] = o.loss.float().reshape(1)
        # The same weights rounded to f16 (norms stay f32 in kiln; bf16 → f32 is exact).
        for name, p in ref.named_parameters():
            if p.dim() == 2 and "embed_tokens" not in name:
                p.copy_(p.to(torch.float16).float())
        o = ref(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        exp["logits_f16"] = o.logits.float().contiguous()
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(out, "expected.safetensors"))
    write_gguf(out, "llama", linear_f16=True)
    return out


BERT_LABELS = 3


def bert_tiny():
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=32,
        type_vocab_size=2,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=1e-12,
        num_labels=BERT_LABELS,
        pad_token_id=0,
    )
    return BertForSequenceClassification(cfg)


def mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def build_bert(out_root, seed):
    out = os.path.join(out_root, "bert_tiny")
    os.makedirs(out, exist_ok=True)
    model = bert_tiny().float().eval()
    init_weights(model, seed)
    model.save_pretrained(out, safe_serialization=True)

    input_ids, attention_mask, _ = make_inputs(seed + 1)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[0, 4:] = 1
    labels = torch.tensor([2, 0])
    class_weights = torch.tensor([0.5, 1.0, 3.0])
    exp = {
        "input_ids": input_ids.to(torch.int32),
        "token_type_ids": token_type_ids.to(torch.int32),
        "attention_mask": attention_mask.to(torch.int32),
        "labels": labels.to(torch.int32),
        "class_weights": class_weights,
    }
    kw = dict(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)

    def forward(m, pooling):
        hidden = m.bert(**kw).last_hidden_state
        pooled = mean_pool(hidden, attention_mask) if pooling == "mean" else hidden[:, 0]
        return hidden, pooled, m.classifier(pooled)

    hidden, pooled, logits = forward(model, "mean")
    loss = torch.nn.functional.cross_entropy(logits, labels)
    model.zero_grad(set_to_none=True)
    loss.backward()
    exp["hidden"] = hidden.detach().contiguous()
    exp["pooled_mean"] = pooled.detach().contiguous()
    exp["logits_mean"] = logits.detach().contiguous()
    exp["loss_mean"] = loss.detach().reshape(1)
    params = dict(model.named_parameters())
    for name in ["classifier.weight", "classifier.bias", "bert.encoder.layer.1.attention.self.query.weight",
                 "bert.encoder.layer.1.output.LayerNorm.weight", "bert.embeddings.word_embeddings.weight"]:
        exp["grad." + name] = params[name].grad.detach().contiguous().clone()
    with torch.no_grad():
        exp["loss_weighted"] = torch.nn.functional.cross_entropy(logits, labels, weight=class_weights).reshape(1)
        _, pooled_cls, logits_cls = forward(model, "cls")
    exp["pooled_cls"] = pooled_cls.contiguous()
    exp["logits_cls"] = logits_cls.contiguous()

    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none", task_type="SEQ_CLS",
                      target_modules=["query", "key", "value", "dense"])
    peft_model = get_peft_model(model, lcfg)
    peft_model.eval()
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for pname, p in peft_model.named_parameters():
            if ".lora_A." in pname or ".lora_B." in pname or "modules_to_save" in pname:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.3)
    adir = os.path.join(out, "peft_adapter")
    peft_model.save_pretrained(adir)
    tidy_adapter_dir(adir)

    saved = get_peft_model_state_dict(peft_model)
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    peft_model.zero_grad(set_to_none=True)
    inner = peft_model.base_model.model
    _, _, lora_logits = forward(inner, "mean")
    lora_loss = torch.nn.functional.cross_entropy(lora_logits, labels)
    lora_loss.backward()
    exp["lora_logits"] = lora_logits.detach().contiguous()
    exp["lora_loss"] = lora_loss.detach().reshape(1)
    for name, p in trainable.items():
        key = adapter_key(name).replace(".modules_to_save.default.", ".")
        assert key in saved, (key, sorted(saved))
        if p.grad is None:
            # `dense` also matches the pooler, which mean pooling never uses.
            assert ".pooler." in key, key
            continue
        exp["lora_grad." + key] = p.grad.detach().contiguous().clone()
    got = {k[len("lora_grad."):] for k in exp if k.startswith("lora_grad.")}
    assert {k for k in saved if ".pooler." not in k} == got, sorted(saved)

    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(out, "expected.safetensors"))
    return out


# Byte offsets of the f16 scale fields in one block of each type (ggml-common.h).
QUANT_F16_FIELDS = {
    "q8_0": [0], "q4_0": [0], "q4_1": [0, 2], "q5_0": [0], "q5_1": [0, 2],
    "q2_k": [80, 82], "q3_k": [108], "q4_k": [0, 2], "q5_k": [0, 2], "q6_k": [208],
}


def build_quant(out_root, seed):
    """Random valid blocks of every block type kiln reads, and gguf-py's dequantization."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    out = os.path.join(out_root, "quant")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, fields in QUANT_F16_FIELDS.items():
        qtype = GGMLQuantizationType[name.upper()]
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        n_blocks = 2048 // block  # 2048 weights of each type
        blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
        # Scales: magnitudes 2^-14 .. 2^3 (normal f16s), both signs, and some exact zeros.
        mag = np.exp2(rng.uniform(-14, 3, size=(n_blocks, len(fields))))
        scales = (mag * rng.choice([-1.0, 1.0, 0.0], size=mag.shape, p=[0.45, 0.45, 0.1])).astype(np.float16)
        for i, off in enumerate(fields):
            blocks[:, off:off + 2] = scales[:, i:i + 1].view(np.uint8)
        values = dequantize(blocks.reshape(-1), qtype).astype("<f4")
        assert values.shape == (n_blocks * block,)
        blocks.tofile(os.path.join(out, f"{name}.blocks"))
        values.tofile(os.path.join(out, f"{name}.f32"))
    return out



def conv3x3(cin, cout, stride=1):
    return torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def conv1x1(cin, cout, stride=1):
    return torch.nn.Conv2d(cin, cout, 1, stride, 0, bias=False)


class BasicBlock(torch.nn.Module):
    """torchvision.models.resnet.BasicBlock."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(torch.nn.Module):
    """torchvision.models.resnet.Bottleneck (v1.5: the stride is on conv2)."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = torch.nn.BatchNorm2d(planes * 4)
        self.relu = torch.nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(torch.nn.Module):
    """torchvision.models.resnet.ResNet with the stem width as a parameter (64 there)."""

    def __init__(self, block, layers, width, num_classes):
        super().__init__()
        self.inplanes = width
        self.conv1 = torch.nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(width)
        self.relu = torch.nn.ReLU(inplace=True)
        self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2)
        self.avgpool = torch.nn.AdaptiveAvgPool2d((1, 1))
        self.fc = torch.nn.Linear(width * 8 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = torch.nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                torch.nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return torch.nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomize_bn(model, g):
    """Random BN statistics and affine weights, so evaluation mode is not the identity."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(torch.rand(c, generator=g) + 0.5)
                mod.bias.copy_((torch.rand(c, generator=g) - 0.5) * 0.4)
                mod.running_mean.copy_((torch.rand(c, generator=g) - 0.5) * 0.4)
                mod.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def cnn_expected(model, images, labels, checked):
    """images, labels, and in evaluation then training mode: logits_<mode>, loss_<mode>
    (cross-entropy) and grad_<mode>.<name> for each parameter name in checked(mode)."""
    exp = {"images": images, "labels": labels.to(torch.int32)}
    for mode in ["eval", "train"]:
        model.train(mode == "train")
        model.zero_grad()
        logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        exp[f"logits_{mode}"] = logits.detach()
        exp[f"loss_{mode}"] = loss.detach().reshape(1)
        params = dict(model.named_parameters())
        for p in checked(mode):
            exp[f"grad_{mode}.{p}"] = params[p].grad.detach().clone()
    return exp


def build_resnet(name, block, width, out_root, seed, checked):
    torch.manual_seed(seed)
    model = ResNet(block, [2, 2, 2, 2] if block is BasicBlock else [3, 4, 6, 3], width, 3)
    g = torch.Generator().manual_seed(seed)
    randomize_bn(model, g)
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "model.safetensors"))

    images = torch.randn(2, 3, 40, 40, generator=g)
    labels = torch.tensor([2, 0])
    exp = cnn_expected(model, images, labels, lambda mode: checked)
    bufs = dict(model.named_buffers())
    for bn in ["bn1", checked[2].rsplit(".", 1)[0]]:
        for stat in ["running_mean", "running_var"]:
            exp[f"running.{bn}.{stat}"] = bufs[f"{bn}.{stat}"].detach().clone()
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(out, "expected.safetensors"))
    return out


def build_efficientnet_lite(out_root, seed):
    """A tiny EfficientNet-Lite made by the efficientnet-lite-pytorch package's own code
    (width 0.1, depth 0.5, stem and head scaled too so the head stays small; dropout and
    drop-connect 0 so training mode is deterministic), 40x40 images (the last stages are 2x2, so
    training-mode BN has 8 values per channel: at 1x1 and batch 2, PyTorch's own f32 and f64
    logits differ by ~1e-3) so the package's static
    "same" padding equals kiln's dynamic one."""
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import efficientnet_lite
    torch.manual_seed(seed)
    blocks, gp = efficientnet_lite(width_coefficient=0.1, depth_coefficient=0.5, image_size=40,
                                   dropout_rate=0.0, drop_connect_rate=0.0, num_classes=3)
    gp = gp._replace(fix_head_stem=False)
    model = EfficientNet(blocks, gp)
    g = torch.Generator().manual_seed(seed)
    randomize_bn(model, g)
    out = os.path.join(out_root, "efficientnet_lite_tiny")
    os.makedirs(out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "model.safetensors"))
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"width_coefficient": 0.1, "depth_coefficient": 0.5, "fix_head_stem": False,
                   "num_classes": 3, "dropout_rate": 0.0}, f, indent=2)
    last = len(model._blocks) - 1
    checked = ["_fc.weight", "_fc.bias", "_bn1.weight", f"_blocks.{last}._project_conv.weight",
               f"_blocks.{last}._bn2.weight", f"_blocks.{last}._depthwise_conv.weight",
               f"_blocks.{last}._bn1.bias", f"_blocks.{last}._bn0.weight"]
    images = torch.randn(2, 3, 40, 40, generator=g)
    labels = torch.tensor([1, 2])
    # The projection's gradient once (the size limit): the 1x1 dW is the ResNets' kernel too.
    exp = cnn_expected(model, images, labels,
                       lambda mode: checked if mode == "eval" else [c for c in checked if "_project_conv" not in c])
    save_file({k: v.contiguous() for k, v in exp.items()}, os.path.join(out, "expected.safetensors"))
    return out


def build_pth(out_root):
    """PyTorch checkpoints in both of torch.save's formats for kiln's reader (src/formats/pth.rs):
    the zip one and the older pickle-only one (`_use_new_zipfile_serialization=False`, the format
    of efficientnet-lite0-57934424.pth). The tensors are the awkward cases: a transposed view and
    an offset slice sharing another tensor's storage, f16, bf16, f64, an int64 scalar; the
    expected values are written contiguous to expected.safetensors."""
    g = torch.Generator().manual_seed(99)
    base = torch.randn(3, 4, generator=g)
    long = torch.arange(10, dtype=torch.float32) * 0.5
    sd = {
        "block.weight": base,
        "block.weight_t": base.t(),
        "block.slice": long[2:7],
        "half": torch.randn(5, generator=g).to(torch.float16),
        "brain": torch.randn(2, 2, generator=g).to(torch.bfloat16),
        "double": torch.randn(2, 3, generator=g).to(torch.float64),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "conv.weight": torch.nn.Parameter(torch.randn(2, 1, 3, 3, generator=g)),
    }
    out = os.path.join(out_root, "pth")
    os.makedirs(out, exist_ok=True)
    torch.save(sd, os.path.join(out, "legacy.pth"), _use_new_zipfile_serialization=False)
    torch.save({"state_dict": sd, "epoch": 3}, os.path.join(out, "zip.pth"))
    exp = {k: (v.detach().to(torch.float32) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    save_file(exp, os.path.join(out, "expected.safetensors"))
    return out


def resnets(out_root):
    return [
        build_resnet("resnet18_tiny", BasicBlock, 3, out_root, 2718, [
            "fc.weight", "fc.bias", "layer4.1.bn2.weight", "layer4.1.bn2.bias", "layer4.1.conv2.weight",
            "layer4.0.downsample.0.weight", "layer4.0.downsample.1.weight"]),
        build_resnet("resnet50_tiny", Bottleneck, 2, out_root, 3141, [
            "fc.weight", "fc.bias", "layer4.2.bn3.weight", "layer4.2.bn3.bias", "layer4.2.conv2.weight",
            "layer4.0.downsample.0.weight", "layer4.0.downsample.1.weight"]),
    ]

ROPE_KEYS = ["rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor", "max_position_embeddings",
             "original_max_position_embeddings", "head_dim", "hidden_size", "num_attention_heads"]


def rope_scaling_cases(out_root):
    """transformers' inverse frequencies and attention factor for each RoPE type kiln maps."""
    from transformers import Phi3Config, Qwen2Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    g = torch.Generator().manual_seed(77)

    def factors(n, lo, hi):
        return [round(float(x), 4) for x in (lo + (hi - lo) * torch.rand(n, generator=g))]

    base = dict(hidden_size=256, num_attention_heads=4)  # head_dim 64 unless given
    cases = [
        ("default", LlamaConfig, dict(base, max_position_embeddings=2048, rope_theta=10000.0), [None]),
        ("default_head_dim_24", LlamaConfig,
         dict(base, head_dim=24, max_position_embeddings=4096, rope_theta=1000000.0), [None]),
        ("default_partial_half", Phi3Config,
         dict(base, partial_rotary_factor=0.5, max_position_embeddings=4096, rope_theta=10000.0), [None]),
        ("linear", LlamaConfig, dict(base, max_position_embeddings=4096, rope_theta=10000.0,
                                     rope_scaling={"rope_type": "linear", "factor": 4.0}), [None]),
        ("dynamic", LlamaConfig, dict(base, max_position_embeddings=2048, rope_theta=10000.0,
                                      rope_scaling={"type": "dynamic", "factor": 2.0}), [None, 1000, 6000]),
        # Llama 3.2's values (head_dim 64, 131072 positions from 8192).
        ("llama3", LlamaConfig, dict(base, max_position_embeddings=131072, rope_theta=500000.0,
                                     rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
         [None]),
        ("llama3_factor8", LlamaConfig, dict(hidden_size=128, num_attention_heads=2, max_position_embeddings=131072,
                                             rope_theta=500000.0,
                                             rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                           "low_freq_factor": 2.0, "high_freq_factor": 6.0,
                                                           "original_max_position_embeddings": 4096}), [None]),
        # Phi-3.5-mini's layout (head_dim 96) and Phi-4-mini's (head_dim 128, 3/4 of it rotary).
        ("longrope", Phi3Config, dict(hidden_size=384, num_attention_heads=4, max_position_embeddings=131072,
                                      original_max_position_embeddings=4096, rope_theta=10000.0,
                                      rope_scaling={"type": "longrope", "short_factor": factors(48, 1.0, 1.2),
                                                    "long_factor": factors(48, 1.0, 60.0)}), [None, 4096, 4097]),
        ("longrope_partial", Phi3Config, dict(hidden_size=512, num_attention_heads=4, partial_rotary_factor=0.75,
                                              max_position_embeddings=131072, original_max_position_embeddings=4096,
                                              rope_theta=10000.0,
                                              rope_scaling={"type": "longrope", "short_factor": factors(48, 1.0, 3.0),
                                                            "long_factor": factors(48, 1.0, 40.0)}), [None, 9000]),
        ("longrope_attention_factor", Phi3Config,
         dict(hidden_size=64, num_attention_heads=4, max_position_embeddings=256, original_max_position_embeddings=64,
              rope_theta=10000.0,
              rope_scaling={"type": "longrope", "short_factor": factors(8, 1.0, 2.0),
                            "long_factor": factors(8, 1.0, 9.0), "attention_factor": 1.3, "factor": 2.0}),
         [None, 100]),
        # Qwen2.5's YaRN recipe, and one with every optional key set.
        ("yarn", Qwen2Config, dict(hidden_size=512, num_attention_heads=4, max_position_embeddings=32768,
                                   rope_theta=1000000.0,
                                   rope_scaling={"type": "yarn", "factor": 4.0,
                                                 "original_max_position_embeddings": 32768}), [None]),
        ("yarn_options", Qwen2Config, dict(hidden_size=256, num_attention_heads=4, max_position_embeddings=16384,
                                           rope_theta=10000.0,
                                           rope_scaling={"rope_type": "yarn", "factor": 8.0, "beta_fast": 16.0,
                                                         "beta_slow": 2.0, "mscale": 0.9, "mscale_all_dim": 0.5,
                                                         "original_max_position_embeddings": 2048,
                                                         "truncate": False}), [None]),
        ("yarn_attention_factor", Qwen2Config, dict(hidden_size=128, num_attention_heads=2,
                                                    max_position_embeddings=8192, rope_theta=10000.0,
                                                    rope_scaling={"rope_type": "yarn", "factor": 2.0,
                                                                  "attention_factor": 0.8,
                                                                  "original_max_position_embeddings": 4096}),
         [None]),
    ]
    out = []
    for name, cls, kwargs, seq_lens in cases:
        legacy = json.loads(json.dumps(kwargs))
        cfg = cls(**kwargs)
        saved = {k: v for k, v in cfg.to_dict().items() if k in ROPE_KEYS}
        rope_type = cfg.rope_parameters.get("rope_type", "default")
        for seq_len in seq_lens:
            if rope_type == "default":
                inv_freq, attn = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
                if cls is Phi3Config:  # Phi-3's default rope reads partial_rotary_factor; Llama's ignores it
                    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding
                    inv_freq, attn = Phi3RotaryEmbedding.compute_default_rope_parameters(cfg)
            else:
                inv_freq, attn = ROPE_INIT_FUNCTIONS[rope_type](cfg, None, seq_len=seq_len)
            out.append({"name": name, "legacy": legacy, "saved": saved, "seq_len": seq_len,
                        "inv_freq": [float(x) for x in inv_freq.float()], "attention_factor": float(attn)})
    path = os.path.join(out_root, "rope_scaling.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures"))
    ap.add_argument("--tokenizers-only", action="store_true",
                    help="write only tokenizers/ (tokenizer_fixtures.py: tiny tokenizers, GGUF copies, chat templates)")
    ap.add_argument("--only", choices=["text", "vision", "bf16", "dora"],
                    help="make only the text, the vision, the 16-bit base or the DoRA fixtures")
    ap.add_argument("--family", action="append", choices=[f[0] for f in FAMILIES],
                    help="make only this decoder family's fixture (repeatable); nothing else is rewritten")
    args = ap.parse_args()
    out_root = os.path.normpath(args.out)

    def dora():
        # On the base models of llama_tiny and gpt2_tiny (which must exist): `--only dora`.
        return [build_dora("llama_tiny", ALL_LINEAR, False, out_root, seed=97),
                build_dora("gpt2_tiny", ["c_attn", "c_proj", "c_fc"], True, out_root, seed=98)]
    if args.only == "dora":
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
        return report(dora())

    sys.path.insert(0, here)
    import tokenizer_fixtures
    tokenizer_dirs = [] if args.only in ("vision", "bf16") or args.family else tokenizer_fixtures.build(out_root)
    if args.tokenizers_only:
        return report(tokenizer_dirs)

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    if args.family:
        dirs = []
        for name, make, targets, arch, seed, check in FAMILIES:
            if name in args.family:
                out = build(name, make(), targets, False, out_root, seed=seed, new_tokens=10, check=check)
                write_gguf(out, arch)
                dirs.append(out)
        return report(dirs)

    if args.only == "bf16":
        return report([build_bf16(out_root, seed=1357)])
    if args.only != "vision":
        print(rope_scaling_cases(out_root))
    dirs = [] if args.only == "vision" else [
        build("gpt2_tiny", gpt2(), ["c_attn", "c_proj", "c_fc"], True, out_root, seed=1234),
        build("llama_tiny", llama(),
              ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
              False, out_root, seed=5678),
        build_bert(out_root, seed=4321),
        build_quant(out_root, seed=2468),
        build_bf16(out_root, seed=1357),
    ]
    if args.only != "vision":
        dirs += dora()
        for name, make, targets, arch, seed, check in FAMILIES:
            out = build(name, make(), targets, False, out_root, seed=seed, new_tokens=10, check=check)
            write_gguf(out, arch)
            dirs.append(out)
    if args.only != "text":
        dirs += resnets(out_root) + [build_efficientnet_lite(out_root, 1618), build_pth(out_root)]
    return report(dirs + tokenizer_dirs)


def report(dirs):
    """Prints each folder's files and sizes; fails when one is too large to commit."""
    for d in dirs:
        total = 0
        print(d)
        for root, _, files in sorted(os.walk(d)):
            for f in sorted(files):
                p = os.path.join(root, f)
                n = os.path.getsize(p)
                total += n
                print(f"  {os.path.relpath(p, d):40s} {n:8d} B")
        print(f"  {'total':40s} {total:8d} B")
        assert total < 300_000, f"{d} is too large ({total} B)"
    return 0


if __name__ == "__main__":
    sys.exit(main())
