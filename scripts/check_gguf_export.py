#!/usr/bin/env python3
"""Checks `kiln export --format gguf` against llama.cpp (not a test: it needs the real models,
llama.cpp's sources and a built libllama). Its numbers go in the README's export section.

For a base GGUF and a PEFT adapter trained on it, the script
  1. exports with kiln: the merged model as f32, f16, q8_0 and q4_k_m GGUF, the adapter as a LoRA
     GGUF, and the merged model as a Hugging Face folder;
  2. reads every GGUF with gguf-py (the `gguf` package);
  3. runs llama.cpp's convert_hf_to_gguf.py (--outtype f16) on the merged Hugging Face folder and
     diffs keys, value types, tensor names, types and shapes against kiln's f16 export;
  4. with libllama built (LLAMA_CPP_LIB_PATH, and llama-cpp-python's `llama_cpp` package on
     PYTHONPATH, both from llama-cpp-python's source package), compares llama.cpp's logits for three
     prompts with kiln's (base + adapter, f32, `examples/lm_logits.rs`): for each merged export,
     and for the base with the LoRA GGUF applied.

    python3 scripts/check_gguf_export.py --base BASE.gguf --adapter RUN/adapter --work DIR \
        --llama-cpp LLAMA_CPP_SOURCE_DIR [--kiln target/release/kiln]

libllama from PyPI's source package (no network beyond PyPI; cmake from its wheel):

    pip download --no-deps --no-binary :all: llama-cpp-python   # or take the .tar.gz pip unpacks
    tar xzf llama_cpp_python-*.tar.gz && cd llama_cpp_python-*/vendor/llama.cpp
    cmake -B build -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF
    cmake --build build --target llama -j2
    export PYTHONPATH=../..:DIR_WITH_diskcache LLAMA_CPP_LIB_PATH=$PWD/build/bin LD_LIBRARY_PATH=$PWD/build/bin
"""
import argparse, json, os, subprocess, sys

import numpy as np

PROMPTS = [
    "Pronounce: aachen",
    "The capital of France is",
    "def fib(n):\n    return n if n < 2 else fib(n-1) + fib(n-2)",
]


def run(cmd, **kw):
    print("$", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def describe(path):
    """Keys with their value types, tensors with their types and shapes, as gguf-py reads them."""
    import gguf
    r = gguf.GGUFReader(path)
    keys = {}
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        types = [t.name for t in field.types]
        keys[name] = "/".join(types)
    tensors = {t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape)) for t in r.tensors}
    return keys, tensors


def diff(ref, ours, what):
    rk, rt = ref
    ok, ot = ours
    print(f"-- {what}: {len(rk)} keys / {len(rt)} tensors (converter) vs {len(ok)} / {len(ot)} (kiln)")
    skip = ("general.",)  # names, licences, sizes: the converter's model card, not the model
    for k in sorted(set(rk) | set(ok)):
        if k.startswith(skip):
            continue
        if k not in ok:
            print(f"   only the converter writes {k} ({rk[k]})")
        elif k not in rk:
            print(f"   only kiln writes {k} ({ok[k]})")
        elif rk[k] != ok[k]:
            print(f"   {k}: converter {rk[k]}, kiln {ok[k]}")
    for t in sorted(set(rt) | set(ot)):
        if t not in ot:
            print(f"   only the converter has tensor {t} {rt[t]}")
        elif t not in rt:
            print(f"   only kiln has tensor {t} {ot[t]}")
        elif rt[t] != ot[t]:
            print(f"   tensor {t}: converter {rt[t]}, kiln {ot[t]}")


def kiln_logits(model, out, adapter=None):
    """kiln's logits (dequantized to f32, with the PEFT adapter if given) and the token ids."""
    from safetensors.numpy import load_file
    if not os.path.exists(out):
        lora = ["--lora", adapter] if adapter else []
        run(["cargo", "run", "--release", "--example", "lm_logits", "--", *lora, model, out, *PROMPTS])
    t = load_file(out)
    return [(t[f"ids.{i}"].astype(np.int64).tolist(), t[f"logits.{i}"]) for i in range(len(PROMPTS))]


def llama_logits(model, ids, lora=None):
    from llama_cpp import Llama
    llm = Llama(model_path=model, lora_path=lora, n_ctx=256, logits_all=True, verbose=False, n_threads=2)
    out = []
    for toks in ids:
        llm.reset()
        llm.eval(toks)
        out.append(np.array(llm.scores[: len(toks)], dtype=np.float32))
    llm.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--llama-cpp", help="llama.cpp's source folder (convert_hf_to_gguf.py)")
    ap.add_argument("--kiln", default="target/release/kiln")
    ap.add_argument("--types", default="f32,f16,q8_0,q4_k_m")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    w = lambda *p: os.path.join(args.work, *p)

    types = args.types.split(",")
    for ty in types:
        out = w(ty, "model.gguf")
        if not os.path.exists(out):
            run([args.kiln, "export", "--merge", "--model", args.base, "--lora", args.adapter, "--format", "gguf",
                 "--quantize", ty, "--out", out])
    if not os.path.exists(w("lora", "adapter.gguf")):
        run([args.kiln, "export", "--model", args.base, "--lora", args.adapter, "--format", "gguf",
             "--out", w("lora", "adapter.gguf")])
    for f in [w(ty, "model.gguf") for ty in types] + [w("lora", "adapter.gguf")]:
        keys, tensors = describe(f)
        print(f"gguf-py reads {f}: {len(keys)} keys, {len(tensors)} tensors")
    print(open(w(types[0], "Modelfile")).read())

    if args.llama_cpp and "f16" in types:
        if not os.path.exists(w("hf")):
            run([args.kiln, "export", "--merge", "--model", args.base, "--lora", args.adapter, "--out", w("hf")])
        ref = w("converter-f16.gguf")
        if not os.path.exists(ref):
            r = subprocess.run([sys.executable, os.path.join(args.llama_cpp, "convert_hf_to_gguf.py"), w("hf"),
                                "--outtype", "f16", "--outfile", ref], capture_output=True, text=True)
            if r.returncode != 0:
                print("convert_hf_to_gguf.py failed:\n" + r.stderr[-3000:])
        if os.path.exists(ref):
            diff(describe(ref), describe(w("f16", "model.gguf")), "convert_hf_to_gguf.py --outtype f16 vs kiln f16")

    # kiln reads its own exports back: logits against kiln's base + adapter.
    want = kiln_logits(args.base, w("kiln_logits.safetensors"), args.adapter)
    ids = [i for i, _ in want]
    print("| kiln reads | max abs logit diff vs base + adapter (3 prompts) | max abs logit |")
    print("| --- | ---: | ---: |")
    for ty in types:
        got = kiln_logits(w(ty, "model.gguf"), w(ty, "kiln_logits.safetensors"))
        err = max(float(np.abs(a - b).max()) for (_, a), (_, b) in zip(want, got))
        print(f"| {ty} export | {err:.3e} | {max(float(np.abs(a).max()) for _, a in want):.1f} |", flush=True)

    try:
        import llama_cpp  # noqa: F401
    except Exception as e:  # the library is optional: say why there are no llama.cpp numbers
        print(f"no llama.cpp logits: cannot import llama_cpp ({e})")
        return
    rows = [(ty, w(ty, "model.gguf"), None) for ty in types] + [("base + LoRA GGUF", args.base, w("lora", "adapter.gguf"))]
    print("| file | prompt tokens | max abs logit diff vs kiln | max abs logit | argmax agreement |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, model, lora in rows:
        got = llama_logits(model, ids, lora)
        for (toks, ref), g in zip(want, got):
            err = float(np.abs(ref - g).max())
            agree = float((ref.argmax(-1) == g.argmax(-1)).mean())
            print(f"| {name} | {len(toks)} | {err:.3e} | {float(np.abs(ref).max()):.1f} | {agree:.0%} |", flush=True)


if __name__ == "__main__":
    main()
