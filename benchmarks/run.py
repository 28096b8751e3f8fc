"""The benchmark suite: run every benchmark, print its table, write JSON, and regenerate BENCHMARKS.md.

    python -m benchmarks.run [--quick] [--only loss,train] [--render]

``--render`` only rewrites BENCHMARKS.md from the JSON already in ``benchmarks/results/`` (e.g. after a GPU
run). Each figure is a ratio of two things measured side by side in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.common import RESULTS

ROOT = Path(__file__).resolve().parent.parent
SUITE = ("loss", "train", "rollout", "profile")
MODULES = {
    "loss": "bench_loss",
    "train": "bench_train",
    "rollout": "bench_rollout",
    "profile": "profile_study",
}


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _machine_line(r: dict) -> str:
    m = r["machine"]
    return f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, Python {m['python']}, torch {m['torch']}"


def _topk_table(title: str, cases: list[dict]) -> list[str]:
    names = list(cases[0]["ms"])  # torch.topk first: the ratios are to it
    out = [
        title,
        "",
        "| V | n | g | "
        + " | ".join(f"{name} ms" for name in names)
        + " | "
        + " | ".join(f"{name} vs torch.topk" for name in names[1:])
        + " |",
        "|---" * (3 + 2 * len(names) - 1) + "|",
    ]
    for case in cases:
        ms = " | ".join(str(case["ms"][name]) for name in names)
        ratios = " | ".join(f"{case['ratio'][name]:.2f}x" for name in names[1:])
        out.append(f"| {case['V']} | {case['n']} | {case['g']} | {ms} | {ratios} |")
    return out + [""]


def render_loss(r: dict) -> list[str]:
    out = ["## Loss", "", f"Command: `{r['command']}`  ", f"Machine: {_machine_line(r)}", ""]
    for case in r["time"]:
        out += [
            f"Forward + backward, fp32 logits, N={case['N']}, V={case['V']} (median of interleaved repetitions):",
            "",
        ]
        out += ["| variant | ms | vs F.cross_entropy |", "|---|---|---|"]
        out += [f"| {k} | {v} | {case['ratio'][k]:.2f}x |" for k, v in case["ms"].items()]
        out.append("")
    if "topk" in r:
        out += _topk_table(
            "Top-k selection (`k = 100`) of one fused-op chunk of 2^20 fp32 logits (`n` rows): `torch.topk`, "
            "`rlready.losses.select.grouped_topk` (groups of `g`) and the numba head kernel "
            "(`rlready.losses.head_cpu`: the top-k plus the head's sums and the row's `p . z`, what the loss "
            "takes on CPU):",
            r["topk"],
        )
    for case in r["memory"]:
        out += [
            f"Extra peak memory of forward + backward, N={case['N']}, H={case['H']}, V={case['V']} (fresh process each):",
            "",
        ]
        out += ["| variant | MiB | vs F.cross_entropy(h @ W.T) |", "|---|---|---|"]
        out += [f"| {k} | {v} | {case['ratio'][k]:.3f}x |" for k, v in case["extra_peak_mib"].items()]
        out.append("")
    return out


def render_train(r: dict) -> list[str]:
    s = r["shaped_vs_ce"]
    out = [
        "## Training loop (tiny preset)",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {_machine_line(r)}",
        "",
    ]
    out += ["| measure | value |", "|---|---|"]
    run = (
        f"whole `rlready pretrain --preset tiny` run ({s['steps']} steps + final evaluation)"
        if s.get("whole_run")
        else f"`rlready pretrain` wall time, {s['steps']} steps"
    )
    for k, v in s["wall_s"].items():
        out.append(f"| {run}, {k} | {v} s |")
    pairs = s.get("ratio_wall_per_pair")
    per_pair = f" (median of {len(pairs)} back-to-back pairs: {', '.join(map(str, pairs))})" if pairs else ""
    out.append(f"| shaped / CE wall time | {s['ratio_wall']:.3f}x{per_pair} |")
    out.append(f"| steady tokens/s CE / shaped | {s['tokens_per_s']['CE']} / {s['tokens_per_s']['shaped']} |")
    if "ratio_tokens_per_s" in s:
        out.append(f"| steady time per step, shaped / CE | {s['ratio_tokens_per_s']:.3f}x |")
    hf = r.get("vs_hf_trainer", {})
    if "ratio" in hf:
        out.append(
            f"| steady tokens/s ours vs HF `Trainer` (same model, data, batch) "
            f"| {hf['ours_tokens_per_s']} vs {hf['hf_trainer_tokens_per_s']} (medians); "
            f"ours / HF per back-to-back pair, median: {hf['ratio']:.3f}x |"
        )
    for k, v in r.get("cli_latency_s", {}).items():
        out.append(f"| {k} | {v} s |")
    for k, v in r.get("scaling", {}).items():
        out.append(f"| torchrun scaling: {k} | {v} |")
    return out + [""]


def render_rollout(r: dict) -> list[str]:
    out = ["## Rollouts", "", f"Command: `{r['command']}`  ", f"Machine: {_machine_line(r)}", ""]
    out += ["| measure | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in r.items() if k not in ("machine", "command")]
    return out + [""]


def render_profile(r: dict) -> list[str]:
    out = [
        "## Where the tiny study's time goes (one configuration, one thread per stage)",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {_machine_line(r)}",
        "",
        "pyinstrument, calls below each stage's `_run` with at least 3% of its time (full profiles in",
        "`benchmarks/results/profile_<stage>.txt`):",
        "",
    ]
    for stage in r["stages"]:
        out += [f"**{stage['stage']}**: {stage['wall_s']} s", ""]
        out += ["| share | call |", "|---|---|"]
        out += [
            f"| {c['share']:.1%} | {'&nbsp;&nbsp;' * 2 * c['depth']}`{c['call']}` |"
            for c in stage["top_calls"]
        ]
        out.append("")
    return out


def render_loss_gpu(r: dict) -> list[str]:
    out = ["## Loss on a GPU", "", f"Command: `bash benchmarks/gpu.sh` (`{r['command'].strip()}`)  "]
    out += [f"Machine: {r['machine']['gpu']}, torch {r['machine']['torch']}", ""]
    for case in r["cases"]:
        out += [f"Forward + backward, bf16, N={case['N']}, H={case['H']}, V={case['V']}:", ""]
        out += [
            "| variant | ms | vs F.cross_entropy | extra peak MiB | vs F.cross_entropy |",
            "|---|---|---|---|---|",
        ]
        out += [
            f"| {k} | {v} | {case['time_ratio'][k]:.2f}x | {case['extra_peak_mib'][k]} | {case['memory_ratio'][k]:.3f}x |"
            for k, v in case["ms"].items()
        ]
        out.append("")
    if "topk" in r:
        out += _topk_table("Top-k selection (`k = 100`) of one fused-op chunk (`n` rows):", r["topk"])
    return out


def render_mfu_gpu(r: dict) -> list[str]:
    out = ["## Pre-training throughput on a GPU", "", "Command: `bash benchmarks/gpu.sh`  "]
    out += [f"Machine: {r['gpu']}", "", "| measure | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in r.items() if k != "gpu"]
    return out + [""]


# Rendered in this order when their JSON exists; the GPU ones come from benchmarks/gpu.sh.
RENDER = {
    "loss": render_loss,
    "loss_gpu": render_loss_gpu,
    "mfu_gpu": render_mfu_gpu,
    "train": render_train,
    "rollout": render_rollout,
    "profile": render_profile,
}


def render(notes: Path = ROOT / "benchmarks" / "NOTES.md") -> str:
    parts = [
        "# Benchmarks",
        "",
        "Generated by `python -m benchmarks.run` from `benchmarks/results/*.json`; every ratio",
        "compares variants measured side by side in one run. Do not edit by hand: the notes below come from",
        "`benchmarks/NOTES.md`.",
        "",
    ]
    for name, render_one in RENDER.items():
        r = _load(name)
        if r is not None:
            parts += render_one(r)
    if notes.is_file():
        parts += [notes.read_text()]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(SUITE), help="comma-separated subset of " + ",".join(SUITE))
    ap.add_argument("--render", action="store_true", help="only regenerate BENCHMARKS.md from saved JSON")
    args = ap.parse_args(argv)
    if not args.render:
        for name in args.only.split(","):
            if name not in SUITE:
                sys.exit(f"unknown benchmark {name!r}; choose from {', '.join(SUITE)}")
            module = __import__(f"benchmarks.{MODULES[name]}", fromlist=["main"])
            module.main(["--quick"] if args.quick else [])
    (ROOT / "BENCHMARKS.md").write_text(render())
    print(f"wrote {ROOT / 'BENCHMARKS.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
