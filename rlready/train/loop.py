"""What every stage's loop shares, so that a stage reads set up -> batch -> step -> log -> save: its life
(``run_stage``), how it claims ``--out``, how it stops on SIGTERM/SIGINT, how it resumes and when it checkpoints,
its autocast, its warnings, its logger and its gradient clipping."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from rlready.config import ConfigError, RunConfig
from rlready.errors import Interrupted, interrupted
from rlready.train import dist
from rlready.train.logger import RunLogger
from rlready.train.rundir import RunLock, claim


class StopFlag:
    """SIGTERM/SIGINT for the whole life of a stage.

    Inside ``deferred()`` (the training loop) a signal only sets ``signum``: the loop finishes its step,
    checkpoints and raises ``Interrupted`` itself. Anywhere else (start-up, evaluation, export) there is
    nothing to checkpoint, so the signal raises ``Interrupted`` at once; every write there is atomic, so the
    same command starts again cleanly. Only the first signal raises: a second one (e.g. Ctrl-C pressed twice,
    or the terminal's and a parent's copy of one) must not interrupt the clean-up of the first.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.phase = "start-up"
        self._deferred = False
        self._raised = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        first = self.signum is None
        self.signum = signum
        if first and not self._deferred and not self._raised:
            self._raised = True
            raise interrupted(signum, self.phase)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[StopFlag]:
        self._deferred = True
        try:
            yield self
        finally:
            self._deferred = False

    @contextlib.contextmanager
    def held(self) -> Iterator[StopFlag]:
        """A signal waits until the block is done, then raises: for work that must not stop half-way
        (starting worker processes, which would otherwise read a closed pipe and print tracebacks)."""
        pending = self.signum
        with self.deferred():
            yield self
        if self.signum is not None and pending is None and not self._raised:
            self._raised = True
            raise interrupted(self.signum, self.phase)

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def die_with_parent() -> None:
    """A stage gets SIGTERM when the process that started it dies, even by SIGKILL, so it checkpoints and ends
    instead of running on unowned: a stage started by ``rlready study`` (which sets ``RLREADY_PARENT_PID``), and a
    worker of ``torchrun`` (which sets ``TORCHELASTIC_RUN_ID`` and starts its workers in sessions of their own,
    so a SIGKILL to torchrun's process group does not reach them). Linux only (the kernel's PR_SET_PDEATHSIG);
    elsewhere the parent's forwarding of its own signals is all there is."""
    parent, ppid = os.environ.get("RLREADY_PARENT_PID", ""), os.getppid()
    by_study = parent.isdigit() and ppid == int(parent)
    if not sys.platform.startswith("linux") or not (by_study or "TORCHELASTIC_RUN_ID" in os.environ):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    if os.getppid() != ppid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


class CheckpointPolicy:
    """Decides for itself when a step is checkpointed: every ``train.checkpoint_every`` steps (not at the
    last one, which the final export follows) and when the run is stopping, which then ends with
    ``Interrupted``. ``ok=False`` (a skipped, non-finite step) writes nothing: the last good checkpoint stays."""

    def __init__(self, cfg: RunConfig, root: Path, save: Callable[[int], None]) -> None:
        self.every, self.max_steps, self.root, self.save = (
            cfg.train.checkpoint_every,
            cfg.train.max_steps,
            root,
            save,
        )

    def maybe_save(self, step: int, stop: bool, ok: bool = True) -> None:
        due = self.every and step % self.every == 0 and step < self.max_steps
        if (stop or due) and ok:
            self.save(step)
        if stop:
            where = f"checkpoint written to {self.root}" if ok else "last good checkpoint kept"
            raise Interrupted(f"interrupted at step {step}; {where}; run the same command to resume")


def autocast(mode: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """``train.autocast``: bf16 autocast on request, or by default on CUDA; float32 otherwise."""
    if mode == "bf16" or (mode == "auto" and device.type == "cuda"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def warner(enabled: bool) -> Callable[[str], None]:
    """Warnings go to stderr with the other diagnostics (stdout carries only the result line); rank 0's only."""
    if not enabled:
        return lambda msg: None
    return lambda msg: print(f"rlready: warning: {msg}", file=sys.stderr, flush=True)


def run_logger(cfg: RunConfig, out: Path, start_step: int, enabled: bool = True) -> RunLogger:
    return RunLogger(
        out,
        total_steps=cfg.train.max_steps,
        start_step=start_step,
        enabled=enabled,
        progress=cfg.log.progress,
        tensorboard=cfg.log.tensorboard,
        wandb=cfg.log.wandb,
        run_name=f"{cfg.stage}:{out.name}",
        config=cfg.to_dict(),
    )


def clip_grad(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """The gradient's global norm, clipped to ``train.grad_clip`` (0: measured only)."""
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else float("inf"))


def claim_on_main(
    out: Path, cfg: RunConfig, d: dist.Dist, *, overwrite: bool, then: Callable[[], None] | None = None
) -> tuple[RunLock | None, bool]:
    """Rank 0 claims ``out`` (:func:`rlready.train.rundir.claim`) and, once it holds it, calls ``then`` (e.g. to
    save the tokenizer); every rank gets the outcome: rank 0's lock (None elsewhere) and whether another process
    finished the run meanwhile. A refused ``--out`` ends every process with rank 0's message."""
    lock, error = None, None
    if d.is_main:
        try:
            lock = claim(out, cfg, overwrite=overwrite)
            if lock is not None and then is not None:
                then()
        except (ConfigError, OSError) as err:
            if lock is not None:
                lock.release()
            if not d.enabled:
                raise
            lock, error = None, str(err)
    error, finished = dist.broadcast_object((error, d.is_main and lock is None and error is None), d)
    if error is not None:
        raise ConfigError(error)
    return lock, finished


def run_stage(
    cfg: RunConfig,
    out: Path,
    overwrite: bool,
    setup: Callable[[RunConfig, Path, dist.Dist, bool], Any],
    train: Callable[[RunConfig, Path, dist.Dist, Any, StopFlag], dict[str, Any]],
) -> dict[str, Any]:
    """A stage's life: signals handled from the start, the process group joined, ``setup`` (inputs checked,
    ``--out`` claimed; a dict when the run had already finished: its eval.json), then ``train`` under the
    run's lock (held by rank 0), and the process group left however it ends."""
    from transformers.utils import logging as hf_logging

    # transformers draws its own bars for loading and saving weights; they would break the one-line error
    # contract on stderr and interleave with the stage's progress, which already says where the run is.
    hf_logging.disable_progress_bar()
    with StopFlag() as stop:
        d = dist.init()
        try:
            ready = setup(cfg, out, d, overwrite)
            if isinstance(ready, dict):
                return ready
            with ready.lock or contextlib.nullcontext():
                return train(cfg, out, d, ready, stop)
        finally:
            dist.close(d)


def resume(
    out: Path, d: dist.Dist, model: torch.nn.Module, warn: Callable[[str], None], require: tuple[str, ...]
):
    """The run's newest good checkpoint (``rlready.train.checkpoint.Checkpoint``, or None), its weights and RNG
    states restored (the optimizer's come after wrapping). Rank 0 verifies the checkpoints (a checksum of every
    file) and tells the other ranks which one to load; the weights go into the whole model: every rank's, or
    rank 0's under FSDP, which shards them in ``dist.wrap`` (the other ranks hold a meta skeleton)."""
    from rlready.train import checkpoint

    found = checkpoint.load_latest(out / "checkpoints", warn, require=require) if d.is_main else None
    ckpt = dist.broadcast_object(found, d)
    if ckpt is not None:
        checkpoint.restore(ckpt, None if next(model.parameters()).device.type == "meta" else model, None)
    return ckpt
