"""``summary.json``: one entry per configuration and seed with the evaluation of every stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


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
        runs.append(entry)
    return {"runs": runs}


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
