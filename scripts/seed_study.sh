#!/usr/bin/env bash
# README's "Over seeds" table: each strategy of the main job (kiln train --task spamassassin)
# over several seeds, in kiln and in PyTorch + PEFT (scripts/peft_classify_baseline.py), all on
# one split. `--task spamassassin --seed S` draws its split with S as well, so the split is made
# once (the data/ of a seed-0 `head` run, copied to OUT_DIR/split) and every run reads it with
# --data; --max-len 64 is the task's default, which --data does not imply; --seed S then sets
# only the head's initialisation, dropout and data order. Finished runs are skipped, so the
# script can be stopped and run again. `scripts/seed_table.py OUT_DIR` prints the table.
#   scripts/seed_study.sh OUT_DIR SEED...     (STRATEGIES="head lora" runs fewer)
set -euo pipefail
out=${1:?usage: scripts/seed_study.sh OUT_DIR SEED...}
shift
[ $# -gt 0 ] || { echo "usage: scripts/seed_study.sh OUT_DIR SEED..." >&2; exit 2; }
kiln=${KILN:-./target/release/kiln}
python=${PYTHON:-python3}
strategies=${STRATEGIES:-head top:2 lora full}
mkdir -p "$out"
if [ ! -f "$out/split/test.jsonl" ]; then
  "$kiln" train --task spamassassin --strategy head --seed 0 --overwrite --out "$out/split-run" \
    > "$out/split-run.log" 2>&1
  cp -r "$out/split-run/data" "$out/split"
fi
for seed in "$@"; do
  for strategy in $strategies; do
    run="$out/${strategy/:/}-s$seed"
    if [ ! -f "$run/report.json" ]; then
      "$kiln" train --data "$out/split" --max-len 64 --strategy "$strategy" --seed "$seed" --overwrite \
        --out "$run" > "$run.log" 2>&1
    fi
    if [ ! -s "$run.torch.json" ]; then
      "$python" scripts/peft_classify_baseline.py "$run" --device cpu --threads 2 > "$run.torch.json" \
        2> "$run.torch.log"
    fi
    echo "$(date -u +%H:%M:%S) $strategy seed $seed done"
  done
done
