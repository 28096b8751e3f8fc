"""The real ``rlready`` command on bad input: one short line on stderr, non-zero exit, nothing on disk changed.

Every case runs the CLI in a subprocess; the cases run concurrently (they mostly wait on imports) from one
module fixture, and each parametrized test checks one of them. The fixture trains a small run and starts
~30 processes (over a minute on 2 cores), so the cases are marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rlready import config, recipes
from rlready.train import lm

SMALL = [
    "--train.max_steps", "2", "--train.batch_size", "4", "--train.micro_batch", "2",
    "--data.seq_len", "32", "--data.world_chars", "60000", "--eval.tokens", "512",
    "--eval.knowledge_questions", "1", "--eval.reasoning_problems", "1", "--eval.samples", "1",
    "--eval.pass_k", "1", "--eval.max_new_tokens", "2", "--log.progress", "lines",
]  # fmt: skip


def tree(root: Path) -> dict[str, tuple[int, bytes]]:
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlready.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Inputs for the cases: a finished run (its ``final/`` is a valid --init), good and bad files."""
    from rlready.data import tokenizer
    from rlready.data import world as world_mod

    root = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "RLREADY_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    mp = pytest.MonkeyPatch()
    mp.setenv("RLREADY_CACHE", env["RLREADY_CACHE"])
    w = world_mod.World(world_mod.WorldConfig(seed=0))
    tok = tokenizer.train_tokenizer(w.documents("pretrain", n_chars=60000), 512)
    tokenizer.save_tokenizer(tok, root / "tok")
    base = [*SMALL, "--data.tokenizer", str(root / "tok")]
    overrides = config.parse_overrides(base)
    lm.run(recipes.resolve("pretrain", "tiny", overrides=overrides), root / "run")
    mp.undo()

    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("\n\n   \n")
    (root / "nofield.jsonl").write_text(json.dumps({"body": "some text"}) + "\n")
    (root / "data.csv").write_text("text\nhello\n")
    (root / "locked.txt").write_text("hello world\n")
    (root / "locked.txt").chmod(0)
    (root / "notamodel").mkdir()
    (root / "notamodel" / "readme.txt").write_text("hello")
    for name, damage in (("truncated", "truncate"), ("corrupted", "header")):
        shutil.copytree(root / "run" / "final", root / name)
        f = root / name / "model.safetensors"
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\xff" * 64 + data[64:])
    big = tokenizer.load_tokenizer(root / "tok")
    big.add_tokens([f"<extra_{i}>" for i in range(2000)])
    big.save_pretrained(root / "bigtok")
    (root / "bad.yaml").write_text("train: [1, 2\n")
    (root / "bad.toml").write_text("[train\nlr = 1\n")
    (root / "field.yaml").write_text("train:\n  nope: 1\n")
    return root, env, base


def cases(root: Path) -> dict[str, tuple[list[str], str]]:
    """id -> (arguments after the subcommand, text the error line must contain)."""
    r = str(root)
    return {
        "k0": (["--loss.k", "0"], "loss.k"),
        "beta-nan": (["--loss.beta", "nan"], "loss.beta"),
        "beta-inf": (["--loss.beta", "inf"], "loss.beta"),
        "steps-negative": (["--train.max_steps", "-1"], "train.max_steps"),
        "lr-abc": (["--train.lr", "abc"], "train.lr"),
        "unknown-field": (["--train.nope", "1"], "train.nope"),
        "unknown-section": (["--nope.x", "1"], "nope.x"),
        "unknown-preset": (["--preset", "huge"], "huge"),
        "malformed-yaml": (["--config", f"{r}/bad.yaml"], "malformed YAML"),
        "malformed-toml": (["--config", f"{r}/bad.toml"], "malformed TOML"),
        "yaml-unknown-field": (["--config", f"{r}/field.yaml"], "train.nope"),
        "missing-config": (["--config", f"{r}/none.yaml"], "none.yaml"),
        "data-missing": (["--data.path", f"{r}/none.txt"], "none.txt"),
        "data-empty": (["--data.path", f"{r}/empty.txt"], "empty.txt"),
        "data-blank": (["--data.path", f"{r}/blank.txt"], "no documents"),
        "data-no-text-field": (["--data.path", f"{r}/nofield.jsonl"], "'text'"),
        "data-unsupported": (["--data.path", f"{r}/data.csv"], ".csv"),
        "data-unreadable": (["--data.path", f"{r}/locked.txt"], "locked.txt"),
        "init-missing": (["--init", f"{r}/nomodel"], "nomodel"),
        "init-not-a-model": (["--init", f"{r}/notamodel"], "notamodel"),
        "init-truncated": (["--init", f"{r}/truncated"], "truncated"),
        "init-corrupted": (["--init", f"{r}/corrupted"], "corrupted"),
        "tokenizer-too-big": (
            ["--init", f"{r}/run/final", "--data.tokenizer", f"{r}/bigtok"],
            "embedding",
        ),
        "tokenizer-missing": (["--data.tokenizer", f"{r}/notok"], "notok"),
        "out-different-config": (["--loss.beta", "-0.25"], "loss.beta"),
    }


@pytest.fixture(scope="module")
def results(world):
    root, env, base = world
    table = cases(root)
    jobs = {}
    for case, (args, _) in table.items():
        out = root / "run" if case == "out-different-config" else root / "outs" / case
        if case != "out-different-config":
            out.mkdir(parents=True)
            (out / "keep.txt").write_text("existing file")  # a --out that is not empty and not a run
            out = out / "sub"  # the run directory itself must not be created either
        inputs = [Path(a) for a in args if a.startswith(str(root))]
        watched = [root / "run"] if case == "out-different-config" else [out.parent, *inputs, root / "run"]
        jobs[case] = (["pretrain", "--out", str(out), *base, *args], watched)
    jobs["debug"] = (["--debug", "pretrain", "--out", str(root / "outs" / "debug"), "--loss.k", "0"], [])
    shutil.copytree(root / "run", root / "overwritten")
    jobs["overwrite"] = (
        ["pretrain", "--out", str(root / "overwritten"), *base, "--loss.beta", "-0.25", "--overwrite"],
        [],
    )
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {}
        for case, (argv, watched) in jobs.items():
            before = {p: tree(p) for p in watched}
            futures[case] = (pool.submit(run_cli, argv, env), before)
        return {case: (f.result(), before) for case, (f, before) in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(cases(Path("/r"))))
def test_bad_input_is_one_line_and_changes_nothing(world, results, case):
    root = world[0]
    if case == "data-unreadable" and os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file")
    proc, before = results[case]
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("rlready: error: "), lines[0]
    assert cases(root)[case][1] in lines[0]
    assert len(lines[0]) < 400 and "Traceback" not in proc.stderr
    for path, snapshot in before.items():
        assert tree(path) == snapshot, path


@pytest.mark.slow
def test_debug_shows_the_traceback(results):
    proc, _ = results["debug"]
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "loss.k" in proc.stderr


@pytest.mark.slow
def test_overwrite_replaces_a_run_of_another_configuration(world, results):
    proc, _ = results["overwrite"]
    out = world[0] / "overwritten"
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["loss"]["beta"] == "-0.25"
    assert (out / "eval.json").is_file() and "pretrain done" in proc.stdout


def test_help():
    proc = subprocess.run([sys.executable, "-m", "rlready.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "pretrain" in proc.stdout and "midtrain" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "rlready.cli", "pretrain", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--section.field" in proc.stdout
