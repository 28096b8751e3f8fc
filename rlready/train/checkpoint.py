"""Atomic, verified training checkpoints that restore a run exactly.

``DIR/checkpoints/step_XXXXXXXX/`` holds:
- ``model.safetensors``   the weights (safetensors: no pickle);
- ``optimizer.pt``        the optimizer state, read back with ``torch.load(weights_only=True)``;
- ``rng.safetensors``     torch CPU (and CUDA) generator states;
- ``state.json``          step, tokens, data-loader position, Python and NumPy RNG states, stage extras;
- ``manifest.json``       size and SHA-256 of each file above; written last.

A checkpoint is written into a temporary directory, fsynced, then renamed into place, so a crash at any
moment leaves either the previous set or the new complete one. On load the newest checkpoint whose manifest
verifies is used; a damaged one is reported in one line and skipped. The last ``keep`` are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FILES = ("model.safetensors", "optimizer.pt", "rng.safetensors", "state.json")
_PREFIX = "step_"


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
    """Write checkpoint ``step`` under ``root`` atomically and prune to the newest ``keep``."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{_PREFIX}*.tmp-*"):  # left by a process killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"{_PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Completed checkpoint directories, oldest first (temporary ones are ignored)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def verify(path: Path) -> str | None:
    """``None`` if ``path`` is a complete checkpoint whose files match the manifest, else the reason."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError):
        return "missing or unreadable manifest.json"
    for name in FILES:
        entry = manifest.get(name)
        f = path / name
        if not isinstance(entry, dict) or not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != entry.get("size"):
            return f"{name} has {f.stat().st_size} bytes, manifest says {entry.get('size')}"
        if _sha256(f) != entry.get("sha256"):
            return f"{name} does not match its checksum"
    return None


def load_latest(root: Path, warn) -> Checkpoint | None:
    """The newest verified checkpoint (damaged ones are reported through ``warn`` and skipped)."""
    for path in reversed(list_checkpoints(root)):
        problem = verify(path)
        if problem is not None:
            warn(f"checkpoint {path.name} is damaged ({problem}); using the previous one")
            continue
        state = json.loads((path / "state.json").read_text())
        return Checkpoint(path, int(state["step"]), state)
    return None


def restore(ckpt: Checkpoint, model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None) -> None:
    """Load weights (unless ``model`` is None), optimizer state and RNG states of ``ckpt`` (weights only
    through safetensors)."""
    from safetensors.torch import load_file

    if model is not None:
        weights = load_file(ckpt.path / "model.safetensors")
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {ckpt.path.name} does not fit the model (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
    if optimizer is not None:
        optimizer.load_state_dict(read_optimizer_state(ckpt))
    set_rng_state(ckpt.state["rng"], load_file(ckpt.path / "rng.safetensors"))


def read_optimizer_state(ckpt: Checkpoint) -> dict[str, Any]:
    """The ``optimizer.state_dict()`` saved in ``ckpt``, on CPU, read with ``torch.load(weights_only=True)``."""
    return torch.load(ckpt.path / "optimizer.pt", weights_only=True, map_location="cpu")
