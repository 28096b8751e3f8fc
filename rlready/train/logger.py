"""Run logging: ``metrics.jsonl`` always; a progress bar on a terminal, plain lines otherwise; TensorBoard
and wandb (offline by default) when asked for. Only rank 0 logs."""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any


class RunLogger:
    def __init__(
        self,
        out: Path,
        *,
        total_steps: int,
        start_step: int,
        enabled: bool,
        progress: str = "auto",
        tensorboard: bool = False,
        wandb: bool = False,
        run_name: str = "",
        config: dict[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.total = total_steps
        self.start_step = start_step
        self.t0 = time.perf_counter()
        self.bar = self.tb = self.wb = None
        if not enabled:
            return
        _drop_records_after(out / "metrics.jsonl", start_step)
        self.metrics = (out / "metrics.jsonl").open("a")
        use_bar = progress == "bar" or (progress == "auto" and sys.stderr.isatty())
        if use_bar:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total_steps, initial=start_step, desc=run_name, unit="step", dynamic_ncols=True
            )
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # A resumed run trains the steps after its checkpoint again: hide what an earlier attempt logged
            # for them (as metrics.jsonl drops them), so that TensorBoard shows each step once.
            self.tb = SummaryWriter(
                str(out / "tensorboard"), purge_step=start_step + 1 if start_step else None
            )
        if wandb:
            import wandb as wandb_mod

            # One wandb run id per run directory, so that a resumed run continues the same wandb run.
            id_file = out / "wandb_run_id"
            if not id_file.is_file():
                id_file.write_text(uuid.uuid4().hex[:12] + "\n")
            self.wb = wandb_mod.init(
                project=os.environ.get("WANDB_PROJECT") or "rlready",
                name=run_name,
                id=id_file.read_text().strip(),
                dir=os.environ.get("WANDB_DIR") or str(out),
                mode=os.environ.get("WANDB_MODE") or "offline",
                config=config,
                resume="allow",
            )

    def log(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        values = {k: v.item() if hasattr(v, "item") else v for k, v in record.items()}
        record = {"step": step, **{k: _jsonable(v) for k, v in values.items()}}
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        # NaN and inf reach TensorBoard and wandb as numbers (a diverging loss should show on the plot);
        # metrics.jsonl holds them as strings, which strict JSON needs.
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()  # like metrics.jsonl: a killed run keeps every step it logged
        if self.wb is not None:
            self.wb.log(scalars, step=step)
        done = step - self.start_step
        eta = (time.perf_counter() - self.t0) / max(done, 1) * (self.total - step)
        summary = " ".join(
            f"{k}={_fmt(record[k])}" for k in ("loss", "ce", "entropy", "tokens_per_s") if k in record
        )
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix_str(summary, refresh=True)
        else:
            print(f"step {step}/{self.total} {summary} eta={eta:.0f}s", file=sys.stderr, flush=True)

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self.metrics.close()
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


def _drop_records_after(path: Path, step: int) -> None:
    """Keep only the records of steps <= ``step``, so a resumed run logs each step once.

    A killed run may have logged steps after its last checkpoint (they are trained again on resume) and
    may have left a torn last line; both are dropped. The file is replaced atomically.
    """
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            keep.append(line + "\n")
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(keep))
    tmp.replace(path)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
