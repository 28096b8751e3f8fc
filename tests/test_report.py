"""The report's claims as data: generated from the configurations' knobs, declared in a configurations file,
recorded in summary.json and shown in report.md with their paired intervals (docs/method.md §7-§8)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlready.config import ConfigError
from rlready.report.claims import (
    FIELDS,
    Claim,
    claims_entries,
    default_claims,
    evaluate,
    parse_claims,
    study_configs,
)
from rlready.report.report import write_report
from rlready.study import DEFAULT_CONFIGS, PAPER_CONFIGS, load_claims, load_configs

pytestmark = pytest.mark.filterwarnings("ignore:No artists with labels")  # no metrics.jsonl behind runs


def _config(name: str, beta: str = "0.0", lam_head: str = "0.0", lam_tail: str = "0.0", k: int = 100) -> dict:
    return {"name": name, "beta": beta, "lam_head": lam_head, "lam_tail": lam_tail, "k": k}


def _summary(configs: list[dict[str, Any]], seeds: int, stages: Any) -> dict[str, Any]:
    """A summary whose run (config, seed) has the stages ``stages(name, seed)`` gives."""
    runs = [
        {**c, "seed": s, "dir": f"runs/{c['name']}-s{s}", **stages(c["name"], s)}
        for c in configs
        for s in range(seeds)
    ]
    return {"runs": runs, "wall_time_s": 60.0}


def _texts(claims: list[Claim]) -> list[str]:
    return [c.text for c in claims]


def test_claims_come_from_the_knobs_whatever_the_names() -> None:
    configs = [
        _config("sharp", beta="-0.3"),
        _config("base"),
        _config("flat", beta="0.7"),
        _config("hot", beta="1.2"),
        _config("cut", lam_tail="-0.05", k=20),
        _config("wide", lam_head="0.2", k=20),
        _config("both", beta="-0.3", lam_tail="-0.1"),  # two knobs: no single-knob claim applies
        _config("sched", beta="linear:-0.25:0"),  # a schedule has no sign
    ]
    runs = [{**_config("base"), "rl": {"pass@1": 0.1, "pass@16": 0.4, "pass@4": 0.3}}]
    claims = default_claims(configs, runs)
    by_text = {c.text: c for c in claims}
    lower = by_text["sharp: lower held-out entropy than base after pre-training"]
    assert (lower.stage, lower.metric, lower.config, lower.baseline, lower.direction) == (
        "pretrain",
        "entropy",
        "sharp",
        "base",
        "lower",
    )
    assert by_text["hot: higher held-out entropy than base after pre-training"].direction == "higher"
    ppl = by_text["flat: perplexity within 10% of base's after pre-training"]
    assert (ppl.direction, ppl.margin, ppl.scale) == ("within", 0.10, "base")
    ladder = by_text["Held-out entropy increases with beta: hot above flat after pre-training"]
    assert (ladder.config, ladder.baseline, ladder.direction) == ("hot", "flat", "higher")
    tail = by_text["cut: tail mass at most 0.8x base's after pre-training"]
    assert (tail.metric, tail.direction, tail.margin, tail.scale) == ("tail_mass", "lower", -0.2, "base")
    assert by_text["cut: less tail mass than base after pre-training"].scale is None
    assert by_text["wide: higher within-head entropy than base after pre-training"].metric == "head_entropy"
    keeps = by_text["wide: keeps Pass@16 after RL at least base's"]  # the largest k reported
    assert (keeps.metric, keeps.direction, keeps.margin) == ("pass@16", "at_least", 0.02)
    assert by_text["sharp: mid-training knowledge at least base's"].direction == "at_least"
    assert by_text["sharp: RL gains more Avg@k than base"].metric == "avg@k_gain"
    assert by_text["cut: Avg@k after RL above base's"].direction == "higher"
    assert by_text["flat: Avg@k after RL below base's"].direction == "lower"
    assert (
        by_text["hot: larger relative drop of policy entropy early in RL than base"].metric == "entropy_drop"
    )
    assert (
        by_text["sharp: smaller relative drop of policy entropy early in RL than base"].direction == "lower"
    )
    falls = by_text["flat: relative change of response length in RL below base's (the paper: it falls)"]
    assert (falls.metric, falls.direction) == ("length_change", "lower")
    steady = by_text[
        "sharp: response length more stable in RL than base's (smaller relative change either way)"
    ]
    assert (steady.metric, steady.direction) == ("length_shift", "lower")
    explores = by_text[
        "sharp: Pass@16 after RL above base's (this project's reading of 'a better exploration space')"
    ]
    assert (explores.stage, explores.metric, explores.direction, explores.margin) == (
        "rl",
        "pass@16",
        "higher",
        0,
    )
    gain = by_text["RL raises Avg@k over the starting model (every configuration)"]
    assert (gain.kind, gain.config, gain.baseline) == ("gain", None, None)
    named = {c.config for c in claims} | {c.baseline for c in claims}
    assert "both" not in named and "sched" not in named
    assert not any("gap" in t for t in _texts(claims))  # the paper's beta = -0.25 and 0.5 are absent
    # The pairs of neighbours with CE are the claims against CE, not repeated.
    assert not any(t.startswith("Held-out entropy increases") and "base" in t for t in _texts(claims))
    assert [c.stage for c in claims] == sorted(
        (c.stage for c in claims), key=["pretrain", "midtrain", "rl"].index
    )


def test_without_a_neutral_configuration_only_the_ordering_and_the_gain_remain() -> None:
    claims = default_claims([_config("a", beta="-0.5"), _config("b", beta="0.5"), _config("c", beta="1")])
    assert _texts(claims) == [
        "Held-out entropy increases with beta: b above a after pre-training",
        "Held-out entropy increases with beta: c above b after pre-training",
        "RL raises Avg@k over the starting model (every configuration)",
    ]


def test_the_paper_configurations_get_the_papers_claims() -> None:
    claims = default_claims([c.to_dict() for c in PAPER_CONFIGS])
    texts = _texts(claims)
    assert "Entropy gap beta=0.5 - beta=-0.25 is at least 10% of CE's entropy after pre-training" in texts
    gap = claims[
        texts.index("Entropy gap beta=0.5 - beta=-0.25 is at least 10% of CE's entropy after pre-training")
    ]
    assert (gap.config, gap.baseline, gap.direction, gap.margin, gap.scale) == (
        "beta=0.5",
        "beta=-0.25",
        "higher",
        0.10,
        "CE",
    )
    assert "lam_head=0.1: keeps Pass@k after RL at least CE's" in texts  # no runs: the generic key
    assert len(texts) == len(set(texts))
    compared = {c.config for c in claims} | {c.baseline for c in claims}
    assert compared - {None} == {c.name for c in PAPER_CONFIGS}
    # The default set pre-trains the lam arms only: their claims after pre-training, none after RL.
    default = _texts(default_claims([c.to_dict() for c in DEFAULT_CONFIGS]))
    assert "lam_tail=-1: tail mass at most 0.8x CE's after pre-training" in default
    assert "lam_head=0.1: higher within-head entropy than CE after pre-training" in default
    assert not [t for t in default if t.startswith("lam_") and "after RL" in t]
    assert not [t for t in default if t.startswith("beta=0.5") and "RL" in t]
    # The RL claims the default study keeps: policy entropy, response length and Pass@k of beta=-0.25.
    assert "beta=-0.25: smaller relative drop of policy entropy early in RL than CE" in default
    assert (
        "beta=-0.25: response length more stable in RL than CE's (smaller relative change either way)"
        in default
    )
    assert (
        "beta=-0.25: Pass@k after RL above CE's (this project's reading of 'a better exploration space')"
        in default
    )


def test_a_claim_names_a_configuration_by_name_or_by_knobs() -> None:
    runs = [{**_config("base"), "seed": s, "pretrain": {"entropy": 2.0 + s}} for s in range(3)] + [
        {**_config("sharp", beta="-0.25", k=5), "seed": s, "pretrain": {"entropy": 1.5 + s * 1.01}}
        for s in range(3)
    ]
    by_knobs = Claim("sharp lower", "pretrain", "entropy", {"beta": -0.25}, {}, "lower")
    by_name = Claim("sharp lower", "pretrain", "entropy", "sharp", "base", "lower")
    assert (
        evaluate(by_knobs, runs)["diff_mean"] == evaluate(by_name, runs)["diff_mean"] == pytest.approx(-0.49)
    )
    assert evaluate(by_knobs, runs)["verdict"] == "reproduced"
    assert evaluate(Claim("k", "pretrain", "entropy", {"beta": "-0.25", "k": 7}, {}), runs)["verdict"] == (
        "not measured"
    )


def test_claims_in_a_configurations_file(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text(
        "configs:\n  - {name: base}\n  - {name: sharp, beta: -0.5}\n"
        "claims:\n"
        "  - {text: sharp keeps knowledge, stage: midtrain, metric: knowledge, config: sharp, baseline: base,\n"
        "     direction: at_least, margin: 0.05}\n"
        "  - {text: sharp by knobs, stage: pretrain, metric: [knowledge, reasoning], config: {beta: -0.5},\n"
        "     baseline: {}}\n"
        "  - {text: RL helps sharp, stage: rl, metric: avg@k, config: sharp, kind: gain}\n"
    )
    assert [c.name for c in load_configs(y)] == ["base", "sharp"]
    claims = load_claims(y)
    assert claims[0] == Claim(
        "sharp keeps knowledge", "midtrain", "knowledge", "sharp", "base", "at_least", 0.05
    )
    assert claims[1].metric == ("knowledge", "reasoning") and claims[1].config == {"beta": -0.5}
    assert claims[1].direction == "higher" and claims[1].margin == 0.0
    assert claims[2].kind == "gain" and claims[2].baseline is None
    t = tmp_path / "c.toml"
    t.write_text(
        '[[configs]]\nname = "x"\n[[claims]]\ntext = "t"\nstage = "rl"\nmetric = "avg@k"\nconfig = "x"\n'
        'baseline = "y"\ndirection = "lower"\n'
    )
    assert load_claims(t) == [Claim("t", "rl", "avg@k", "x", "y", "lower")]
    assert load_claims(tmp_path / "c.yaml") and not load_claims(_write(tmp_path, "- {name: a}\n"))


def _write(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    return f


def test_the_cli_passes_a_files_claims_to_the_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rlready import cli, study

    f = tmp_path / "c.yaml"
    f.write_text(
        "configs: [{name: base}, {name: sharp, beta: -0.5}]\n"
        "claims: [{text: t, stage: rl, metric: avg@k, config: sharp, baseline: base}]\n"
    )
    seen: dict[str, Any] = {}
    monkeypatch.setattr(study, "run_study", lambda preset, out, **kwargs: seen.update(kwargs))
    assert cli.main(["study", "--out", str(tmp_path / "s"), "--configs", str(f)]) == 0
    assert [c.name for c in seen["configs"]] == ["base", "sharp"]
    assert seen["claims"] == [Claim("t", "rl", "avg@k", "sharp", "base")]


@pytest.mark.parametrize(
    "claims, message",
    [
        ("{text: x}", r"claims in '.*bad.yaml' must be a list"),
        ("[{stage: rl}]", "claim 0 in '.*' must be a mapping with a text"),
        ("[{text: x, stage: rl, metric: a, config: a, baseline: b, colour: red}]", r"claim 'x': unknown fields \['colour'\]"),
        ("[{text: x, metric: a, config: a, baseline: b}]", "claim 'x': missing stage"),
        ("[{text: x, stage: rl, metric: a, config: a, baseline: b, direction: up}]", "claim 'x': direction must be one of"),
        ("[{text: x, stage: sft, metric: a, config: a, baseline: b}]", "claim 'x': stage must be one of"),
        ("[{text: x, stage: rl, metric: a, config: a, baseline: b, direction: at_least}]", "'at_least' needs a margin > 0"),
        ("[{text: x, stage: rl, metric: a, config: a, baseline: b, direction: within, margin: -1}]", "'within' needs a margin > 0"),
        ("[{text: x, stage: rl, metric: a, config: a, baseline: b, margin: lots}]", "claim 'x': margin must be a finite number"),
        ("[{text: x, stage: rl, metric: a, config: a}]", "claim 'x': a comparison needs a config and a baseline"),
        ("[{text: x, stage: rl, metric: a, baseline: b, kind: gain}]", "claim 'x': a gain is measured against"),
        ("[{text: x, stage: rl, metric: a, config: {gamma: 1}, baseline: b}]", r"config has unknown knobs \['gamma'\]"),
        ("[{text: x, stage: rl, metric: [], config: a, baseline: b}]", "metric must be a key or a list of keys"),
        ("[{text: x, stage: rl, metric: a, config: a, baseline: b, kind: best}]", "kind must be one of"),
    ],
)  # fmt: skip
def test_bad_claims_are_one_line_config_errors(tmp_path: Path, claims: str, message: str) -> None:
    f = _write(tmp_path, f"configs: [{{name: a}}]\nclaims: {claims}\n")
    with pytest.raises(ConfigError, match=message) as err:
        load_configs(f)  # refused when the file is loaded, before any run starts
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=message):
        load_claims(f)


def test_parse_claims_without_claims() -> None:
    assert parse_claims(None, "f.yaml") == []


def _user_study() -> dict[str, Any]:
    """Three seeds of a user's ``base`` (CE) and ``sharp`` (beta < 0), with one seed's RL missing."""
    configs = [_config("base"), _config("sharp", beta="-0.3")]
    entropy = {"base": [2.50, 2.62, 2.55], "sharp": [2.40, 2.51, 2.46]}
    avg = {"base": [0.40, 0.50, 0.45], "sharp": [0.42, 0.49, 0.47]}

    def stages(name: str, s: int) -> dict[str, Any]:
        return {
            "pretrain": {
                "entropy": entropy[name][s],
                "ppl": 10.0 + 0.1 * s,
                "knowledge": 0.3,
                "reasoning": 0.2,
            },
            "midtrain": {"knowledge": 0.5, "reasoning": 0.4},
            "rl": {} if (name, s) == ("sharp", 2) else {"avg@k": avg[name][s], "initial": {"avg@k": 0.3}},
            "rl_dynamics": {"entropy_drop": None, "length_change": None},
        }

    return _summary(configs, 3, stages)


def test_summary_claims_entries_hold_every_field(tmp_path: Path) -> None:
    own = Claim("sharp beats a missing arm", "rl", "avg@k", "sharp", "wide", "higher")
    entries = claims_entries(_user_study(), [own])
    json.dumps(entries, allow_nan=False)  # strict JSON: missing values are null, not NaN
    for e in entries:
        assert set(FIELDS) | {"n", "diff_mean", "diff_ci_low", "diff_ci_high", "verdict", "origin"} <= set(e)
        assert e["verdict"] in ("reproduced", "not reproduced", "inconclusive", "not measured")
        assert ("detail" in e) == (e["verdict"] == "not measured")
    by_text = {e["text"]: e for e in entries}
    lower = by_text["sharp: lower held-out entropy than base after pre-training"]
    assert (lower["n"], lower["verdict"], lower["origin"]) == (3, "reproduced", "rule")
    assert lower["diff_mean"] == pytest.approx(-0.1)
    assert by_text["sharp: Avg@k after RL above base's"]["n"] == 2  # seed 2 of sharp has no RL evaluation
    assert by_text["sharp: mid-training knowledge at least base's"]["verdict"] == "reproduced"  # equal
    assert (
        by_text["sharp: mid-training reasoning above base's"]["verdict"] == "inconclusive"
    )  # equal: CI [0, 0]
    assert by_text["sharp: smaller relative drop of policy entropy early in RL than base"]["detail"] == (
        "no run of 'sharp' has rl 'entropy_drop'"
    )
    assert by_text["sharp beats a missing arm"] == {
        **own.to_dict(),
        "n": 0,
        "diff_mean": None,
        "diff_ci_low": None,
        "diff_ci_high": None,
        "config_mean": None,
        "baseline_mean": None,
        "verdict": "not measured",
        "detail": "the study has no configuration named 'wide'",
        "origin": "file",
    }
    assert by_text["RL raises Avg@k over the starting model (every configuration)"]["n"] == 5  # runs


def test_report_shows_the_claims_and_keeps_the_files_own(tmp_path: Path) -> None:
    summary = _user_study()
    own = Claim("sharp | base knowledge", "midtrain", "knowledge", "sharp", "base", "at_least", 0.05)
    summary["claims"] = claims_entries(summary, [own])
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    [path] = write_report([tmp_path])
    text = path.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| sharp: lower held-out entropy"))
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    assert cells[1:] == [
        "pretrain",
        "entropy",
        "'sharp' vs 'base'",
        "2.457 vs 2.557",
        "3",
        cells[6],
        "CI < 0.000",
        "reproduced",
    ]
    assert cells[6].startswith("-0.100 [") and cells[6].endswith("]")
    # The file's claim survives regeneration (recorded with origin "file"), its "|" escaped.
    assert "| sharp \\| base knowledge | midtrain |" in text
    assert "CI > -0.050 (non-inferiority)" in text
    ppl = next(line for line in text.splitlines() if line.startswith("| sharp: perplexity within 10%"))
    assert "+0.0% [+0.0%, +0.0%]" in ppl and "relative to 'base': CI within ±10.0%" in ppl
    assert "not measured: no run of 'sharp' has rl 'entropy_drop'" in text
    assert "pairs the runs of two configurations that share a seed" in text
    assert "rest on one seed" not in text  # every claim has n >= 2 here
    assert "What the data allows" not in text  # no fixed-point analysis in this summary
    assert "Wall time: 1.0 min." in text


def test_a_resumed_studys_wall_time_says_it_is_its_last_runs(tmp_path: Path) -> None:
    for resumed, reused, line in (
        (
            True,
            52,
            "Wall time of its last run, which resumed an earlier one: 1.0 min (52 stages were finished before it).",
        ),
        (
            True,
            0,
            "Wall time of its last run, which resumed an earlier one: 1.0 min (0 stages were finished before it).",
        ),
        (False, 0, "Wall time: 1.0 min."),
    ):
        summary = {**_user_study(), "resumed": resumed, "stages_reused": reused}
        (tmp_path / "summary.json").write_text(json.dumps(summary))
        [path] = write_report([tmp_path])
        assert line in path.read_text()


def test_one_seed_gives_no_interval_and_the_report_says_so(tmp_path: Path) -> None:
    summary = _summary(
        [_config("CE"), _config("low", beta="-0.25")],
        1,
        lambda name, s: {"pretrain": {"entropy": 2.0 if name == "CE" else 1.9}},
    )
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    [path] = write_report([tmp_path])
    text = path.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| low: lower held-out entropy"))
    assert "| 1 | -0.100 (no interval) |" in row and row.endswith("| inconclusive |")
    assert "claim rests on one seed (n = 1)" in text and "`--seeds 3`" in text


def test_what_the_data_allows(tmp_path: Path) -> None:
    summary = _summary(
        [_config("CE"), _config("low", beta="-0.25")],
        2,
        lambda name, s: {
            "pretrain": {
                "entropy": 2.4 + 0.1 * s,
                "entropy_fork": 3.0,
                "tail_mass": 0.05 if name == "CE" else None,
            }
        },
    )
    summary["fixed_point"] = {
        "order": 3,
        "tokens": 600000,
        "oracle": {"entropy": 2.2, "fork_share": 0.4},
        "configs": {
            "CE": {
                "entropy": 2.25,
                "entropy_fork": 2.9,
                "entropy_determ": 0.1,
                "tail_mass": 0.04,
                "head_entropy": None,
            },
            "low": {"entropy": 2.2},
            "gone": {"entropy": 2.1},
        },
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    [path] = write_report([tmp_path])
    text = path.read_text()
    section = text[text.index("## What the data allows") :]
    assert "order-3 model of the training data (600000 tokens)" in section
    assert "entropy 2.200, fork_share 0.400" in section
    lines = section.splitlines()
    assert "| CE | 2.250 | 2.450 | 2.900 | 3.000 | 0.100 | — | 0.040 | 0.050 | — | — |" in lines
    assert "| low | 2.200 | 2.450 | — | 3.000 | — | — | — | — | — | — |" in lines
    assert "| gone | 2.100 | — | — | — | — | — | — | — | — | — |" in lines
    header = next(line for line in lines if line.startswith("| config"))
    assert "entropy: fixed point | measured" in header and "head entropy: fixed point" in header


def test_study_configs_keep_the_first_runs_order() -> None:
    runs = [{**_config(n), "seed": s} for s in range(2) for n in ("b", "a")]
    assert [c["name"] for c in study_configs(runs)] == ["b", "a"]
