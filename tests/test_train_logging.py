"""TensorBoard and wandb logging (``--log.tensorboard true``, ``--log.wandb true``) hold what metrics.jsonl holds.

Each test trains a tiny pre-training run in process and reads the logs back with the library's own reader:
TensorBoard's ``EventAccumulator``, and for wandb (offline) the run's transaction log, decoded with wandb's
protobuf records (offline runs keep their history only there; there is no wandb-summary.json offline).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from lm_runs import make_cfg, wait_for

from rlready.train import lm
from rlready.train.logger import RunLogger


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """wandb's own files under tmp_path, no WANDB_MODE (offline is the logger's default), no network."""
    for name in ("WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # were it online, it could reach nothing


def expected(out: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as ``{metric: [(step, value), ...]}`` for the scalar metrics (what the loggers get)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                series.setdefault(k, []).append((record["step"], v))
    return series


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def as_float32(series: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard stores scalars as float32."""
    return {k: [(s, float(np.float32(v))) for s, v in pts] for k, pts in series.items()}


def wandb_records(run_file: Path):
    """The protobuf records of a ``.wandb`` transaction log (LevelDB log framing: 32 KiB blocks, 7-byte
    headers of checksum, length, type; after a 7-byte file header ``:W&B``, magic, version)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a wandb transaction log"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, or LAST of FIRST/MIDDLE.../LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def finished_records(run_file: Path, timeout: float = 60.0) -> list:
    """The records once wandb has written the run's last one (``exit``). ``wandb.finish()`` may return
    before wandb's service process has written the transaction log out: read it again until it is whole."""
    from google.protobuf.message import DecodeError

    records: list = []

    def whole() -> bool:
        try:
            records[:] = wandb_records(run_file)
        except (AssertionError, DecodeError):  # not yet past its header, or a record half written
            records.clear()
        return any(r.WhichOneof("record_type") == "exit" for r in records)

    wait_for(whole, timeout, f"the exit record of {run_file}", interval=0.1)
    return records


def wandb_history(run_file: Path) -> list[dict]:
    rows = []
    for record in finished_records(run_file):
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items})
    return rows


def wandb_scalars(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for k, v in row.items():
            if not k.startswith("_"):  # wandb's own _step, _runtime, _timestamp
                series.setdefault(k, []).append((row["_step"], v))
    return series


def offline_runs(wandb_dir: Path) -> list[Path]:
    return sorted(wandb_dir.glob("offline-run-*/run-*.wandb"), key=lambda p: p.parent.name)


def test_tensorboard_holds_metrics_jsonl_also_after_a_crash_and_resume(env, tmp_path):
    """Every scalar of metrics.jsonl at its step and value (float32), each step once, across a resume."""
    from rlready.train import logger

    out = tmp_path / "tb"
    cfg = make_cfg(env, **{"train.eval_every": "3", "log.tensorboard": "true"})
    original = logger.RunLogger.log
    crashed = []  # holds the crashed run's logger, never closed (as in a killed process)

    def crash_after_step_5(self, step, record):
        original(self, step, record)
        if step == 5:  # the newest checkpoint is step 4: step 5 is trained and logged again on resume
            crashed.append(self)
            raise RuntimeError("crash")

    mp = pytest.MonkeyPatch()
    mp.setattr(logger.RunLogger, "log", crash_after_step_5)
    with pytest.raises(RuntimeError, match="crash"):
        lm.run(cfg, out)
    mp.undo()
    # Written as it goes (the crashed run never closed its writer), like metrics.jsonl.
    before = expected(out)
    assert [s for s, _ in before["loss"]] == [1, 2, 3, 4, 5]
    assert tensorboard_scalars(out / "tensorboard") == as_float32(before)

    lm.run(cfg, out)
    want = expected(out)
    assert [s for s, _ in want["loss"]] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "ce", "entropy", "lr", "grad_norm", "tokens", "eval_ppl"} <= want.keys(), want.keys()
    got = tensorboard_scalars(out / "tensorboard")
    assert got.keys() == want.keys()
    for tag in want:
        assert got[tag] == as_float32(want)[tag], tag


def test_wandb_offline_holds_metrics_jsonl(env, tmp_path, wandb_env):
    """Offline by default, in the run directory; every scalar of metrics.jsonl at its step, exactly."""
    out = tmp_path / "wb"
    lm.run(make_cfg(env, **{"train.eval_every": "3", "log.wandb": "true"}), out)
    runs = offline_runs(out / "wandb")
    assert len(runs) == 1, list((out / "wandb").iterdir())
    run_id = (out / "wandb_run_id").read_text().strip()
    assert runs[0].name == f"run-{run_id}.wandb"
    want = expected(out)
    assert [s for s, _ in want["loss"]] == [1, 2, 3, 4, 5, 6]
    assert wandb_scalars(wandb_history(runs[0])) == want


def test_non_finite_values_reach_tensorboard_and_wandb_as_numbers(tmp_path, wandb_env):
    """metrics.jsonl stays strict JSON ("nan" as a string); the plots get the NaN/inf themselves."""
    import torch

    out = tmp_path / "run"
    out.mkdir()
    log = RunLogger(
        out, total_steps=3, start_step=0, enabled=True, progress="lines", tensorboard=True, wandb=True
    )
    log.log(1, {"loss": 1.0, "grad_norm": torch.tensor(0.5)})
    log.log(2, {"loss": float("nan"), "grad_norm": torch.tensor(float("inf"))})
    log.close()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[1] == {"step": 2, "loss": "nan", "grad_norm": "inf"}
    for series in (
        tensorboard_scalars(out / "tensorboard"),
        wandb_scalars(wandb_history(offline_runs(out / "wandb")[0])),
    ):
        assert series["grad_norm"] == [(1, 0.5), (2, float("inf"))]
        (step1, loss1), (step2, loss2) = series["loss"]
        assert (step1, loss1, step2) == (1, 1.0, 2) and isinstance(loss2, float) and np.isnan(loss2)


def test_wandb_resumed_run_continues_the_same_run(tmp_path, wandb_env, monkeypatch):
    """A second attempt on the same directory logs to the same wandb run id; WANDB_DIR and WANDB_MODE count."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    (tmp_path / "wandb-dir").mkdir()
    out = tmp_path / "run"
    out.mkdir()
    first = RunLogger(out, total_steps=4, start_step=0, enabled=True, progress="lines", wandb=True)
    for step in (1, 2, 3):
        first.log(step, {"loss": 1.0 / step})
    first.close()
    assert "WANDB_MODE" not in os.environ  # the offline default is not forced on the rest of the process
    time.sleep(1.1)  # offline run directories are named by the second they start and the run id
    second = RunLogger(out, total_steps=4, start_step=2, enabled=True, progress="lines", wandb=True)
    for step in (3, 4):
        second.log(step, {"loss": 1.0 / step})
    second.close()
    assert not (out / "wandb").exists()
    runs = offline_runs(tmp_path / "wandb-dir" / "wandb")
    assert len(runs) == 2 and runs[0].name == runs[1].name, runs
    assert wandb_scalars(wandb_history(runs[1])) == {"loss": [(3, 1 / 3), (4, 1 / 4)]}

    monkeypatch.setenv("WANDB_MODE", "disabled")
    off = RunLogger(tmp_path / "run", total_steps=4, start_step=4, enabled=True, progress="lines", wandb=True)
    off.log(5, {"loss": 0.2})
    off.close()
    assert len(offline_runs(tmp_path / "wandb-dir" / "wandb")) == 2
