"""Training-loop benchmark: shaped vs CE wall time, our loop vs a Hugging Face ``Trainer`` loop, CLI latency,
and 1 vs 2 processes under ``torchrun`` (all on the tiny preset, CPU).

    python -m benchmarks.bench_train [--steps 150] [--quick]

Shaped vs CE times the whole ``rlready pretrain --preset tiny`` run as the study makes it (the preset's 300
steps and its final evaluation); ``--steps`` sets the length of the other comparisons.

Every comparison is measured in this one run, variants interleaved, medians reported as ratios.
The HF Trainer comparison needs ``accelerate`` (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from benchmarks.common import machine, write_json

T = TypeVar("T")
SHAPED = ["--loss.beta", "-0.25", "--loss.lam_tail", "-0.1", "--loss.k", "100"]
SMALL_EVAL = [
    "--eval.knowledge_questions",
    "20",
    "--eval.reasoning_problems",
    "8",
    "--eval.samples",
    "4",
    "--eval.pass_k",
    "2",
]


def _pretrain_args(steps: int | None) -> list[str]:
    """``rlready pretrain --preset tiny``; with ``steps``, that many steps and a smaller final evaluation."""
    args = ["pretrain", "--preset", "tiny", "--log.progress", "lines"]
    return args if steps is None else [*args, "--train.max_steps", str(steps), *SMALL_EVAL]


def _rlready(args: list[str], env: dict[str, str], launcher: list[str] | None = None) -> float:
    start = time.perf_counter()
    cmd = (launcher or [sys.executable, "-m", "rlready.cli"]) + args
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _steady_tokens_per_s(run: Path) -> float:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in recs[1:]]  # the first window includes warm-up
    return statistics.median(rates)


def _alternating_pairs(
    reps: int, first: Callable[[int], T], second: Callable[[int], T]
) -> tuple[list[T], list[T]]:
    """``reps`` back-to-back pairs of ``first(rep)`` and ``second(rep)`` in alternating order, so that a drift in
    the machine's speed (these machines are shared) falls on both sides; ratios are then taken per pair."""
    a: list[T] = []
    b: list[T] = []
    for rep in range(reps):
        for results, fn in ((a, first), (b, second)) if rep % 2 == 0 else ((b, second), (a, first)):
            results.append(fn(rep))
    return a, b


def shaped_vs_ce(tmp: Path, env: dict[str, str], steps: int | None, reps: int) -> dict:
    """Wall time and steady tokens/s of CE and shaped runs, medians and median ratios over the pairs."""
    base = _pretrain_args(steps)
    _rlready([*base, "--out", str(tmp / "warm")], env)  # tokenizer + token cache, imports warm

    def run(name: str, extra: list[str]) -> Callable[[int], tuple[float, float]]:
        def one(rep: int) -> tuple[float, float]:
            out = tmp / f"{name}-{rep}"
            return _rlready([*base, "--out", str(out), *extra], env), _steady_tokens_per_s(out)

        return one

    ce, shaped = _alternating_pairs(reps, run("CE", []), run("shaped", SHAPED))
    wall_ratios = [s[0] / c[0] for s, c in zip(shaped, ce, strict=True)]
    steps_run = json.loads((tmp / "CE-0" / "config.json").read_text())["train"]["max_steps"]
    return {
        "steps": steps_run,
        "whole_run": steps is None,
        "wall_s": {
            "CE": round(statistics.median(c[0] for c in ce), 2),
            "shaped (beta=-0.25, lam_tail=-0.1, k=100)": round(statistics.median(s[0] for s in shaped), 2),
        },
        "ratio_wall": round(statistics.median(wall_ratios), 3),
        "ratio_wall_per_pair": [round(r, 3) for r in wall_ratios],
        "tokens_per_s": {
            "CE": round(statistics.median(c[1] for c in ce)),
            "shaped": round(statistics.median(s[1] for s in shaped)),
        },
        "ratio_tokens_per_s": round(
            statistics.median(c[1] / s[1] for s, c in zip(shaped, ce, strict=True)), 3
        ),
    }


def ours_vs_hf_trainer(tmp: Path, env: dict[str, str], steps: int, reps: int) -> dict:
    """Steady tokens/s of ``rlready pretrain`` (CE) and of ``Trainer``, in back-to-back pairs."""

    def ours_run(rep: int) -> float:
        out = tmp / f"ours-{rep}"
        _rlready([*_pretrain_args(steps), "--out", str(out)], env)
        return _steady_tokens_per_s(out)

    ours, hf = _alternating_pairs(reps, ours_run, lambda rep: hf_trainer_tokens_per_s(tmp, steps))
    return {
        "steps": steps,
        "ours_tokens_per_s": round(statistics.median(ours)),
        "hf_trainer_tokens_per_s": round(statistics.median(hf)),
        "ratio": round(statistics.median(o / h for o, h in zip(ours, hf, strict=True)), 3),
    }


def hf_trainer_tokens_per_s(tmp: Path, steps: int) -> float:
    """The same model (tiny preset), data (our token cache, packed the same way) and batch with ``Trainer``."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from rlready.data.loader import PackedBatches
    from rlready.models import build_config, build_model
    from rlready.recipes import resolve
    from rlready.train import dist
    from rlready.train.lm import check_inputs, load_data

    cfg = resolve("pretrain", "tiny")
    cpu = torch.device("cpu")
    data = load_data(cfg, tmp / "warm", dist.Dist(0, 1, 0, cpu), check_inputs(cfg, cpu))
    loader = PackedBatches(data.train, cfg.data.seq_len, cfg.train.batch_size, seed=0)
    rows = torch.cat([next(loader) for _ in range(steps + 2)])

    class Packed(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(rows)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": rows[i, :-1], "labels": rows[i, :-1]}  # the model shifts labels itself

    torch.manual_seed(0)
    config = build_config("tiny", vocab_size=len(data.tokenizer))
    model = build_model(config)
    marks: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            marks[state.global_step] = time.perf_counter()

    targs = TrainingArguments(
        output_dir=str(tmp / "hf"),
        per_device_train_batch_size=cfg.train.batch_size,
        max_steps=steps,
        learning_rate=cfg.train.lr,
        weight_decay=0.1,
        max_grad_norm=1.0,
        warmup_steps=cfg.train.warmup_steps,
        lr_scheduler_type="constant_with_warmup",
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=0,
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    Trainer(model=model, args=targs, train_dataset=Packed(), callbacks=[Clock()]).train()
    first = 10
    return (steps - first) * cfg.train.batch_size * cfg.data.seq_len / (marks[steps] - marks[first])


def cli_latency(env: dict[str, str], reps: int) -> dict:
    cases = {
        "rlready --help": ["--help"],
        "argument error (--loss.k 0)": ["pretrain", "--out", "/nonexistent/x", "--loss.k", "0"],
    }
    exe = str(Path(sys.executable).with_name("rlready"))  # the console script of this environment
    out = {}
    for name, args in cases.items():
        ts = []
        for _ in range(reps):
            start = time.perf_counter()
            subprocess.run([exe, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ts.append(time.perf_counter() - start)
        out[name] = round(statistics.median(ts), 3)
    return out


def scaling(tmp: Path, env: dict[str, str], steps: int) -> dict:
    base = _pretrain_args(steps)
    one = tmp / "np1"
    _rlready([*base, "--out", str(one)], env)
    two = tmp / "np2"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "rlready.cli",
    ]
    env1 = dict(env, OMP_NUM_THREADS="1")
    _rlready([*base, "--out", str(two)], env1, launcher=torchrun)
    r1, r2 = _steady_tokens_per_s(one), _steady_tokens_per_s(two)
    return {
        "1 process x 2 threads tokens/s": round(r1),
        "2 processes x 1 thread tokens/s (global)": round(r2),
        "per process tokens/s (2 processes)": round(r2 / 2),
        "ratio_global": round(r2 / r1, 3),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--quick", action="store_true", help="one repetition, shorter runs")
    args = ap.parse_args(argv)
    steps = 40 if args.quick else args.steps
    reps = 1 if args.quick else 5
    tmp = Path(tempfile.mkdtemp(prefix="rlready-bench-"))
    env = dict(os.environ, RLREADY_CACHE=str(tmp / "cache"))
    try:
        result = {
            "machine": machine(),
            "command": "python -m benchmarks.bench_train"
            + (" --quick" if args.quick else f" --steps {steps}"),
        }
        result["shaped_vs_ce"] = shaped_vs_ce(tmp, env, steps if args.quick else None, reps)
        try:
            result["vs_hf_trainer"] = ours_vs_hf_trainer(
                tmp, env, min(steps, 60), reps=1 if args.quick else 5
            )
        except ImportError as err:
            result["vs_hf_trainer"] = {"skipped": f"{err} (pip install accelerate)"}
        write_json("train", result)  # keep what is measured so far
        result["cli_latency_s"] = cli_latency(env, 5)
        write_json("train", result)
        result["scaling"] = scaling(tmp, env, steps)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    print(f"wrote {write_json('train', result)}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
