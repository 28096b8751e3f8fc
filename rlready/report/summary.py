"""``summary.json``: one entry per configuration and seed with the evaluation of every stage and the RL
dynamics of its run (docs/method.md §7); the study adds its claims (rlready/report/claims.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlready.report.claims import DYNAMICS

# The windows of the RL dynamics (docs/method.md §7): the first EARLY logged steps, and the last EARLY logged
# steps up to step ENTROPY_HORIZON for the early entropy drop (the paper's collapse of high-entropy priors
# happens in the first steps) or up to the last step for the change of response length.
EARLY = 3
ENTROPY_HORIZON = 10


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def collect(out: Path, jobs: list[Any]) -> dict[str, Any]:
    runs = []
    for job in jobs:
        entry: dict[str, Any] = {
            **job.config.to_dict(),
            "seed": job.seed,
            "dir": str(job.root.relative_to(out)),
        }
        for stage in ("pretrain", "midtrain", "rl"):
            entry[stage] = _read(job.root / stage / "eval.json")
        entry["rl_dynamics"] = rl_dynamics(read_metrics(job.root / "rl" / "metrics.jsonl"))
        runs.append(entry)
    summary: dict[str, Any] = {"runs": runs}
    fixed = fixed_points(runs)
    if fixed is not None:
        summary["fixed_point"] = fixed
    return summary


def fixed_points(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """What the data allows (docs/method.md §10): each configuration's fixed point on the pre-training data's
    oracle, as its pre-training evaluation computed it. The data and so the oracle are the same for every
    seed of a study (one world), so the first run of each configuration that has one stands for it."""
    configs: dict[str, Any] = {}
    oracle = None
    for run in runs:
        ev = run.get("pretrain") or {}
        if "fixed_point" in ev and run["name"] not in configs:
            configs[run["name"]] = ev["fixed_point"]
            oracle = oracle or ev.get("oracle")
    if not configs:
        return None
    oracle = oracle or {}
    return {
        "order": oracle.get("order"),
        "tokens": oracle.get("tokens"),
        "oracle": oracle,
        "configs": configs,
    }


def with_dynamics(study: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` with ``rl_dynamics`` filled in from the run directories for runs that lack it or some of
    its keys (a ``summary.json`` written before they were recorded)."""
    runs = [
        run
        if set(DYNAMICS) <= set(run.get("rl_dynamics") or {})
        else {**run, "rl_dynamics": rl_dynamics(read_metrics(study / run["dir"] / "rl" / "metrics.jsonl"))}
        for run in summary.get("runs", [])
    ]
    return {**summary, "runs": runs}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (a torn last line from a crash is skipped)."""
    records = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def _series(records: Sequence[Mapping[str, Any]], key: str) -> list[tuple[int, float]]:
    """``(step, value)`` of the records with a finite ``key``, by step (a step logged twice: the last)."""
    by_step: dict[int, float] = {}
    for rec in records:
        step, value = rec.get("step"), rec.get(key)
        if (
            isinstance(step, int)
            and not isinstance(step, bool)
            and isinstance(value, (int, float))
            and not isinstance(value, bool)
            and math.isfinite(value)
        ):
            by_step[step] = float(value)
    return sorted(by_step.items())


def _relative_change(series: list[tuple[int, float]], end_step: int) -> float | None:
    """``(late - first) / first``: ``first`` the mean of the first EARLY points, ``late`` the mean of the last
    EARLY points after those and at or before ``end_step``; None when either window is empty or
    ``first`` is not positive."""
    first = [v for _, v in series[:EARLY]]
    late = [v for s, v in series[EARLY:] if s <= end_step][-EARLY:]
    if not first or not late:
        return None
    f = sum(first) / len(first)
    if f <= 0:
        return None
    return (sum(late) / len(late) - f) / f


def rl_dynamics(records: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """The RL run's dynamics from its ``metrics.jsonl`` records (docs/method.md §7):

    - ``entropy_drop``: ``(E_first - E_late) / E_first``, ``E_first`` the mean policy entropy (``entropy``)
      of the first 3 logged steps, ``E_late`` that of the last 3 logged steps after them up to step
      ``min(10, last logged step)``; positive when entropy falls.
    - ``length_change``: ``(L_last - L_first) / L_first`` of ``response_len_mean``, first 3 and last 3
      logged steps; negative when responses get shorter.
    - ``length_shift``: ``|length_change|``, how far the length moved either way (the paper's "more stable").

    None when the run logged too few steps for two separate windows.
    """
    entropy = _series(records, "entropy")
    length = _series(records, "response_len_mean")
    drop = _relative_change(entropy, min(ENTROPY_HORIZON, entropy[-1][0])) if entropy else None
    change = _relative_change(length, length[-1][0]) if length else None
    return {
        "entropy_drop": None if drop is None else -drop,
        "length_change": change,
        "length_shift": None if change is None else abs(change),
    }
