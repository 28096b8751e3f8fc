"""The pre-/mid-training stage in process: run directory contract, non-finite steps, pickle safety, mid-training.

Runs are tiny (6 steps of 4 x 32 tokens) and share one tokenizer and token cache, so the file stays fast.
"""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from lm_runs import make_cfg

from rlready import config
from rlready.data import loader
from rlready.errors import Interrupted
from rlready.train import checkpoint, lm
from rlready.train.schedule import wsd_lr

METRIC_KEYS = {"step", "tokens", "lr", "loss", "ce", "entropy", "tokens_per_s"}


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def tree(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def pretrained(env):
    """A finished pre-training run, and the model object that training ended with."""
    out = env / "pt"
    captured = {}
    original = lm._finish

    def spy(cfg, out_, model, *args, **kwargs):
        captured["model"] = model
        return original(cfg, out_, model, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(lm, "_finish", spy)
    try:
        result = lm.run(make_cfg(env), out)
    finally:
        mp.undo()
    return out, result, captured["model"]


def test_metrics_has_one_record_per_log_step(pretrained):
    out, _, _ = pretrained
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    for r in records:
        assert set(r) >= METRIC_KEYS
        assert r["tokens"] == r["step"] * 4 * 32
        expected = wsd_lr(
            r["step"] - 1, max_steps=6, lr=3e-3, final_lr=3e-4, warmup_steps=2, decay_fraction=0.2
        )
        assert r["lr"] == pytest.approx(expected, rel=1e-12)
        assert r["loss"] == pytest.approx(r["ce"], rel=1e-5)  # beta = lam = 0: the loss is cross-entropy
        assert 0 < r["entropy"] <= math.log(512) + 1e-4


def test_eval_json(pretrained):
    out, result, _ = pretrained
    ev = json.loads((out / "eval.json").read_text())
    assert ev == result
    assert ev["step"] == 6 and ev["tokens"] == 6 * 4 * 32
    assert ev["ppl"] == pytest.approx(math.exp(ev["ce"]), rel=1e-6)
    assert 0 < ev["entropy"] <= math.log(512) + 1e-4
    # The held-out reasoning evaluation of the RL stage, per-problem Avg@n included (for paired gains).
    assert 0 <= ev["reasoning"] <= 1 and ev["avg@k"] == ev["avg@1"] and ev["pass@k"] == ev["pass@1"]
    assert len(ev["avg@k_per_problem"]) == ev["problems"] == 1 and ev["reward_failures"] == 0
    assert json.loads((out / "config.json").read_text()) == make_cfg(out.parent).to_dict()


def test_final_loads_with_transformers_and_matches_the_trained_model(pretrained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, trained = pretrained
    model = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    tok = AutoTokenizer.from_pretrained(out / "final")
    ids = torch.tensor([tok("The answer is 12 and the river flows.")["input_ids"]])
    trained.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, trained(ids).logits)


def test_keep_last_checkpoints(pretrained):
    out, _, _ = pretrained
    names = [p.name for p in checkpoint.list_checkpoints(out / "checkpoints")]
    assert names == ["step_00000002", "step_00000004"]  # saved at 2 and 4 (6 is final/), keep 2
    assert all(checkpoint.verify(out / "checkpoints" / n) is None for n in names)
    assert not list((out / "checkpoints").glob(".*tmp*"))


def test_finished_run_is_not_retrained(pretrained, env, monkeypatch):
    out, result, _ = pretrained
    before = tree(out)

    def boom(*a, **k):
        raise AssertionError("a finished run loaded its data again")

    monkeypatch.setattr(lm, "load_data", boom)
    monkeypatch.setattr(lm, "check_inputs", boom)
    assert lm.run(make_cfg(env), out) == result
    assert tree(out) == before


def test_different_configuration_is_refused_and_overwrite_replaces(pretrained, env, tmp_path):

    out = tmp_path / "copy"
    shutil.copytree(pretrained[0], out)
    before = tree(out)
    with pytest.raises(config.ConfigError, match="different configuration.*loss.beta"):
        lm.run(make_cfg(env, **{"loss.beta": "-0.25", "train.max_steps": "2"}), out)
    assert tree(out) == before
    lm.run(make_cfg(env, **{"loss.beta": "-0.25", "train.max_steps": "2"}), out, overwrite=True)
    assert json.loads((out / "config.json").read_text())["loss"]["beta"] == "-0.25"
    assert [r["step"] for r in read_metrics(out)] == [1, 2]


def test_overwrite_never_deletes_a_directory_that_holds_no_run(env, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not an rlready run")
    for overwrite in (False, True):
        with pytest.raises(config.ConfigError, match="holds no rlready run"):
            lm.run(make_cfg(env), out, overwrite=overwrite)
        assert [p.name for p in out.iterdir()] == ["notes.txt"]


# -- non-finite steps ----------------------------------------------------------------------------------------


def _nan_loss_at(monkeypatch, bad_steps: set[int]) -> None:
    """Make the loss NaN in every micro-batch of the given (1-based) steps; 2 micro-batches per step."""
    original = lm.ShapedLMLoss.forward
    calls = {"n": 0}

    def forward(self, batch, *args, **kwargs):
        loss, stats = original(self, batch, *args, **kwargs)
        calls["n"] += 1
        if self.training and (calls["n"] - 1) // 2 + 1 in bad_steps:
            loss = loss * float("nan")
        return loss, stats

    monkeypatch.setattr(lm.ShapedLMLoss, "forward", forward)


def test_non_finite_step_is_skipped_with_a_warning(env, tmp_path, monkeypatch, capsys):
    _nan_loss_at(monkeypatch, {2})
    out = tmp_path / "run"
    lm.run(make_cfg(env, **{"train.max_steps": "4", "train.checkpoint_every": "3"}), out)
    assert "non-finite loss or gradient at step 2; step skipped" in capsys.readouterr().err
    records = read_metrics(out)
    assert records[1]["loss"] == "nan" and all(math.isfinite(r["loss"]) for r in records if r["step"] != 2)
    # The checkpoint after step 3 has seen two optimizer updates, not three.
    opt = torch.load(out / "checkpoints" / "step_00000003" / "optimizer.pt", weights_only=True)
    assert {float(s["step"]) for s in opt["state"].values()} == {2.0}
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(out / "final" / "model.safetensors").values())


def test_repeated_non_finite_steps_stop_and_keep_the_good_checkpoint(env, tmp_path, monkeypatch):
    _nan_loss_at(monkeypatch, {3, 4, 5, 6})
    out = tmp_path / "run"
    cfg = make_cfg(env, **{"train.checkpoint_every": "1", "train.max_bad_steps": "3"})
    from rlready.train.logger import RunLogger

    closed = []
    real_close = RunLogger.close
    monkeypatch.setattr(RunLogger, "close", lambda self: (closed.append(True), real_close(self)))
    with pytest.raises(lm.TrainingError, match="3 non-finite steps in a row at step 5"):
        lm.run(cfg, out)
    assert closed == [True]  # the logger (metrics.jsonl, TensorBoard, wandb) is closed on the error path too
    names = [p.name for p in checkpoint.list_checkpoints(out / "checkpoints")]
    assert names == ["step_00000001", "step_00000002"]
    assert not (out / "final").exists() and not (out / "eval.json").exists()


def test_non_finite_weights_are_never_checkpointed(env, tmp_path, monkeypatch):
    original = torch.optim.AdamW.step
    calls = {"n": 0}

    def step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the update of step 2 overflows one weight
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    out = tmp_path / "run"
    with pytest.raises(lm.TrainingError, match="non-finite weights at step 2"):
        lm.run(make_cfg(env, **{"train.checkpoint_every": "1"}), out)
    ckpts = checkpoint.list_checkpoints(out / "checkpoints")
    assert [p.name for p in ckpts] == ["step_00000001"] and checkpoint.verify(ckpts[0]) is None


# -- pickle safety ---------------------------------------------------------------------------------------------


class _Planted:
    """Unpickling this creates a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path: Path, marker: Path) -> None:
    with path.open("wb") as f:
        pickle.dump({"state": _Planted(marker)}, f)


def test_resume_never_unpickles_a_planted_optimizer_state(env, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "PWNED"
    cfg = make_cfg(env, **{"train.max_steps": "4", "train.checkpoint_every": "2"})
    with pytest.raises(Interrupted):
        _run_until_interrupt(cfg, out, at_step=2)
    ckpt = out / "checkpoints" / "step_00000002"
    _plant(ckpt / "optimizer.pt", marker)
    # Re-sign the manifest, as an attacker with write access could: the load itself must refuse.
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["optimizer.pt"] = {
        "size": (ckpt / "optimizer.pt").stat().st_size,
        "sha256": checkpoint._sha256(ckpt / "optimizer.pt"),
    }
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    lm.run(cfg, out)  # the checkpoint is set aside and the run trains from step 0
    assert not marker.exists()
    assert (out / "checkpoints" / "damaged-step_00000002" / "optimizer.pt").is_file()
    assert [r["step"] for r in read_metrics(out)][-4:] == [1, 2, 3, 4]


def test_init_never_unpickles_planted_weights(pretrained, env, tmp_path):

    init, marker = tmp_path / "init", tmp_path / "PWNED"
    shutil.copytree(pretrained[0] / "final", init)
    for name in ("pytorch_model.bin", "training_args.bin", "optimizer.pt"):
        _plant(init / name, marker)
    lm.run(make_cfg(env, "midtrain", **{"model.init": str(init), "train.max_steps": "1"}), tmp_path / "mid")
    (init / "model.safetensors").unlink()  # only the pickle is left: refused, never loaded
    with pytest.raises(ValueError, match="pickle"):
        lm.run(
            make_cfg(env, "midtrain", **{"model.init": str(init), "train.max_steps": "1"}), tmp_path / "m2"
        )
    assert not marker.exists()


def _run_until_interrupt(cfg: config.RunConfig, out: Path, at_step: int) -> None:
    """Run until ``at_step`` has been logged, then deliver SIGTERM to this process (handled by the loop)."""
    import os
    import signal

    from rlready.train import logger

    original = logger.RunLogger.log

    def log(self, step, record):
        original(self, step, record)
        if step == at_step:
            os.kill(os.getpid(), signal.SIGTERM)

    mp = pytest.MonkeyPatch()
    mp.setattr(logger.RunLogger, "log", log)
    try:
        lm.run(cfg, out)
    finally:
        mp.undo()


# -- mid-training ----------------------------------------------------------------------------------------------


def test_midtrain_from_pretrain_final(pretrained, env, tmp_path):
    from transformers import AutoConfig

    from rlready.models.rope import get_rope_theta

    out = tmp_path / "mid"
    # The paper's mid-training base (the tiny preset keeps pre-training's): saved with the model.
    cfg = make_cfg(
        env,
        "midtrain",
        **{"model.init": str(pretrained[0] / "final"), "train.max_steps": "4", "model.rope_theta": "1e6"},
    )
    cfg.data.seq_len = 64  # longer than pre-training's 32, like the stage default (2x)
    cfg.validate()
    assert cfg.train.warmup_steps == 0 and cfg.train.decay_fraction == 1.0
    lm.run(cfg, out)

    assert get_rope_theta(AutoConfig.from_pretrained(out / "final")) == 1e6
    records = read_metrics(out)
    lr, final_lr = cfg.train.lr, cfg.train.final_lr
    assert final_lr == pytest.approx(lr / 10)
    assert [r["lr"] for r in records] == pytest.approx([lr - (lr - final_lr) * s / 4 for s in (1, 2, 3, 4)])
    assert records[-1]["lr"] == pytest.approx(final_lr)
    assert [r["tokens"] for r in records] == [s * 4 * 64 for s in (1, 2, 3, 4)]


def test_midtrain_needs_init(env, tmp_path):
    with pytest.raises(config.ConfigError, match="--init"):
        lm.run(make_cfg(env, "midtrain"), tmp_path / "mid")
    assert not (tmp_path / "mid").exists()


# -- nothing is touched before every input is checked ------------------------------------------------------


def _bad_data(tmp_path: Path) -> dict[str, Path]:
    good = json.dumps({"text": "The cat sat on the mat. " * 40})
    files = {
        "bad JSON on line 2": ("data.jsonl", good + "\n{not json\n"),
        "a non-string text on line 2": ("data2.jsonl", good + "\n" + json.dumps({"text": 7}) + "\n"),
        "too little text": ("tiny.txt", "a b c\n"),
    }
    paths = {}
    for why, (name, text) in files.items():
        paths[why] = tmp_path / name
        paths[why].write_text(text)
    return paths


def test_overwrite_with_bad_data_leaves_a_finished_run_untouched(pretrained, env, tmp_path):

    out = tmp_path / "copy"
    shutil.copytree(pretrained[0], out)
    before = tree(out)
    for why, path in _bad_data(tmp_path).items():
        cfg = make_cfg(env, **{"data.path": str(path), "data.tokenizer": "", "train.max_steps": "2"})
        with pytest.raises(ValueError):
            lm.run(cfg, out, overwrite=True)
        assert tree(out) == before, why


def test_bad_data_leaves_no_trace_that_blocks_the_corrected_command(env, tmp_path):
    out = tmp_path / "run"
    for why, path in _bad_data(tmp_path).items():
        cfg = make_cfg(env, **{"data.path": str(path), "data.tokenizer": "", "train.max_steps": "2"})
        with pytest.raises(ValueError):
            lm.run(cfg, out)
        assert not out.exists(), why
    lm.run(make_cfg(env, **{"train.max_steps": "2"}), out)
    assert (out / "eval.json").is_file()


def test_a_bad_init_leaves_no_trace(pretrained, env, tmp_path):
    init = tmp_path / "damaged"

    shutil.copytree(pretrained[0] / "final", init)
    weights = init / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    out = tmp_path / "mid"
    with pytest.raises(ValueError, match="model.safetensors"):
        lm.run(make_cfg(env, "midtrain", **{"model.init": str(init)}), out)
    assert not out.exists()


def test_midtrain_notes_an_init_from_another_world(pretrained, env, tmp_path, capsys):
    from rlready.data.world import GENERATOR_VERSION

    old = tmp_path / "old-pt"
    shutil.copytree(pretrained[0] / "final", old / "final")
    saved = json.loads((pretrained[0] / "config.json").read_text())
    saved["data"]["world_version"] = GENERATOR_VERSION - 1
    (old / "config.json").write_text(json.dumps(saved))
    for init, noted in ((pretrained[0] / "final", False), (old / "final", True)):
        capsys.readouterr()
        out = tmp_path / f"mid-{noted}"
        lm.run(make_cfg(env, "midtrain", **{"model.init": str(init), "train.max_steps": "1"}), out)
        warned = (
            f"rlready: warning: --init {init} was trained on synthetic world version {GENERATOR_VERSION - 1}"
        )
        assert (warned in capsys.readouterr().err) is noted
        assert (out / "final").is_dir()  # noted, not refused


# -- attention within documents ------------------------------------------------------------------------------


def test_document_attention_trains_on_each_document_alone():
    from test_eval_lm import _each_document_alone

    from rlready.losses import TokenWeighting
    from rlready.models import build_config, build_model

    torch.manual_seed(0)
    model = build_model(build_config("tiny", vocab_size=64, num_hidden_layers=2))
    eos = 2
    batch = torch.randint(3, 64, (3, 25))
    batch[0, [4, 9, 10]] = eos
    batch[1, [0, 23]] = eos
    batch[2, 24] = eos  # the last target: the window holds one document
    total, n = _each_document_alone(model, batch, eos)
    loss, _ = lm.ShapedLMLoss(model, eos)(batch, TokenWeighting(), None, False)
    assert n == batch[:, 1:].numel()
    assert loss.item() == pytest.approx(total, rel=1e-5)
    across, _ = lm.ShapedLMLoss(model)(batch, TokenWeighting(), None, False)
    assert abs(across.item() - total) > 1e-2


def test_document_attention_is_mid_trainings_recipe(env):
    assert make_cfg(env, "midtrain").data.document_attention
    assert not make_cfg(env, "pretrain").data.document_attention


def test_document_attention_without_packed_masks_is_refused_before_out_is_touched(
    pretrained, env, tmp_path, monkeypatch
):
    monkeypatch.setattr(loader, "packed_sequence_masks", lambda: False)
    cfg = make_cfg(env, "midtrain", **{"model.init": str(pretrained[0] / "final")})
    with pytest.raises(config.ConfigError, match="data.document_attention needs transformers 4.54"):
        lm.run(cfg, tmp_path / "mid")
    assert not (tmp_path / "mid").exists()
    cfg = make_cfg(env, "midtrain", **{"model.init": str(pretrained[0] / "final"), "train.max_steps": "1"})
    cfg.data.document_attention = False
    lm.run(cfg, tmp_path / "mid")  # the stage runs with windows that attend across EOS
    assert (tmp_path / "mid" / "eval.json").is_file()
