"""The run directory contract shared by every stage.

``DIR/config.json`` (resolved configuration), ``metrics.jsonl``, ``checkpoints/``, ``eval.json``, ``final/``
(Hugging Face format). Running the same command on the same ``DIR`` resumes; a finished run (``eval.json``
and ``final/`` present) is not retrained; a ``DIR`` holding a run of another configuration is refused unless
``--overwrite`` is given; a non-empty ``DIR`` that holds no run (no ``config.json``) is refused even then.
Nothing that existed is changed before these checks pass.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rlready.config import ConfigError, RunConfig

# Sections that do not change what a stage computes: a resumed run may change them (``log``), or the stage
# never reads them (the RL settings in pre-/mid-training, the loss knobs in RL).
_FREE = ("log",)
_UNUSED = {"pretrain": ("rl",), "midtrain": ("rl",), "rl": ("loss",)}


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    drop = (*_FREE, *_UNUSED.get(d.get("stage", ""), ()))
    return {k: v for k, v in d.items() if k not in drop}


def _first_difference(a: Any, b: Any, prefix: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {a!r} there, {b!r} now"


def check_run_dir(out: Path, cfg: RunConfig, *, overwrite: bool) -> bool:
    """Read-only check of ``out`` against ``cfg``: True when the run there is finished, ConfigError if refused."""
    saved = out / "config.json"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a directory")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if not saved.is_file():  # --overwrite replaces an rlready run, never a directory of something else
        raise ConfigError(f"--out {str(out)!r} is not empty and holds no rlready run (use another directory)")
    if overwrite:
        return False
    try:
        previous = json.loads(saved.read_text())
    except (OSError, ValueError):
        previous = None
    now = _comparable(cfg.to_dict())
    if previous is None or _comparable(previous) != now:
        why = "unreadable config.json" if previous is None else _first_difference(_comparable(previous), now)
        raise ConfigError(
            f"--out {str(out)!r} holds a run with a different configuration ({why}); "
            "use another directory or --overwrite"
        )
    return is_finished(out)


def is_finished(out: Path) -> bool:
    """A finished run: its evaluation and its Hugging Face export are both written."""
    return (out / "eval.json").is_file() and (out / "final" / "config.json").is_file()


def prepare(out: Path, cfg: RunConfig, *, overwrite: bool, is_main: bool = True) -> bool:
    """Check ``out`` (``check_run_dir``), then clear it if ``overwrite`` and save ``config.json``.

    Returns True (and writes nothing) when the run there is already finished.
    """
    if check_run_dir(out, cfg, overwrite=overwrite):
        return True
    if is_main:
        if overwrite and out.is_dir():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        saved = out / "config.json"
        tmp = saved.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
        tmp.replace(saved)
    return False


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
