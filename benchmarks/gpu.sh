#!/usr/bin/env bash
# The GPU measurements of benchmarks/NOTES.md ("GPU plan"), in one go (~10 minutes on one H100/H200).
# Run from the repository root on a CUDA machine: bash benchmarks/gpu.sh
set -euo pipefail
# Machines without a package index still run it: the package from the checkout, Liger/CCE only if present.
python -m pip install -q --retries 0 --timeout 5 -e . 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -m pip install -q --retries 0 --timeout 5 liger-kernel cut-cross-entropy 2>/dev/null \
    || echo "gpu.sh: liger-kernel / cut-cross-entropy not installable here; compared without them" >&2
python -m benchmarks.bench_loss_gpu --V 151936 --H 2048 --N 4096,16384
export RLREADY_CACHE="${RLREADY_CACHE:-/tmp/rlready-cache}"
out=$(mktemp -d)
# MFU: tokens/s of a short bf16 pre-training run of the 1B preset on synthetic data.
python -m rlready.cli pretrain --preset dense-1b --out "$out/dense-1b" --train.max_steps 30 --data.seq_len 2048 \
    --data.vocab_size 32000 --train.batch_size 8 --train.micro_batch 4 --train.log_every 5 \
    --eval.knowledge_questions 0 --eval.reasoning_problems 0 --eval.tokens 4096 --log.progress lines
python - "$out/dense-1b" <<'PY'
import json, sys, statistics
import torch
recs = [json.loads(l) for l in open(sys.argv[1] + "/metrics.jsonl")]
tps = statistics.median(r["tokens_per_s"] for r in recs[1:])
from rlready.models import build_config, build_model, count_parameters
with torch.device("meta"):
    model = build_model(build_config("dense-1b", vocab_size=32000), device="meta")
active = count_parameters(model)[1]
peak = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
name = torch.cuda.get_device_name()
flops = next((v for k, v in peak.items() if k in name), float("nan"))
result = {"gpu": name, "preset": "dense-1b", "tokens_per_s": round(tps), "active_params": active,
          "mfu": round(6 * active * tps / flops, 4)}
from benchmarks.common import write_json
print(json.dumps(result), "->", write_json("mfu_gpu", result))
PY
python -m benchmarks.run --render
