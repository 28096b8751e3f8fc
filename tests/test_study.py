"""The study's orchestration pieces and report, on hand-made run directories (no training)."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from rlready.config import ConfigError, LossConfig
from rlready.recipes import resolve
from rlready.report.claims import claims_entries
from rlready.report.report import write_report
from rlready.report.summary import collect, read_metrics
from rlready.study import DEFAULT_CONFIGS, PAPER_CONFIGS, Job, StudyConfig, load_configs, stage_overrides


def _row(name: str, beta: str = "0.0", lam_head: str = "0.0", lam_tail: str = "0.0", **until: str) -> dict:
    return {"name": name, "beta": beta, "lam_head": lam_head, "lam_tail": lam_tail, "k": 10, **until}


def test_default_configurations_run_ce_and_beta_minus_quarter_through_rl_and_pretrain_the_others() -> None:
    # As study.json records them: a resumed study compares these with its saved settings.
    pre = {"until": "pretrain"}
    assert [c.to_dict() for c in DEFAULT_CONFIGS] == [
        _row("CE"),
        _row("beta=-0.25", "-0.25"),
        _row("beta=0.5", "0.5", **pre),
        _row("lam_tail=-1", lam_tail="-1", **pre),
        _row("lam_head=0.1", lam_head="0.1", **pre),
        _row("beta=-1", "-1", **pre),
    ]


def test_the_paper_set_runs_its_five_configurations_through_rl() -> None:
    paper = load_configs("paper")
    assert [c.name for c in paper if c.until == "rl"] == [
        "CE",
        "beta=-0.25",
        "beta=0.5",
        "lam_tail=-1",
        "lam_head=0.1",
    ]
    assert [c.name for c in paper if c.until == "pretrain"] == ["beta=-1", "beta=-0.5", "beta=1"]
    # The default set is a subset with the same knobs: only how far each configuration runs differs.
    assert [c.loss for c in paper if c.name in {d.name for d in DEFAULT_CONFIGS}] == [
        c.loss for c in DEFAULT_CONFIGS
    ]
    assert load_configs("default") == list(DEFAULT_CONFIGS)


def test_a_configuration_may_stop_after_pretraining(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("- {name: a, beta: -1, until: pretrain}\n- {name: b}\n")
    assert [c.stages for c in load_configs(f)] == [("pretrain",), ("pretrain", "midtrain", "rl")]
    f.write_text("- {name: a, until: sft}\n")
    with pytest.raises(ConfigError, match="until must be one of"):
        load_configs(f)


def test_load_configs_yaml_and_toml(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("- {name: a, beta: -0.5}\n- {name: b, lam_tail: 'linear:-0.1:0', k: 5, lam_head: 0}\n")
    configs = load_configs(y)
    assert configs == [
        StudyConfig("a", LossConfig(beta="-0.5")),
        StudyConfig("b", LossConfig(lam_head="0", lam_tail="linear:-0.1:0", k=5)),
    ]
    # Numbers are recorded as their str(), as study.json always held them.
    assert [c.to_dict() for c in configs] == [
        {"name": "a", "beta": "-0.5", "lam_head": "0.0", "lam_tail": "0.0", "k": 100},
        {"name": "b", "beta": "0.0", "lam_head": "0", "lam_tail": "linear:-0.1:0", "k": 5},
    ]
    t = tmp_path / "c.toml"
    t.write_text('[[configs]]\nname = "x"\nbeta = 0.5\n')
    assert load_configs(t) == [StudyConfig("x", LossConfig(beta="0.5"))]


def test_named_config_sets_and_a_file_of_that_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rlready.study import load_claims

    beta = load_configs("beta")
    assert [(c.name, c.loss.knobs()["beta"], c.until) for c in beta] == [
        ("CE", "0.0", "rl"),
        ("beta=-0.25", "-0.25", "rl"),
        ("beta=0.5", "0.5", "rl"),
    ]
    assert load_claims("beta") == [] and load_claims("paper") == []
    monkeypatch.chdir(tmp_path)  # a file called "beta" is read, not shadowed by the set
    (tmp_path / "beta").write_text("configs = [{name = 'mine', beta = 0.25}]\n")
    with pytest.raises(ConfigError):  # no YAML/TOML suffix: refused as the file it is
        load_configs("beta")


def test_load_configs_take_k_as_a_count_or_a_fraction(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("- {name: a, k: 0.05, lam_tail: -0.1}\n- {name: b, k: '7'}\n")
    configs = load_configs(f)
    assert [c.loss.k for c in configs] == [0.05, 7] and isinstance(configs[1].loss.k, int)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[]", "non-empty list"),
        ("- {beta: 1}", "with a name"),
        ("- {name: a, gamma: 1}", "unknown fields"),
        ("- {name: a}\n- {name: a}", "unique"),
        ("- {name: ../x}", "plain"),
        ("- {name: a, k: many}", "k must be an integer"),
        ("- {name: a, k: 1.0}", "configuration 'a': k .*ambiguous"),
        ("- {name: a, k: 0}", "configuration 'a': k must be"),
        ("- {name: a, k: 2.5}", "configuration 'a': k must be"),
        ("- {name: a, beta: 'linear:1'}", "configuration 'a': loss.beta: bad schedule"),
        ("- [unclosed", "malformed YAML"),
    ],
)
def test_load_configs_rejects_bad_files(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_configs(f)


def test_overrides_are_routed_to_their_stages() -> None:
    extra = ["--train.max_steps", "5", "--pretrain.train.lr", "0.1", "--loss.k", "3", "--rl.group_size=4"]
    assert stage_overrides(extra, "pretrain") == [
        ("train.max_steps", "5"),
        ("train.lr", "0.1"),
        ("loss.k", "3"),
    ]
    assert stage_overrides(extra, "midtrain") == [("train.max_steps", "5"), ("loss.k", "3")]
    assert stage_overrides(extra, "rl") == [("train.max_steps", "5"), ("rl.group_size", "4")]


def test_job_commands_chain_the_stages(tmp_path: Path) -> None:
    job = Job(StudyConfig("b", LossConfig(beta="-0.25", k=7)), 2, tmp_path / "b-s2")
    pre = job.command("pretrain", "tiny", ["--midtrain.train.max_steps", "3"])
    assert "--init" not in pre and pre[pre.index("--seed") + 1] == "2"
    knobs = ["--loss.beta", "-0.25", "--loss.lam_head", "0.0", "--loss.lam_tail", "0.0", "--loss.k", "7"]
    assert pre[pre.index("--loss.beta") :] == knobs
    mid = job.command("midtrain", "tiny", ["--midtrain.train.max_steps", "3"])
    assert mid[mid.index("--init") + 1] == str(tmp_path / "b-s2" / "pretrain" / "final")
    assert mid[-2:] == ["--train.max_steps", "3"]
    rl = job.command("rl", "tiny", [])
    assert (
        rl[rl.index("--init") + 1] == str(tmp_path / "b-s2" / "midtrain" / "final")
        and "--loss.beta" not in rl
    )


def test_a_launcher_starts_every_stage(tmp_path: Path) -> None:
    job = Job(StudyConfig("CE"), 0, tmp_path / "CE-s0")
    launcher = ["/bin/torchrun", "--nproc_per_node", "8"]
    for stage in ("pretrain", "midtrain", "rl"):
        assert job.command(stage, "tiny", [], launcher)[:6] == [*launcher, "-m", "rlready.cli", stage]
    assert job.command("pretrain", "tiny", [])[:4] == [sys.executable, "-m", "rlready.cli", "pretrain"]


@pytest.mark.parametrize(
    ("launcher", "message"),
    [("", "--launcher is empty"), ("no-such-launcher-xyz --nproc_per_node 2", "not an executable on PATH")],
)
def test_bad_launcher_is_refused_before_anything_is_written(
    tmp_path: Path, launcher: str, message: str
) -> None:
    from rlready.study import run_study

    with pytest.raises(ConfigError, match=message):
        run_study("tiny", tmp_path / "study", launcher=launcher)
    assert not (tmp_path / "study").exists()


def test_document_attention_without_packed_masks_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mid-training's recipe keeps documents apart; an older transformers stops the study before pre-training."""
    from rlready.data import loader
    from rlready.study import run_study

    monkeypatch.setattr(loader, "packed_sequence_masks", lambda: False)
    with pytest.raises(ConfigError, match="data.document_attention needs transformers 4.54"):
        run_study("tiny", tmp_path / "study")
    assert not (tmp_path / "study").exists()


def _fake_study(root: Path, seeds: int = 2) -> list[Job]:
    """Run directories as the stages write them, with entropies ordered as the paper reports."""
    jobs = []
    entropy = {"CE": 2.4, "beta=-0.25": 2.2, "beta=0.5": 2.6, "lam_tail=-1": 2.3, "lam_head=0.1": 2.5}
    entropy |= {"beta=-1": 1.8, "beta=-0.5": 2.0, "beta=1": 2.8}
    for c in PAPER_CONFIGS:
        for s in range(seeds):
            job = Job(c, s, root / "runs" / f"{c.name}-s{s}")
            e = entropy[c.name] + 0.01 * s
            for stage, ev in (
                ("pretrain", {"ppl": 10.0 + s * 0.1, "entropy": e, "knowledge": 0.1, "reasoning": 0.05}),
                ("midtrain", {"ppl": 3.0, "entropy": e / 2, "knowledge": 0.2, "reasoning": 0.1}),
                (
                    "rl",
                    {
                        "avg@k": 0.3,
                        "avg@k_gain": 0.2,
                        "avg@k_gain_se": 0.05 + 0.01 * s,
                        "cons@k": 0.3,
                        "pass@k": 0.5,
                        "pass@1": 0.3,
                        "pass@4": 0.5,
                        "initial": {"avg@k": 0.1, "cons@k": 0.1, "pass@k": 0.4, "pass@1": 0.1, "pass@4": 0.4},
                    },
                ),
            ):
                if stage not in c.stages:
                    continue
                d = job.root / stage
                d.mkdir(parents=True)
                (d / "eval.json").write_text(json.dumps(ev))
                recs = [
                    {
                        "step": i,
                        "tokens": 100 * i,
                        "ppl": 20 - i,
                        "entropy": e + 1 / i,
                        "accuracy": 0.1 * i,
                        "response_len_mean": 20.0,
                        "eval_avg@4": 0.1 * i,
                    }
                    for i in range(1, 5)
                ]
                (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n{torn")
            jobs.append(job)
    return jobs


def test_collect_claims_and_report(tmp_path: Path) -> None:
    jobs = _fake_study(tmp_path)
    (tmp_path / "study.json").write_text(json.dumps({"preset": "tiny"}))
    summary = collect(tmp_path, jobs)
    assert len(summary["runs"]) == 16
    run = summary["runs"][0]
    assert {"name", "beta", "lam_head", "lam_tail", "k", "seed", "pretrain", "midtrain", "rl"} <= set(run)
    assert run["rl"]["initial"]["avg@k"] == 0.1
    summary["wall_time_s"] = 60.0
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    table = {c["text"]: c["verdict"] for c in claims_entries(summary)}
    assert table["beta=-0.25: lower held-out entropy than CE after pre-training"] == "reproduced"
    assert table["beta=0.5: higher held-out entropy than CE after pre-training"] == "reproduced"
    assert table["beta=0.5: perplexity within 10% of CE's after pre-training"] == "reproduced"
    assert table["RL raises Avg@k over the starting model (every configuration)"] == "reproduced"
    assert run["rl_dynamics"]["entropy_drop"] == pytest.approx(
        ((1 + 1 / 2 + 1 / 3) / 3 - 1 / 4) / (2.4 + 11 / 18)
    )
    [path] = write_report([tmp_path])
    text = path.read_text()
    for fig in ("pretrain.png", "midtrain.png", "rl.png", "passk.png"):
        assert (tmp_path / "figures" / fig).stat().st_size > 1000 and fig in text
    assert "| beta=-0.25 |" in text and "2.205 ± 0.007" in text  # mean ± std over the two seeds
    assert "0.200 ± 0.000 |" in text and "paired SE" not in text  # gains over seeds, not one run's SE


def test_the_study_writes_its_claims_into_summary_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlready import study
    from rlready.report.claims import Claim

    _fake_study(tmp_path)  # evaluations and metrics of every stage; schedule is stubbed: nothing runs
    monkeypatch.setattr(study, "schedule", lambda jobs, parallel, run: None)
    own = Claim("lam_head=0.1 keeps Avg@k", "rl", "avg@k", "lam_head=0.1", "CE", "at_least", 0.05)
    study._run_jobs(tmp_path, list(PAPER_CONFIGS), 2, "tiny", [], 1, None, False, [own])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert all(
        (run["rl_dynamics"]["entropy_drop"] is not None) == (run.get("until", "rl") == "rl")
        for run in summary["runs"]
    )
    entries = {e["text"]: e for e in summary["claims"]}
    assert entries["lam_head=0.1 keeps Avg@k"]["origin"] == "file"
    assert entries["lam_head=0.1 keeps Avg@k"]["verdict"] == "reproduced"  # equal on both seeds
    # Pre-training-only arms get pre-training claims, none of the later stages.
    assert any(e["config"] == "beta=-1" for e in summary["claims"])
    assert all(e["stage"] == "pretrain" for e in summary["claims"] if e["config"] in ("beta=-1", "beta=1"))
    gap = entries["Entropy gap beta=0.5 - beta=-0.25 is at least 10% of CE's entropy after pre-training"]
    # Per seed (2.6 - 2.2) / (2.4 + 0.01 s): relative, against CE's entropy of the same seed.
    assert gap["n"] == 2 and gap["diff_mean"] == pytest.approx((0.4 / 2.4 + 0.4 / 2.41) / 2)
    assert gap["verdict"] == "reproduced"
    text = (tmp_path / "report.md").read_text()
    assert "| lam_head=0.1 keeps Avg@k | rl | avg@k |" in text and "| Entropy gap beta=0.5" in text


def test_report_compares_studies_and_rejects_non_studies(tmp_path: Path) -> None:
    for name in ("a", "b"):
        root = tmp_path / name
        jobs = _fake_study(root, seeds=1)
        (root / "summary.json").write_text(json.dumps(collect(root, jobs)))
    paths = write_report([tmp_path / "a", tmp_path / "b"])
    assert "+0.200 ± 0.050 (paired SE)" in (tmp_path / "a" / "report.md").read_text()  # one seed
    assert paths[-1] == tmp_path / "a" / "comparison.md" and "Comparison" in paths[-1].read_text()
    with pytest.raises(ValueError, match="no summary.json"):
        write_report([tmp_path])


def test_read_metrics_skips_a_torn_last_line(tmp_path: Path) -> None:
    f = tmp_path / "m.jsonl"
    f.write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert [r["step"] for r in read_metrics(f)] == [1, 2]
    assert read_metrics(tmp_path / "missing.jsonl") == []


def test_schedule_runs_stages_in_order_breadth_first_and_stops_on_error(tmp_path: Path) -> None:
    import threading
    import time

    from rlready.study import STAGE_ORDER, schedule

    jobs = [Job(StudyConfig(f"c{i}"), 0, tmp_path / f"c{i}") for i in range(5)]
    log: list[tuple[str, str]] = []
    active, peak, lock = [0], [0], threading.Lock()

    def run(job, stage, runnable):  # noqa: ANN001
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            log.append((job.config.name, stage))
        time.sleep(0.01)
        with lock:
            active[0] -= 1

    schedule(jobs, 2, run)
    assert len(log) == 15 and peak[0] == 2
    for j in jobs:
        assert [s for n, s in log if n == j.config.name] == list(STAGE_ORDER)
    assert [s for _, s in log[:5]] == ["pretrain"] * 5  # every pre-training before any later stage

    def failing(job, stage, runnable):  # noqa: ANN001
        if stage == "midtrain":
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        schedule(jobs, 2, failing)


def test_cores_are_those_the_process_may_use_and_split_between_stages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rlready import study

    monkeypatch.setattr(study.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(study.os, "cpu_count", lambda: 64)
    assert study.usable_cores() == 1  # e.g. under `taskset -c 3`
    monkeypatch.delattr(study.os, "sched_getaffinity", raising=False)
    assert study.usable_cores() == 64  # platforms without affinity (macOS)
    assert study.stage_threads(cores=8, parallel=2, runnable=5) == 4
    assert study.stage_threads(cores=8, parallel=2, runnable=1) == 8  # the last stage gets every core
    assert study.stage_threads(cores=1, parallel=2, runnable=2) == 1


def test_finished_stages_are_skipped_without_a_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlready import study

    job = Job(StudyConfig("CE"), 0, tmp_path / "CE-s0")
    _finished(job, "pretrain", resolve("pretrain", "tiny", overrides=[("seed", "0")]).to_dict())

    def no_process(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("a finished stage must not start a process")

    monkeypatch.setattr(study.subprocess, "Popen", no_process)
    reused = study.finished_stages([job], "tiny", [])  # checked and counted before any stage starts
    assert reused == {job.stage_dir("pretrain")}
    progress = study.Progress(total=3, reused=reused)
    study._run_stage(job, "pretrain", "tiny", [], 1, progress, False, study.Stages())
    assert progress.done == 1
    with pytest.raises(AssertionError, match="must not start"):
        study._run_stage(job, "midtrain", "tiny", [], 1, progress, False, study.Stages())


def test_a_resumed_study_refuses_a_stage_of_other_settings_before_running_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlready import study

    first, last = (Job(StudyConfig("CE"), s, tmp_path / "runs" / f"CE-s{s}") for s in (0, 1))
    _finished(first, "pretrain", resolve("pretrain", "tiny", overrides=[("seed", "0")]).to_dict())
    _finished(last, "pretrain", resolve("pretrain", "tiny", overrides=[("seed", "0")]).to_dict())
    with pytest.raises(ConfigError, match="CE s1: pretrain was finished with other settings"):
        study.finished_stages([first, last], "tiny", [])

    def nothing_runs(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("a refused study must not schedule any stage")

    monkeypatch.setattr(study, "schedule", nothing_runs)
    with pytest.raises(ConfigError, match="CE s1: pretrain was finished with other settings"):
        study._run_jobs(tmp_path, [StudyConfig("CE")], 2, "tiny", [], 1, None, False, [])


def test_a_begun_stage_of_other_settings_is_refused_before_running_anything(tmp_path: Path) -> None:
    from rlready import study

    job = Job(StudyConfig("CE"), 1, tmp_path / "runs" / "CE-s1")
    job.stage_dir("pretrain").mkdir(parents=True)  # checkpointed by an earlier run, not finished
    begun = resolve("pretrain", "tiny", overrides=[("seed", "1")]).to_dict()
    (job.stage_dir("pretrain") / "config.json").write_text(json.dumps(begun))
    assert study.finished_stages([job], "tiny", []) == set()  # the same settings: it resumes, not counted
    (job.stage_dir("pretrain") / "config.json").write_text(json.dumps({**begun, "seed": 0}))
    with pytest.raises(
        ConfigError, match="CE s1: pretrain was begun with other settings \\(seed: 0 there, 1 now\\)"
    ):
        study.finished_stages([job], "tiny", [])


def test_a_study_that_runs_no_stage_keeps_the_wall_time_it_recorded(tmp_path: Path) -> None:
    from rlready import study

    idle = study.Progress(total=2, reused={tmp_path / "a", tmp_path / "b"})
    assert study._timing(tmp_path, 0.2, True, idle) == {
        "wall_time_s": 0.2,
        "resumed": True,
        "stages_reused": 2,
    }
    (tmp_path / "summary.json").write_text(
        json.dumps({"wall_time_s": 72.0, "resumed": False, "stages_reused": 0})
    )
    assert study._timing(tmp_path, 0.2, True, idle) == {
        "wall_time_s": 72.0,
        "resumed": False,
        "stages_reused": 0,
    }
    ran = study.Progress(total=2, reused={tmp_path / "a"})
    ran.finished(30.0)
    assert study._timing(tmp_path, 31.0, True, ran) == {
        "wall_time_s": 31.0,
        "resumed": True,
        "stages_reused": 1,
    }
    (tmp_path / "summary.json").write_text("[]")  # unreadable as a summary: this run's figures
    assert study._timing(tmp_path, 0.2, True, idle)["wall_time_s"] == 0.2


def test_a_stage_finished_while_the_study_ran_is_checked_and_counted(tmp_path: Path) -> None:
    from rlready import study

    job = Job(StudyConfig("CE"), 1, tmp_path / "runs" / "CE-s1")
    progress = study.Progress(total=3, reused=study.finished_stages([job], "tiny", []))
    assert progress.done == 0
    _finished(job, "pretrain", resolve("pretrain", "tiny", overrides=[("seed", "0")]).to_dict())
    with pytest.raises(ConfigError, match="CE s1: pretrain was finished with other settings"):
        study._run_stage(job, "pretrain", "tiny", [], 1, progress, False, study.Stages())
    (job.stage_dir("pretrain") / "config.json").write_text(
        json.dumps(resolve("pretrain", "tiny", overrides=[("seed", "1")]).to_dict())
    )
    study._run_stage(job, "pretrain", "tiny", [], 1, progress, False, study.Stages())
    assert progress.done == 1 and progress.reused == {job.stage_dir("pretrain")} and not progress.durations


def _finished(job: Job, stage: str, config: dict) -> None:
    """A stage directory as a finished stage leaves it: its configuration, evaluation and export."""
    (job.stage_dir(stage) / "final").mkdir(parents=True)
    (job.stage_dir(stage) / "final" / "config.json").write_text("{}")
    (job.stage_dir(stage) / "eval.json").write_text("{}")
    (job.stage_dir(stage) / "config.json").write_text(json.dumps(config))


def test_a_stage_finished_with_other_settings_is_refused_not_reused(tmp_path: Path) -> None:
    from rlready import study

    job = Job(StudyConfig("beta", LossConfig(beta="-0.25")), 3, tmp_path / "runs" / "beta-s3")
    pre = resolve("pretrain", "tiny", overrides=[("seed", "3"), ("loss.beta", "-0.25")]).to_dict()
    _finished(job, "pretrain", {**pre, "log": {"progress": "bar"}})  # logging settings are free
    study._check_finished(job, "pretrain", "tiny", [])
    # A directory moved since: the previous stage's path differs, the settings do not.
    mid = resolve(
        "midtrain",
        "tiny",
        overrides=[("seed", "3"), ("loss.beta", "-0.25"), ("model.init", "/old/pre/final")],
    ).to_dict()
    _finished(job, "midtrain", mid)
    study._check_finished(job, "midtrain", "tiny", [])
    # An earlier recipe, an override given then but not now, another seed: refused, naming the difference.
    for key, value, field in (
        ("train", {**pre["train"], "batch_size": 16}, "train.batch_size: 16 there, 8 now"),
        ("data", {**pre["data"], "world_seed": 1}, "data.world_seed: 1 there, 0 now"),
        # A stage an earlier rlready ran on its own world's text, before config.json recorded the version.
        (
            "data",
            {k: v for k, v in pre["data"].items() if k != "world_version"},
            f"data.world_version: None there, {pre['data']['world_version']} now",
        ),
        ("seed", 4, "seed: 4 there, 3 now"),
    ):
        (job.stage_dir("pretrain") / "config.json").write_text(json.dumps({**pre, key: value}))
        with pytest.raises(
            ConfigError, match=re.escape(f"beta s3: pretrain was finished with other settings ({field})")
        ):
            study._check_finished(job, "pretrain", "tiny", [])
    (job.stage_dir("pretrain") / "config.json").unlink()
    with pytest.raises(ConfigError, match="config.json is missing or unreadable"):
        study._check_finished(job, "pretrain", "tiny", [])
    # The study's own overrides are part of what the stage must have run.
    (job.stage_dir("pretrain") / "config.json").write_text(json.dumps(pre))
    with pytest.raises(ConfigError, match="train.max_steps: 600 there, 5 now"):
        study._check_finished(job, "pretrain", "tiny", ["--train.max_steps", "5"])


def test_a_begun_stage_of_a_moved_study_resumes_where_its_previous_stage_is_now(tmp_path: Path) -> None:
    from rlready import study
    from rlready.train import rundir

    job = Job(StudyConfig("b", LossConfig(beta="-0.25")), 1, tmp_path / "new" / "runs" / "b-s1")
    over = job.overrides("midtrain", [])
    old_init = str(tmp_path / "old" / "runs" / "b-s1" / "pretrain" / "final")
    begun = resolve("midtrain", "tiny", overrides=[*over, ("model.init", old_init)]).to_dict()
    stage = job.stage_dir("midtrain")
    (stage / "checkpoints").mkdir(parents=True)
    (stage / "config.json").write_text(json.dumps(begun))
    # What the stage's own resume check (the real one, rundir.check_run_dir) sees when the study relaunches it.
    now = resolve("midtrain", "tiny", overrides=[*over, ("model.init", job.init("midtrain"))])
    with pytest.raises(ConfigError, match="model.init"):
        rundir.check_run_dir(stage, now, overwrite=False)
    assert study.finished_stages([job], "tiny", []) == set()
    assert rundir.check_run_dir(stage, now, overwrite=False) == "resume"
    recorded = json.loads((stage / "config.json").read_text())
    assert recorded == {**begun, "model": {**begun["model"], "init": job.init("midtrain")}}
    # A begun stage of other settings is refused and left as it was.
    (stage / "config.json").write_text(json.dumps({**begun, "seed": 2}))
    with pytest.raises(ConfigError, match="midtrain was begun with other settings"):
        study.finished_stages([job], "tiny", [])
    assert json.loads((stage / "config.json").read_text()) == {**begun, "seed": 2}


def test_summary_records_each_configuration_as_study_json_does(tmp_path: Path) -> None:
    jobs = [Job(c, 0, tmp_path / "runs" / f"{c.name}-s0") for c in DEFAULT_CONFIGS[:2]]
    entry = collect(tmp_path, jobs)["runs"][1]
    assert list(entry) == [
        *("name", "beta", "lam_head", "lam_tail", "k", "seed", "dir"),
        *("pretrain", "midtrain", "rl", "rl_dynamics"),
    ]
    assert {k: entry[k] for k in ("name", "beta", "k", "dir")} == {
        "name": "beta=-0.25",
        "beta": "-0.25",
        "k": 10,
        "dir": "runs/beta=-0.25-s0",
    }


def test_a_study_with_other_settings_is_refused_naming_the_first_difference(tmp_path: Path) -> None:
    from rlready import study

    def settings(configs: tuple[StudyConfig, ...], seeds: int = 8, extra: tuple[str, ...] = ()) -> dict:
        return {
            "preset": "tiny",
            "seeds": seeds,
            "configs": [c.to_dict() for c in configs],
            "overrides": list(extra),
        }

    saved = settings(study.BETA_CONFIGS)
    (tmp_path / "study.json").write_text(json.dumps(saved))
    assert study._study_state(tmp_path, saved, overwrite=False) == "resume"
    for now, why in (
        (settings(study.BETA_CONFIGS, seeds=5), "seeds: 8 there, 5 now"),
        (
            settings(study.BETA_CONFIGS, extra=("--train.lr", "1e-3")),
            "overrides: [] there, ['--train.lr', '1e-3'] now",
        ),
        (
            settings(DEFAULT_CONFIGS),
            "configurations ['CE', 'beta=-0.25', 'beta=0.5'] there, ['CE', 'beta=-0.25', ",
        ),
        (
            settings((*study.BETA_CONFIGS[:2], replace(study.BETA_CONFIGS[2], until="pretrain"))),
            "configuration 'beta=0.5', until: None there, 'pretrain' now",
        ),
    ):
        with pytest.raises(ConfigError, match=re.escape(f"holds a study with other settings ({why}")):
            study._study_state(tmp_path, now, overwrite=False)
    (tmp_path / "study.json").write_text("[]")
    with pytest.raises(ConfigError, match=re.escape("other settings (study.json holds no settings)")):
        study._study_state(tmp_path, saved, overwrite=False)
