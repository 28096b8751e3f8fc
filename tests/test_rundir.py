"""The run directory contract (rlready/train/rundir.py): what --overwrite may remove, the marker, the lock.

Every refusal must leave each pre-existing file byte-identical (content and modification time)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlready import config, recipes
from rlready.config import ConfigError
from rlready.study import StudyConfig, _claim_study
from rlready.train import rundir


def tree(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.lstat().st_mtime_ns, b"" if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def cfg(**extra: str) -> config.RunConfig:
    return recipes.resolve("pretrain", "tiny", overrides=list(extra.items()))


def project(root: Path) -> Path:
    """A user's directory that happens to hold a config.json (the old and only rule for 'a run')."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps(cfg().to_dict()))
    (root / "src").mkdir()
    (root / "src" / "main.py").write_text("print('mine')\n")
    (root / "data.csv").write_text("a,b\n1,2\n")
    return root


def a_run(root: Path, **extra: str) -> Path:
    """A real (set-up) rlready run with a checkpoint directory, so it is not replaced silently."""
    lock = rundir.claim(root, cfg(**extra), overwrite=False)
    lock.release()
    (root / "checkpoints").mkdir()
    (root / "metrics.jsonl").write_text("{}\n")
    return root


def test_overwrite_refuses_a_directory_without_the_marker(tmp_path):
    out = project(tmp_path / "proj")
    before = tree(out)
    for c in (cfg(), cfg(**{"loss.beta": "0.5"})):
        with pytest.raises(ConfigError, match="holds no rlready run"):
            rundir.check_run_dir(out, c, overwrite=True)
        with pytest.raises(ConfigError, match="holds no rlready run"):
            rundir.claim(out, c, overwrite=True)
    assert tree(out) == before


def test_overwrite_refuses_a_hugging_face_model_directory(tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "qwen3"}')
    (out / "model.safetensors").write_bytes(b"\0" * 64)
    (out / "README.md").write_text("# my model\n")
    before = tree(out)
    with pytest.raises(ConfigError, match="holds no rlready run"):
        rundir.claim(out, cfg(), overwrite=True)
    assert tree(out) == before


@pytest.mark.parametrize("where", ["cwd", "parent"])
def test_overwrite_never_removes_the_current_directory_or_its_parents(tmp_path, monkeypatch, where):
    run = a_run(tmp_path / "run")
    inner = run / "checkpoints"
    monkeypatch.chdir(run if where == "cwd" else inner)
    before = tree(tmp_path)
    target = Path(".") if where == "cwd" else Path("..")
    with pytest.raises(ConfigError, match="current directory or one of its parents"):
        rundir.claim(target, cfg(**{"loss.beta": "0.5"}), overwrite=True)
    assert tree(tmp_path) == before


def test_overwrite_never_removes_home_or_a_root(tmp_path, monkeypatch):
    home = a_run(tmp_path / "home")
    monkeypatch.setenv("HOME", str(home))
    before = tree(home)
    with pytest.raises(ConfigError, match="home directory"):
        rundir.check_replaceable(home, rundir.STAGE_KINDS, "a run")
    with pytest.raises(ConfigError, match="filesystem root"):
        rundir.check_replaceable(Path("/"), rundir.STAGE_KINDS, "a run")
    assert tree(home) == before


def test_overwrite_never_follows_a_symlink(tmp_path):
    run = a_run(tmp_path / "run")
    link = tmp_path / "link"
    link.symlink_to(run, target_is_directory=True)
    before = tree(run)
    with pytest.raises(ConfigError, match="symbolic link"):
        rundir.claim(link, cfg(**{"loss.beta": "0.5"}), overwrite=True)
    assert tree(run) == before


def test_overwrite_replaces_a_run_but_a_stage_never_replaces_a_study(tmp_path):
    run = a_run(tmp_path / "run")
    (run / "checkpoints" / "step_00000002").mkdir()
    lock = rundir.claim(run, cfg(**{"loss.beta": "0.5"}), overwrite=True)
    lock.release()
    assert sorted(rundir.entries(run)) == ["config.json", rundir.MARKER]
    assert json.loads((run / "config.json").read_text())["loss"]["beta"] == "0.5"
    assert rundir.read_marker(run)["kind"] == "pretrain"

    settings = {"preset": "tiny", "seeds": 1, "configs": [], "overrides": []}
    study = tmp_path / "study"
    _claim_study(study, settings, overwrite=False).release()
    (study / "runs").mkdir()
    before = tree(study)
    with pytest.raises(ConfigError, match="study run, not a pretrain run"):
        rundir.claim(study, cfg(), overwrite=True)
    assert tree(study) == before


def test_study_overwrite_refuses_a_foreign_study_json(tmp_path):
    out = tmp_path / "foreign"
    out.mkdir()
    (out / "study.json").write_text('{"another": "tool"}')
    (out / "results.csv").write_text("1\n")
    before = tree(out)
    settings = {"preset": "tiny", "seeds": 1, "configs": [StudyConfig("CE").to_dict()], "overrides": []}
    with pytest.raises(ConfigError, match="holds no rlready run"):
        _claim_study(out, settings, overwrite=True)
    assert tree(out) == before


def test_bad_study_json_is_named(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "study.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"s/study\.json: unreadable"):
        _claim_study(out, {"preset": "tiny"}, overwrite=False)


def test_a_run_set_up_but_never_trained_blocks_nothing(tmp_path):
    out = tmp_path / "run"
    rundir.claim(out, cfg(), overwrite=False).release()
    (out / "tokenizer").mkdir()
    assert rundir.check_run_dir(out, cfg(**{"loss.beta": "0.5"}), overwrite=False) == "replace"
    (out / "metrics.jsonl").write_text("{}\n")  # it trained: now only --overwrite replaces it
    with pytest.raises(ConfigError, match="different configuration"):
        rundir.check_run_dir(out, cfg(**{"loss.beta": "0.5"}), overwrite=False)


def test_a_run_without_the_marker_still_resumes(tmp_path):
    """Runs written before the marker existed resume; --overwrite does not remove them."""
    out = tmp_path / "old"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(cfg().to_dict()))
    (out / "metrics.jsonl").write_text("{}\n")
    assert rundir.check_run_dir(out, cfg(), overwrite=False) == "resume"
    rundir.claim(out, cfg(), overwrite=False).release()
    assert rundir.read_marker(out)["kind"] == "pretrain"


def test_lock_refuses_a_second_holder_and_is_released(tmp_path):
    out = a_run(tmp_path / "run")
    first = rundir.claim(out, cfg(), overwrite=False)
    with pytest.raises(ConfigError, match=f"in use by another rlready process \\(pid {os.getpid()}\\)"):
        rundir.claim(out, cfg(), overwrite=False)
    first.release()
    rundir.claim(out, cfg(), overwrite=False).release()


def test_lock_of_a_killed_process_is_not_stale(tmp_path):
    out = a_run(tmp_path / "run")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from rlready.train.rundir import RunLock; "
            "RunLock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            rundir.RunLock(out)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    time.sleep(0.1)
    rundir.RunLock(out).release()  # the kernel dropped the dead holder's lock


def test_lock_never_writes_through_a_symlink(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("VICTIM DATA\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / rundir.LOCK).symlink_to(victim)
    with pytest.raises(ConfigError, match="holds no rlready run"):  # not a lock: a file of someone else's
        rundir.claim(out, cfg(), overwrite=False)
    with pytest.raises(
        ConfigError, match="not a lock file rlready can use"
    ):  # and the lock itself refuses it
        rundir.RunLock(out)
    assert victim.read_text() == "VICTIM DATA\n"
    (out / rundir.LOCK).unlink()
    (out / rundir.LOCK).mkdir()
    with pytest.raises(ConfigError, match="not a lock file rlready can use"):
        rundir.RunLock(out)


@pytest.mark.parametrize(
    "marker",
    [
        '{"rlready": true, "kind": "pretrain"}',
        '{"rlready": 1.0, "kind": "rl"}',
        '{"rlready": 1, "kind": "x"}',
    ],
)
def test_only_a_well_formed_marker_counts(tmp_path, marker):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / rundir.MARKER).write_text(marker)
    (out / "thesis.txt").write_text("years of work\n")
    before = tree(out)
    with pytest.raises(ConfigError, match="holds no rlready run"):
        rundir.claim(out, cfg(), overwrite=True)
    assert tree(out) == before


def test_a_symlinked_marker_does_not_count(tmp_path):
    real = a_run(tmp_path / "real")
    out = tmp_path / "thesis"
    out.mkdir()
    (out / rundir.MARKER).symlink_to(real / rundir.MARKER)
    (out / "thesis.txt").write_text("years of work\n")
    before = tree(out)
    with pytest.raises(ConfigError, match="holds no rlready run"):
        rundir.claim(out, cfg(), overwrite=True)
    assert tree(out) == before
