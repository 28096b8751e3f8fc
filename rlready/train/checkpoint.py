"""Atomic, verified training checkpoints that restore a run exactly.

``DIR/checkpoints/step_XXXXXXXX/`` holds:
- ``model.safetensors``   the weights (safetensors: no pickle);
- ``optimizer.pt``        the optimizer state, read back with ``torch.load(weights_only=True)``;
- ``rng.safetensors``     torch CPU (and CUDA) generator states;
- ``state.json``          step, tokens, data-loader position, Python and NumPy RNG states, stage extras;
- ``manifest.json``       size and SHA-256 of each file above; written last.

Saving: a checkpoint is written into a temporary directory, fsynced, then renamed into place, so a crash at
any moment leaves either the previous set or the new complete one. Any failure while writing (a full disk
included) removes the temporary directory, leaves the earlier checkpoints as they were and is raised as one
``CheckpointWriteError`` (an ``OSError``) naming the checkpoint directory and saying "no space left on
device" when that is the cause. The newest ``keep`` checkpoints are kept; the one just written never is
pruned.

Loading: ``load_latest`` walks the checkpoints newest first. Each must match its manifest; the one that would
be returned is also opened the way ``restore`` will read it (``state.json`` parsed and its keys checked, the
safetensors headers parsed, ``optimizer.pt`` unpickled with ``weights_only=True`` and its storages memory-
mapped rather than read, which costs milliseconds). A checkpoint failing any check is damaged: it is renamed
to ``damaged-step_XXXXXXXX`` (``damaged-step_XXXXXXXX-2`` ... if that name is taken) next to the others,
never deleted, never pruned and no longer counted among the kept ones, and reported in one warning line:

    checkpoint step_00000006 is damaged (model.safetensors does not match its checksum); moved to
    DIR/checkpoints/damaged-step_00000006; using step_00000004 instead

ending with "no good checkpoint remains; starting from step 0" when no older good one exists. ``restore`` and
``read_optimizer_state`` turn any failure reading a file into one ``ValueError`` naming the file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import random
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FILES = ("model.safetensors", "optimizer.pt", "rng.safetensors", "state.json")
_PREFIX = "step_"
DAMAGED_PREFIX = "damaged-"
# Free space below which a failed write is put down to a full disk: a write that runs out of space fills the
# filesystem to (nearly) the last block before it fails, and some writers (torch.save's zip writer) lose the
# errno and report only an inconsistent file position.
_FULL_BELOW_BYTES = 1 << 20


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the earlier ones are intact. ``errno`` is ENOSPC for a full disk."""


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict[str, Any]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    py = random.getstate()
    npy = np.random.get_state()
    json_part = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [npy[0], npy[1].tolist(), int(npy[2]), int(npy[3]), float(npy[4])],
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    return json_part, tensors


def set_rng_state(json_part: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    v, internal, gauss = json_part["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = json_part["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def save(
    root: Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and prune to the newest ``keep``.

    Raises ``CheckpointWriteError`` (an ``OSError``) if it cannot be written; the earlier checkpoints are then
    untouched and no temporary directory is left."""
    from safetensors.torch import save_file

    final = root / f"{_PREFIX}{step:08d}"
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(f".{_PREFIX}*.tmp-*"):  # left by a process killed while writing
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        # Tied weights share storage; safetensors stores each tensor once, so clone to break the sharing
        # (the tie is part of the model config and is restored by loading into the same architecture).
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model_state.items()}
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        torch.save(optimizer_state, tmp / "optimizer.pt")
        rng_json, rng_tensors = rng_state()
        save_file(rng_tensors, tmp / "rng.safetensors")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "rng": rng_json}) + "\n")
        manifest = {n: {"size": (tmp / n).stat().st_size, "sha256": _sha256(tmp / n)} for n in FILES}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        for n in (*FILES, "manifest.json"):
            _fsync(tmp / n)
        if final.exists():  # a checkpoint of this step from an earlier attempt: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(root)
    except BaseException as err:
        # Judge a full disk before the partial files are removed, which frees the space again.
        full = isinstance(err, Exception) and _disk_full(err, root)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, Exception):  # KeyboardInterrupt, SystemExit: not a write failure
            raise
        raise _write_error(err, final, full) from err
    # The checkpoint just written is never pruned, even if newer step directories exist.
    for old in list_checkpoints(root)[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _causes(err: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _disk_full(err: BaseException, root: Path) -> bool:
    for e in _causes(err):
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "no space left" in str(e).lower():
            return True
    if isinstance(err, (TypeError, ValueError, LookupError, AttributeError)):  # bad input, not I/O
        return False
    try:
        return shutil.disk_usage(root).free < _FULL_BELOW_BYTES
    except OSError:
        return False


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if isinstance(err, pickle.UnpicklingError):
        # torch's first line is boilerplate that suggests weights_only=False; the refused object comes later.
        boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
        detail = [ln for ln in lines if not ln.startswith(boilerplate)]
        return f"a pickle that weights_only loading refuses: {detail[0] if detail else 'not plain tensors'}"
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _write_error(err: BaseException, final: Path, full: bool) -> CheckpointWriteError:
    reason = "no space left on device" if full else _first_line(err)
    out = CheckpointWriteError(
        f"cannot write checkpoint {final}: {reason} (the earlier checkpoints in {final.parent} are kept)"
    )
    out.errno = errno.ENOSPC if full else getattr(err, "errno", None)
    return out


def list_checkpoints(root: Path) -> list[Path]:
    """Completed checkpoint directories, oldest first (temporary and set-aside damaged ones are ignored)."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(_PREFIX) and p.name[len(_PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def verify(path: Path) -> str | None:
    """``None`` if ``path`` is a complete checkpoint whose files match the manifest, else the reason."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return "missing or unreadable manifest.json"
    if not isinstance(manifest, dict):
        return "manifest.json is malformed"
    for name in FILES:
        entry = manifest.get(name)
        f = path / name
        if not isinstance(entry, dict) or not f.is_file():
            return f"{name} is missing"
        try:
            size = f.stat().st_size
            if size != entry.get("size"):
                return f"{name} has {size} bytes, manifest says {entry.get('size')}"
            if _sha256(f) != entry.get("sha256"):
                return f"{name} does not match its checksum"
        except OSError as err:
            return f"{name} cannot be read: {err.strerror or err}"
    return None


def _read_state(path: Path, require: Iterable[str]) -> tuple[dict[str, Any] | None, str]:
    """``state.json`` of ``path`` with the keys ``restore`` needs checked: (state, "") or (None, reason)."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as err:
        return None, f"state.json is unreadable ({_first_line(err)})"
    if not isinstance(state, dict):
        return None, "state.json is not a JSON object"
    missing = [k for k in ("step", "rng", *require) if k not in state]
    if missing:
        return None, f"state.json lacks {', '.join(missing)}"
    step, rng = state["step"], state["rng"]
    if not isinstance(step, int) or isinstance(step, bool):
        return None, f"state.json has step {step!r}, not an integer"
    if step != int(path.name[len(_PREFIX) :]):
        return None, f"state.json says step {step}, the directory name says {path.name}"
    python, npy = (rng.get("python"), rng.get("numpy")) if isinstance(rng, dict) else (None, None)
    if not (isinstance(python, list) and len(python) == 3 and isinstance(npy, list) and len(npy) == 5):
        return None, "state.json has malformed rng states"
    return state, ""


def _deep_check(path: Path) -> str | None:
    """``None`` if the files of ``path`` open as ``restore`` will open them, else the reason. Cheap: the
    safetensors headers are parsed and ``optimizer.pt`` is unpickled with its storages memory-mapped."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(path / "model.safetensors", framework="pt") as f:
            f.keys()
    except Exception as err:
        return f"model.safetensors cannot be read ({_first_line(err)})"
    try:
        if "torch_cpu" not in load_file(path / "rng.safetensors"):
            return "rng.safetensors lacks torch_cpu"
    except Exception as err:
        return f"rng.safetensors cannot be read ({_first_line(err)})"
    try:
        # weights_only refuses any pickle that would run code; mmap maps the storages instead of reading them.
        # mmap needs torch's zip format, which save writes; anything else is read whole to say what it holds.
        with warnings.catch_warnings():  # e.g. about the pickle protocol: the outcome is reported instead
            warnings.simplefilter("ignore")
            opt = torch.load(
                path / "optimizer.pt",
                weights_only=True,
                mmap=zipfile.is_zipfile(path / "optimizer.pt"),
                map_location="cpu",
            )
    except Exception as err:
        return f"optimizer.pt cannot be read safely ({_first_line(err)})"
    if not (isinstance(opt, dict) and "state" in opt and "param_groups" in opt):
        return "optimizer.pt does not hold an optimizer state"
    del opt
    return None


def _set_aside(path: Path) -> tuple[Path | None, str]:
    """Rename a damaged checkpoint to a name ``list_checkpoints`` ignores: (new path, "") or (None, why not)."""
    base = path.parent / f"{DAMAGED_PREFIX}{path.name}"
    for i in range(1, 10_000):
        dest = base if i == 1 else base.with_name(f"{base.name}-{i}")
        if dest.exists():
            continue
        try:
            os.replace(path, dest)  # a directory onto a missing name: never replaces anything
        except OSError as err:
            if dest.exists():  # taken meanwhile
                continue
            return None, err.strerror or str(err)
        return dest, ""
    return None, "no free name"


def load_latest(root: Path, warn: Callable[[str], None], *, require: Iterable[str] = ()) -> Checkpoint | None:
    """The newest good checkpoint, or None. Damaged ones (see the module docstring) are moved aside and
    reported through ``warn``, one line each. ``require``: keys ``state.json`` must also hold."""
    require = tuple(require)
    damaged: list[tuple[Path, str]] = []
    found: Checkpoint | None = None
    for path in reversed(list_checkpoints(root)):
        problem = verify(path)
        state: dict[str, Any] | None = None
        if problem is None:
            state, problem = _read_state(path, require)
            if state is not None:
                problem = _deep_check(path)
        if problem is None and state is not None:
            found = Checkpoint(path, int(state["step"]), state)
            break
        damaged.append((path, problem or "unknown problem"))
    outcome = (
        f"using {found.path.name} instead"
        if found is not None
        else "no good checkpoint remains; starting from step 0"
    )
    for path, problem in damaged:
        dest, why = _set_aside(path)
        where = f"moved to {dest}" if dest is not None else f"could not be moved aside ({why})"
        warn(f"checkpoint {path.name} is damaged ({problem}); {where}; {outcome}")
    return found


def restore(ckpt: Checkpoint, model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None) -> None:
    """Load weights (unless ``model`` is None), optimizer state and RNG states of ``ckpt`` (weights only
    through safetensors). A file that cannot be read raises one ``ValueError`` naming it."""
    from safetensors.torch import load_file

    if model is not None:
        weights = _reading(ckpt, "model.safetensors", load_file)
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {ckpt.path.name} does not fit the model (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
    if optimizer is not None:
        optimizer.load_state_dict(read_optimizer_state(ckpt))
    rng_tensors = _reading(ckpt, "rng.safetensors", load_file)
    try:
        set_rng_state(ckpt.state["rng"], rng_tensors)
    except Exception as err:
        raise ValueError(
            f"checkpoint {ckpt.path.name}: cannot restore the RNG states from state.json and rng.safetensors "
            f"({_first_line(err)})"
        ) from err


def read_optimizer_state(ckpt: Checkpoint) -> dict[str, Any]:
    """The ``optimizer.state_dict()`` saved in ``ckpt``, on CPU, read with ``torch.load(weights_only=True)``."""
    return _reading(ckpt, "optimizer.pt", lambda p: torch.load(p, weights_only=True, map_location="cpu"))


def _reading(ckpt: Checkpoint, name: str, read: Callable[[Path], Any]) -> Any:
    path = ckpt.path / name
    try:
        return read(path)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint file {path} ({_first_line(err)})") from err
