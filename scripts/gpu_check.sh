#!/usr/bin/env bash
# The GPU check of the learning stages (README, "Training at scale"), prepared to run once on a lent GPU machine
# in under 10 minutes: its own Python stack (torch + CUDA, typer, rich, numpy, pillow), not our pins, no export stack.
#   OUT=/some/folder bash scripts/gpu_check.sh
# 1. bench_train.py in bf16 for every model (vit_base and sclnet first), and fp32 for vit_base (TF32);
# 2. on a synthetic set: train sclnet_small in fp32 and bf16 (same seed and epochs: mAP side by side), train vit_small,
#    compress it (heads, MLP units, K/V tokens), quant-finetune SCL-net (needs executorch + torchao: skipped and said
#    so where the stack lacks them), and a one-rank torchrun (NCCL) training run.
# Every step has its own time limit, so one hang cannot eat the machine's budget; results land in $OUT.
set -u
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/steps.log"; }
step() {  # step NAME SECONDS CMD...: run with a limit, keep its output, note the exit status
  local name=$1 limit=$2; shift 2
  log "start $name"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  log "end $name: exit $?"
}
cli() { $PY -m mobilereid.cli "$@"; }

$PY - <<'EOF' | tee "$OUT/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0), torch.cuda.device_count(), "GPU(s)")
try:
    import executorch, torchao  # noqa: F401
    print("executorch and torchao: present")
except ImportError as exc:
    print("no export stack:", exc)
EOF
step bench_bf16 200 $PY scripts/bench_train.py --device cuda --precision bf16 \
  --models vit_base,sclnet,sclnet_small,vit_small,vit_base_s12_sie_jpm --steps 30 --warmup 10 --out "$OUT/bench_bf16"
step bench_fp32 60 $PY scripts/bench_train.py --device cuda --precision fp32 --models vit_base,sclnet --steps 20 --warmup 5 \
  --out "$OUT/bench_fp32"
step synth 60 cli data synth "$OUT/synth" --ids 100
step train_fp32 60 cli train -d "$OUT/synth" -m sclnet_small --epochs 12 -p 16 -k 4 --lr 1e-3 --device cuda --precision fp32 -o "$OUT/sclnet_fp32"
step train_bf16 60 cli train -d "$OUT/synth" -m sclnet_small --epochs 12 -p 16 -k 4 --lr 1e-3 --device cuda --precision bf16 -o "$OUT/sclnet_bf16"
step train_vit 60 cli train -d "$OUT/synth" -m vit_small --epochs 6 -p 16 -k 4 --lr 3e-4 --device cuda --precision bf16 -o "$OUT/vit"
step compress 90 cli compress "$OUT/vit/model.pt" -d "$OUT/synth" -o "$OUT/vit_compressed" --head-rate 0.25 --mlp-rate 0.25 \
  --token-rate 0.3 --rounds 1 --device cuda --precision bf16
step quant_finetune 90 cli quant-finetune "$OUT/sclnet_fp32/model.pt" -d "$OUT/synth" -o "$OUT/sclnet_qft.pt" --epochs 4 \
  --guard-every 4 --device cuda --precision bf16
step torchrun_nccl 60 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m mobilereid.cli train -d "$OUT/synth" \
  -m sclnet_small --epochs 1 --device cuda --precision bf16 -o "$OUT/torchrun"
$PY - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("sclnet_fp32", "sclnet_bf16", "vit", "torchrun"):
    f = out / name / "train_summary.json"
    if f.is_file():
        s = json.loads(f.read_text())
        m = s.get("metrics") or {}
        print(name, s.get("compute"), "mAP", m.get("mAP"), "epoch s", [round(h["seconds"], 2) for h in s["history"]][-3:])
f = out / "vit_compressed" / "compress_report.json"
if f.is_file():
    r = json.loads(f.read_text())
    print("compress", r["compute"], "mAP", (r["before"].get("metrics") or {}).get("mAP"), "->", (r["after"].get("metrics") or {}).get("mAP"),
          "seconds", round(r["seconds"], 1))
for b in ("bench_bf16", "bench_fp32"):
    f = out / b / "bench_train.md"
    if f.is_file():
        print(f.read_text())
EOF
