"""Where the tiny study's time goes: each stage of one configuration under pyinstrument.

    python -m benchmarks.profile_study [--out DIR] [--quick]

Runs pre-train -> mid-train -> RL of the CE configuration with the tiny preset's defaults, in this process,
on one thread (what the study gives each stage, two stages at a time on 2 cores), under pyinstrument's
sampling profiler. For each stage it records the wall time and the share of the calls below the stage's
``_run`` that take at least 3% of it (three levels of project code deep; torch and transformers calls are leaves), writes the full text profile to
``benchmarks/results/profile_<stage>.txt`` and the summary to ``benchmarks/results/profile.json``.
pyinstrument attributes time spent in torch's C++ kernels to the Python call that launched them, which is
the level at which something can be done about it. Needs ``pip install -e ".[profile]"``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import rlready
from benchmarks.common import RESULTS, machine, write_json

# The package's own files, by location: a substring test on "rlready/" would also match torch's files in a
# virtual environment that lives inside a checkout named rlready.
PACKAGE = str(Path(rlready.__file__).resolve().parent) + os.sep

MIN_SHARE = 0.03
DEPTH = 3


def _stage_root(frame):
    """The frame of the stage's ``_run`` (rlready/train/lm.py or rl.py), searched depth first."""
    if frame.function == "_run" and (frame.file_path or "").startswith(PACKAGE + "train" + os.sep):
        return frame
    for child in frame.children:
        found = _stage_root(child)
        if found is not None:
            return found
    return None


def _is_project(frame) -> bool:
    return (frame.file_path or "").startswith(PACKAGE)


def _project_children(frame, total: float):
    """Children that matter, looking through library frames (torch's ``_call_impl``, ``transformers``) down
    to the next project frames; a library call with no project frame below it is a leaf."""
    for child in frame.children:
        if child.time / total < MIN_SHARE:
            continue
        if _is_project(child):
            yield child
            continue
        below = list(_project_children(child, total))
        if any(_is_project(c) for c in below):
            yield from below
        else:
            yield child


def _top_calls(frame, total: float, depth: int = 0) -> list[dict]:
    """Calls below ``frame`` with at least MIN_SHARE of ``total``, as an indented list."""
    rows = []
    for child in sorted(_project_children(frame, total), key=lambda f: -f.time):
        where = f"{Path(child.file_path or '?').name}:{child.line_no}"
        rows.append(
            {"depth": depth, "call": f"{child.function} ({where})", "share": round(child.time / total, 3)}
        )
        if depth + 1 < DEPTH and _is_project(child):
            rows += _top_calls(child, total, depth + 1)
    return rows


def profile_stage(name: str, argv: list[str]) -> dict:
    from pyinstrument import Profiler

    from rlready.cli import main as cli_main

    profiler = Profiler(interval=0.005)
    start = time.perf_counter()
    profiler.start()
    rc = cli_main([*argv, "--debug"])
    profiler.stop()
    wall = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"profile_study: {name} exited with {rc}")
    (RESULTS / f"profile_{name}.txt").write_text(profiler.output_text(unicode=True, color=False))
    from pyinstrument import processors

    # The raw tree has one frame per call; merge repeated calls of a function as the text renderer does.
    tree = processors.aggregate_repeated_calls(profiler.last_session.root_frame(), options={})
    root = _stage_root(tree)
    if root is None:
        raise SystemExit(f"profile_study: no rlready.train _run frame in the {name} profile")
    print(f"{name}: {wall:.1f} s")
    rows = _top_calls(root, root.time)
    for r in rows:
        print(f"  {'  ' * r['depth']}{r['share']:6.1%}  {r['call']}")
    return {"stage": name, "wall_s": round(wall, 1), "top_calls": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="60/60/6 steps instead of the preset's")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    out = Path(args.out or tempfile.mkdtemp(prefix="rlready-profile-"))
    common = ["--preset", "tiny", "--log.progress", "lines"]
    steps = (lambda n: ["--train.max_steps", str(n)]) if args.quick else (lambda n: [])
    stages = [
        ("pretrain", ["pretrain", *common, *steps(60), "--out", str(out / "pretrain")]),
        (
            "midtrain",
            [
                "midtrain",
                *common,
                *steps(60),
                "--init",
                str(out / "pretrain" / "final"),
                "--out",
                str(out / "midtrain"),
            ],
        ),
        (
            "rl",
            ["rl", *common, *steps(6), "--init", str(out / "midtrain" / "final"), "--out", str(out / "rl")],
        ),
    ]
    results = [profile_stage(name, argv) for name, argv in stages]
    write_json(
        "profile",
        {
            "command": "python -m benchmarks.profile_study" + (" --quick" if args.quick else ""),
            "machine": machine(),
            "stages": results,
        },
    )


if __name__ == "__main__":
    main()
