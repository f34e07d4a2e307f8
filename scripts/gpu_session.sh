#!/usr/bin/env bash
# One GPU session for "Speed on a real GPU" (issue 20) and any retake of README's GPU tables:
# kiln's GPU tests, `kiln bench --tune` and the kernel table, `kiln bench --step` for both
# models (timed, then profiled with GPU timestamps), PyTorch eager and torch.compile on the same
# steps, cuBLAS SGEMM beside kiln's matmul; everything under $OUT, at most 8 files.
#
# The device machine has no Rust toolchain and no network, so the script runs in two places:
#
#   bash scripts/gpu_session.sh prepare   here, in the repository root: builds kiln and the GPU
#                                         test binaries (release), copies them stripped into .gpu/,
#                                         and downloads the Vulkan loader's .debs into .gl/
#                                         (both ignored by git; about 60 MiB together, of the
#                                         64 MiB the device tool carries)
#   bash scripts/gpu_session.sh run       there, from the repository root, with OUT set:
#       device tool: run(command="bash scripts/gpu_session.sh run", carry=[".gpu", ".gl"], timeout_s=560)
#
# Each step has its own time limit so one that hangs cannot eat the session (about 8 minutes in
# all on an H200). What comes back: session.log (every command and its output), kernels.json,
# step-smollm2.json, step-minilm.json, profile-smollm2.png, profile-minilm.png, eval-minilm.json
# (kiln eval's report: one e-mail's p50/p95/p99 and throughput at batch 1/8/32/64, the figures of
# README's GPU table) and pytorch.jsonl (bert-latency's line, then the steps).
#
# KILN_SESSION_QUICK=1 runs the same plumbing small and short (no tune, small steps, one test
# binary), to check the script on lavapipe: OUT=/tmp/s KILN_SESSION_QUICK=1 bash ... run
set -u

prepare() {
    set -e
    export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
    cargo build --release
    mkdir -p .gpu
    # The test binaries find tests/fixtures through the folder they were built in.
    pwd >.gpu/build_dir
    strip -o .gpu/kiln target/release/kiln
    cargo test --release --no-run --test kernels --test gradcheck --test models --test hardening 2>&1 |
        sed -n 's/.*Executable tests\/\([a-z_]*\)\.rs (\(.*\))/\1 \2/p' >.gpu/tests.txt
    while read -r name path; do strip -o ".gpu/$name" "$path"; done <.gpu/tests.txt
    # The MiniLM latency part: its tokenizer (the weights are made random there) and the texts,
    # KILN_TEXTS (a jsonl with `text` and `label`, e.g. a main-job run's data/test.jsonl) or else
    # the first 400 e-mails of the SpamAssassin import.
    mkdir -p .gpu/minilm-tok
    tok=$(./target/release/kiln models --json | python3 -c 'import json,sys; print(next(m["path"] for m in json.load(sys.stdin) if m["name"] == "minilm"))')
    for f in tokenizer.json tokenizer_config.json vocab.txt special_tokens_map.json; do
        [ -f "$tok/$f" ] && cp "$tok/$f" .gpu/minilm-tok/
    done
    if [ -n "${KILN_TEXTS:-}" ]; then
        cp "$KILN_TEXTS" .gpu/texts.jsonl
    else
        ./target/release/kiln data import spamassassin --out /tmp/kiln-spam.jsonl --overwrite >/dev/null
        head -400 /tmp/kiln-spam.jsonl >.gpu/texts.jsonl
    fi
    # The Vulkan loader (the device machine has the NVIDIA driver's ICD but maybe no loader).
    mkdir -p .gl /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    # shellcheck disable=SC2086
    apt-get $o update >/dev/null
    # shellcheck disable=SC2086
    (cd .gl && apt-get $o download libvulkan1)
    du -sh .gpu .gl
    echo "ready: carry .gpu and .gl, and run 'bash scripts/gpu_session.sh run' on the device"
}

log() { echo "=== $*" | tee -a "$OUT/session.log"; }

# Runs a command with a time limit, its output appended to session.log.
step() {
    local limit=$1
    shift
    echo "\$ $*" >>"$OUT/session.log"
    timeout "$limit" "$@" >>"$OUT/session.log" 2>&1
    local rc=$?
    [ $rc -eq 0 ] || echo "(exit $rc)" | tee -a "$OUT/session.log"
    return 0
}

run() {
    : "${OUT:?set OUT to the folder the results go to}"
    [ -x .gpu/kiln ] || { echo "no .gpu/kiln: run 'bash scripts/gpu_session.sh prepare' here first and carry .gpu"; exit 1; }
    : >"$OUT/session.log"
    log "$(date -u +%FT%TZ) kiln GPU session, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    if ! ldconfig -p | grep -q libvulkan.so.1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then export VK_DRIVER_FILES=$icd; fi
    build=$(cat .gpu/build_dir)
    if [ ! -e "$build" ]; then mkdir -p "$(dirname "$build")" && ln -s "$PWD" "$build"; fi
    export XDG_RUNTIME_DIR=/tmp PYTHONUNBUFFERED=1
    K=.gpu/kiln PY=${PYTHON:-python3}
    quick=${KILN_SESSION_QUICK:-}
    scale=full tests="kernels gradcheck models hardening" tune=--tune steps=10 psteps=20 compile=--compile
    small= runs=100 batches=1,8,32,64
    if [ -n "$quick" ]; then
        scale=small tests=gradcheck tune="--only copy" steps=1 psteps=1 compile= small=--small runs=3 batches=1,8
        log "quick run: small scale, no tuning, one test binary"
    fi

    log "the machine"
    step 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    step 60 $K devices

    log "kiln's GPU tests"
    for t in $tests; do
        [ -x ".gpu/$t" ] && step 180 ".gpu/$t"
    done
    grep -E "^test result|FAILED|panicked" "$OUT/session.log" | tail -8

    log "kiln bench $tune, then every kernel at $scale scale (the tuned tiles and split-K are cached for the steps below)"
    echo "\$ $K bench $tune --scale $scale --json" >>"$OUT/session.log"
    # shellcheck disable=SC2086
    timeout 200 $K bench $tune --scale $scale --json >"$OUT/kernels.json" 2>>"$OUT/session.log" || echo "(bench failed)" | tee -a "$OUT/session.log"

    log "cuBLAS SGEMM, TF32 off, beside kiln's matmul"
    [ -z "$quick" ] && step 90 "$PY" scripts/sgemm_baseline.py --torch-cuda --json --sizes 256,512,1024,2048,4096

    for m in smollm2 minilm; do
        log "kiln bench --step $m ($scale scale: timed, then 2 steps profiled with GPU timestamps)"
        echo "\$ $K bench --step $m --scale $scale --steps $steps --json" >>"$OUT/session.log"
        timeout 120 $K bench --step $m --scale $scale --steps $steps --json >"$OUT/step-$m.json" 2>>"$OUT/session.log" ||
            echo "(step $m failed)" | tee -a "$OUT/session.log"
        step 120 $K bench --step $m --scale $scale --warmup 3 --steps 2 --profile --gpu-times --plot "$OUT/profile-$m.png"
        # The same step in one submit, to see what submitting in chunks buys on a GPU.
        step 120 env KILN_SUBMIT_EVERY=1000000 $K bench --step $m --scale $scale --steps $steps
        # The same step with the barrier-tree reductions, with the matmul epilogues (SwiGLU
        # into the up-projection) separate, and without split-K, to keep or drop each on a GPU.
        step 120 env KILN_REDUCTIONS=barrier $K bench --step $m --scale $scale --steps $steps
        step 120 env KILN_EPILOGUES=separate $K bench --step $m --scale $scale --steps $steps
        step 120 env KILN_SPLIT_K=off $K bench --step $m --scale $scale --steps $steps
        # The frozen base's products in f32 instead of f16 on cooperative matrices (the default
        # where `kiln devices` lists them), to keep or drop that default on a GPU.
        step 120 env KILN_PRECISION=f32 $K bench --step $m --scale $scale --steps $steps
    done

    log "MiniLM classifier: one e-mail's latency and throughput per batch size, kiln eval and PyTorch"
    work=/tmp/kiln-gpu-work
    step 120 "$PY" scripts/gpu_baselines.py make-models "$work" --tokenizer .gpu/minilm-tok $small
    echo "\$ $K eval --model $work/minilm-cls --data .gpu/texts.jsonl ... --json" >>"$OUT/session.log"
    timeout 240 $K eval --model "$work/minilm-cls" --data .gpu/texts.jsonl --max-len 64 --no-counterfactual \
        --no-edge-cases --latency-runs $runs --warmup 5 --batch-sizes $batches --out "$work/eval" --overwrite --json \
        >"$OUT/eval-minilm.json" 2>>"$OUT/session.log" || echo "(kiln eval failed)" | tee -a "$OUT/session.log"
    echo "\$ python3 scripts/gpu_baselines.py bert-latency $work/minilm-cls .gpu/texts.jsonl --runs $runs" >>"$OUT/session.log"
    timeout 120 "$PY" scripts/gpu_baselines.py bert-latency "$work/minilm-cls" .gpu/texts.jsonl --runs $runs --batch-sizes $batches \
        >>"$OUT/pytorch.jsonl" 2>>"$OUT/session.log" || echo "(pytorch latency failed)" | tee -a "$OUT/session.log"

    log "PyTorch eager and torch.compile on the same steps (scripts/gpu_baselines.py steps)"
    echo "\$ python3 scripts/gpu_baselines.py steps --scale $scale --steps $psteps $compile" >>"$OUT/session.log"
    # shellcheck disable=SC2086
    timeout 240 "$PY" scripts/gpu_baselines.py steps --scale $scale --steps $psteps $compile >>"$OUT/pytorch.jsonl" \
        2>>"$OUT/session.log" || echo "(pytorch baselines failed or timed out)" | tee -a "$OUT/session.log"
    cat "$OUT/pytorch.jsonl"
    grep -h -E '"median_ms"|"tokens_per_s"|"dispatches_per_step"' "$OUT"/step-*.json
    log "$(date -u +%FT%TZ) done"
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: bash scripts/gpu_session.sh prepare|run (see the header of this file)"
    exit 2
    ;;
esac
