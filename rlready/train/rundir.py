"""The run directory contract shared by every stage and the study.

``DIR/rlready.json`` (the marker: what kind of run this is, written only by rlready), ``config.json``
(resolved configuration), ``metrics.jsonl``, ``checkpoints/``, ``eval.json``, ``final/`` (Hugging Face
format). Running the same command on the same ``DIR`` resumes; a finished run (``eval.json`` and ``final/``
present) is not retrained; a ``DIR`` holding a run of another configuration is refused unless ``--overwrite``
is given.

What protects a user's files:
- ``--overwrite`` replaces only a directory that holds the marker of the same kind of run (a stage's run
  for a stage, a study for a study); never ``.``, a parent of the current directory, the home directory, a
  filesystem root or a symbolic link. Anything else is refused in one line before any file is touched.
- The stages check everything read-only (``check_run_dir``) and validate all their inputs before
  ``claim`` creates or changes ``DIR``.
- ``claim`` takes an exclusive lock (``DIR/.rlready.lock``, ``flock``) held for the run's lifetime: a
  second process on the same directory is refused. The kernel drops the lock when its holder dies, so a
  killed run never leaves a stale lock behind.
- A run that was set up but never trained (only the marker, ``config.json``, its tokenizer) blocks nothing:
  a start that failed after ``claim`` is replaced by the corrected command without ``--overwrite``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from rlready.config import ConfigError, RunConfig

MARKER = "rlready.json"
LOCK = ".rlready.lock"
FORMAT = 1
STAGE_KINDS = ("pretrain", "midtrain", "rl")

# Files of a run that was set up but never trained: replacing it loses nothing that cannot be redone at once.
_SETUP_ONLY = {MARKER, "config.json", LOCK, "tokenizer", "config.json.tmp", f"{MARKER}.tmp"}

# Sections that do not change what a stage computes: a resumed run may change them (``log``), or the stage
# never reads them (the RL settings in pre-/mid-training, the loss knobs in RL).
_FREE = ("log",)
_UNUSED = {"pretrain": ("rl",), "midtrain": ("rl",), "rl": ("loss",)}


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    drop = (*_FREE, *_UNUSED.get(d.get("stage", ""), ()))
    return {k: v for k, v in d.items() if k not in drop}


def first_difference(a: Any, b: Any, prefix: str = "") -> str:
    """``key.path: A there, B now`` for the first (sorted) key at which two nested mappings differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.')}: {a!r} there, {b!r} now"


def settings_difference(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The first difference between two recorded configurations that a run's resume would refuse (the logging
    section and the sections a stage does not use are free); None when there is none."""
    a, b = _comparable(saved), _comparable(now)
    return None if a == b else first_difference(a, b)


# -- what a directory holds ------------------------------------------------------------------------------


def _is_lock(p: Path) -> bool:
    return p.name == LOCK and p.is_file() and not p.is_symlink()


def entries(out: Path) -> list[str]:
    """Names in ``out`` other than the lock file (a lock alone is an empty directory)."""
    return sorted(p.name for p in out.iterdir() if not _is_lock(p)) if out.is_dir() else []


def read_marker(out: Path) -> dict[str, Any] | None:
    """The marker of an rlready run in ``out``, or None (absent, unreadable, or not ours)."""
    path = out / MARKER
    if path.is_symlink() or not path.is_file():  # only rlready writes it, always as a plain file
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(marker, dict) and type(marker.get("rlready")) is int and marker["rlready"] == FORMAT
    return marker if ok and marker.get("kind") in (*STAGE_KINDS, "study") else None


def write_marker(out: Path, kind: str) -> None:
    from rlready import __version__

    write_json(out / MARKER, {"rlready": FORMAT, "kind": kind, "version": __version__})


def is_finished(out: Path) -> bool:
    """A finished run: its evaluation and its Hugging Face export are both written."""
    return (out / "eval.json").is_file() and (out / "final" / "config.json").is_file()


def _never_replaced(out: Path) -> str | None:
    """Why ``out`` may never be removed, whatever it holds; None when it may."""
    if out.is_symlink():
        return "is a symbolic link"
    real, cwd, home = out.resolve(), Path.cwd().resolve(), Path.home().resolve()
    if real == real.parent:
        return "is a filesystem root"
    if real == cwd or real in cwd.parents:
        return "is the current directory or one of its parents"
    if real == home or real in home.parents:
        return "is the home directory or one of its parents"
    return None


def check_replaceable(out: Path, kinds: tuple[str, ...], what: str) -> None:
    """Raise ConfigError unless ``--overwrite`` may remove ``out`` (a run of one of ``kinds``)."""
    reason = _never_replaced(out)
    if reason is not None:
        raise ConfigError(f"--overwrite refused: --out {str(out)!r} {reason}")
    marker = read_marker(out)
    if marker is None:
        raise ConfigError(
            f"--out {str(out)!r} is not empty and holds no rlready run (no {MARKER}); "
            "--overwrite replaces only rlready runs: use another directory"
        )
    if marker["kind"] not in kinds:
        raise ConfigError(
            f"--out {str(out)!r} holds an rlready {marker['kind']} run, not {what}; "
            "--overwrite replaces only the same kind of run: use another directory"
        )


# -- the stages' checks ----------------------------------------------------------------------------------


def check_run_dir(out: Path, cfg: RunConfig, *, overwrite: bool) -> str:
    """Read-only check of ``out`` against ``cfg``; ConfigError if refused, else what to do with it:
    ``"new"`` (absent or empty), ``"resume"``, ``"finished"``, or ``"replace"`` (``--overwrite``, or a run
    that was set up but never trained)."""
    if (out.exists() or out.is_symlink()) and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a directory")
    names = entries(out)
    if not names:
        return "new"
    if overwrite:
        check_replaceable(out, STAGE_KINDS, f"a {cfg.stage} run")
        return "replace"
    marker = read_marker(out)
    saved = out / "config.json"
    if marker is None and not saved.is_file():
        raise ConfigError(f"--out {str(out)!r} is not empty and holds no rlready run (use another directory)")
    try:
        previous = json.loads(saved.read_text())
    except (OSError, ValueError):
        previous = None
    why = (
        settings_difference(previous, cfg.to_dict())
        if isinstance(previous, dict)
        else "unreadable config.json"
    )
    if why is None:
        return "finished" if is_finished(out) else "resume"
    if marker is not None and marker["kind"] in STAGE_KINDS and set(names) <= _SETUP_ONLY:
        return "replace"
    raise ConfigError(
        f"--out {str(out)!r} holds a run with a different configuration ({why}); "
        "use another directory or --overwrite"
    )


class RunLock:
    """An exclusive ``flock`` on ``DIR/.rlready.lock`` for the life of a run (released by the kernel when the
    process dies, so a lock is never stale)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK
        try:  # never through a symbolic link: the pid written below would land in whatever it points to
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as err:
            raise ConfigError(
                f"--out {str(out)!r}: {LOCK} is not a lock file rlready can use ({err.strerror}); "
                "use another directory"
            ) from None
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            self.release()
            raise ConfigError(f"--out {str(out)!r}: {LOCK} is not a regular file; use another directory")
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "?"
            self.release()
            raise ConfigError(
                f"--out {str(out)!r} is in use by another rlready process (pid {holder}); "
                "wait for it to end or use another directory"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def clear(out: Path) -> None:
    """Remove everything in ``out`` but the lock (symbolic links are removed, never followed)."""
    for p in out.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def claim(out: Path, cfg: RunConfig, *, overwrite: bool) -> RunLock | None:
    """Lock ``out`` for this run and set it up (cleared if ``--overwrite``, marker, ``config.json``).

    Called after every input has been validated. The read-only check is repeated under the lock, since
    another process may have changed ``out`` since. Returns None (lock released, nothing written) when the
    run there is finished.
    """
    check_run_dir(out, cfg, overwrite=overwrite)  # refuse before creating anything, the lock file included
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out)
    try:
        state = check_run_dir(out, cfg, overwrite=overwrite)
        if state == "finished":
            lock.release()
            return None
        if state == "replace":
            clear(out)
        write_marker(out, cfg.stage)
        write_json(out / "config.json", cfg.to_dict())
    except BaseException:
        lock.release()
        raise
    return lock


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
