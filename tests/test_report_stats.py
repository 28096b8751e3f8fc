"""The seed-paired statistics behind the report's verdicts (docs/method.md §7), against scipy and hand
computation, and the RL dynamics read from a run's metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from rlready.report.claims import Claim, decide, evaluate, paired_interval
from rlready.report.summary import read_metrics, rl_dynamics

T_975_DF2 = 4.302652729749464  # t quantile 0.975 with 2 degrees of freedom (statistical tables)


def _runs(values: dict[str, list[float | None]], stage: str = "pretrain", key: str = "entropy") -> list[dict]:
    """Summary entries: ``values[name][seed]`` is the run's ``stage``/``key`` (None: the run lacks it)."""
    runs = []
    for name, per_seed in values.items():
        for seed, v in enumerate(per_seed):
            runs.append(
                {
                    "name": name,
                    **{"beta": "0.0", "lam_head": "0.0", "lam_tail": "0.0", "k": 100},
                    "seed": seed,
                    stage: {} if v is None else {key: v},
                }
            )
    return runs


def test_paired_interval_is_scipys_paired_t_interval() -> None:
    a = [2.31, 2.47, 2.40, 2.52, 2.38]
    b = [2.29, 2.41, 2.41, 2.45, 2.30]
    n, mean, low, high = paired_interval([x - y for x, y in zip(a, b, strict=True)])
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert n == 5
    assert mean == pytest.approx(sum(a) / 5 - sum(b) / 5, abs=1e-12)
    assert (low, high) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))


def test_paired_interval_by_hand() -> None:
    # d = 1, 2, 3: mean 2, sample sd 1, so the half-width is t(0.975, 2) / sqrt(3).
    n, mean, low, high = paired_interval([1.0, 2.0, 3.0])
    half = T_975_DF2 / math.sqrt(3)
    assert (n, mean) == (3, 2.0)
    assert low == pytest.approx(2.0 - half, abs=1e-9) and high == pytest.approx(2.0 + half, abs=1e-9)
    assert paired_interval([0.5]) == (1, 0.5, None, None)  # one seed: no spread, no interval
    assert paired_interval([]) == (0, None, None, None)
    assert paired_interval([0.1, 0.1, 0.1]) == (3, pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.1))


def test_seeds_are_paired_not_independent() -> None:
    # Seeds differ a lot from one another, but every seed's difference is close to 1: paired, the interval
    # is [0.75, 1.25]; two independent samples would have a standard error of about 8 and be inconclusive.
    runs = _runs({"CE": [9.0, 19.1, 28.9], "x": [10.0, 20.0, 30.0]})
    entry = evaluate(Claim("x above CE", "pretrain", "entropy", "x", "CE", "higher"), runs)
    half = T_975_DF2 * 0.1 / math.sqrt(3)
    assert entry["n"] == 3 and entry["diff_mean"] == pytest.approx(1.0)
    assert entry["diff_ci_low"] == pytest.approx(1.0 - half) and entry["diff_ci_high"] == pytest.approx(
        1.0 + half
    )
    assert entry["verdict"] == "reproduced"
    assert entry["config_mean"] == pytest.approx(20.0) and entry["baseline_mean"] == pytest.approx(19.0)


def test_the_t_quantile_not_two_standard_errors_decides() -> None:
    # d = 3 - sqrt(3), 3, 3 + sqrt(3): mean 3, standard error 1. Beyond 2 SE (and 1.96), but inside
    # t(0.975, 2) = 4.30 SE of zero: the interval holds 0 and the claim is inconclusive.
    r3 = math.sqrt(3)
    runs = _runs({"CE": [0.0, 0.0, 0.0], "x": [3 - r3, 3.0, 3 + r3]})
    entry = evaluate(Claim("x above CE", "pretrain", "entropy", "x", "CE", "higher"), runs)
    assert entry["diff_ci_low"] == pytest.approx(3 - T_975_DF2) and entry["verdict"] == "inconclusive"
    # With the mean at 4.5 standard errors it is reproduced.
    runs = _runs({"CE": [0.0, 0.0, 0.0], "x": [4.5 - r3, 4.5, 4.5 + r3]})
    assert evaluate(Claim("x above CE", "pretrain", "entropy", "x", "CE", "higher"), runs)["verdict"] == (
        "reproduced"
    )


@pytest.mark.parametrize(
    "direction, margin, low, high, verdict",
    [
        ("higher", 0.0, 0.001, 0.2, "reproduced"),
        ("higher", 0.0, 0.0, 0.2, "inconclusive"),  # touching the bound is not above it
        ("higher", 0.0, -0.2, -0.001, "not reproduced"),
        ("higher", 0.1, 0.05, 0.3, "inconclusive"),  # above 0 but not above the margin
        ("higher", 0.1, 0.101, 0.3, "reproduced"),
        ("higher", 0.1, -0.1, 0.099, "not reproduced"),
        ("lower", 0.0, -0.2, -0.001, "reproduced"),
        ("lower", 0.0, -0.2, 0.0, "inconclusive"),
        ("lower", 0.0, 0.001, 0.2, "not reproduced"),
        ("lower", -0.2, -0.5, -0.201, "reproduced"),  # at most 0.8x the baseline
        ("lower", -0.2, -0.3, -0.1, "inconclusive"),
        ("lower", -0.2, -0.199, 0.1, "not reproduced"),
        ("at_least", 0.02, -0.019, 0.1, "reproduced"),  # non-inferior: a small shortfall is allowed
        ("at_least", 0.02, -0.02, 0.1, "inconclusive"),
        ("at_least", 0.02, -0.1, -0.021, "not reproduced"),
        ("within", 0.1, -0.1, 0.1, "reproduced"),  # the closed interval [-margin, margin]
        ("within", 0.1, -0.05, 0.05, "reproduced"),
        ("within", 0.1, 0.05, 0.15, "inconclusive"),
        ("within", 0.1, -0.15, 0.05, "inconclusive"),
        ("within", 0.1, 0.101, 0.3, "not reproduced"),
        ("within", 0.1, -0.3, -0.101, "not reproduced"),
        ("higher", 0.0, None, None, "inconclusive"),  # no interval (n < 2)
    ],
)
def test_decide_at_the_boundaries(
    direction: str, margin: float, low: float | None, high: float | None, verdict: str
) -> None:
    assert decide(direction, margin, low, high) == verdict


def test_at_least_is_non_inferiority_not_superiority() -> None:
    # x is 0.01 below CE on every seed, give or take: not higher, but within the 0.02 margin.
    runs = _runs({"CE": [0.50, 0.60, 0.70], "x": [0.49, 0.592, 0.688]}, "midtrain", "knowledge")
    at_least = Claim("x keeps knowledge", "midtrain", "knowledge", "x", "CE", "at_least", 0.02)
    higher = Claim("x knows more", "midtrain", "knowledge", "x", "CE", "higher")
    e = evaluate(at_least, runs)
    assert -0.02 < e["diff_ci_low"] < 0 < -e["diff_ci_high"] and e["verdict"] == "reproduced"
    assert evaluate(higher, runs)["verdict"] == "not reproduced"
    assert decide("at_least", 0.02, -0.03, 0.05) == "inconclusive"


def test_relative_differences_divide_each_seed_by_its_scale() -> None:
    # Per seed (x - y) / CE = 0.3 / 1 and 0.3 / 3: mean 0.2, not 0.3 / mean(CE) = 0.15.
    runs = _runs({"CE": [1.0, 3.0], "x": [2.3, 2.3], "y": [2.0, 2.0]})
    entry = evaluate(Claim("gap", "pretrain", "entropy", "x", "y", "higher", 0.10, "CE"), runs)
    sd = math.sqrt(((0.3 - 0.2) ** 2 + (0.1 - 0.2) ** 2) / 1)
    half = stats.t.ppf(0.975, 1) * sd / math.sqrt(2)
    assert entry["diff_mean"] == pytest.approx(0.2)
    assert (entry["diff_ci_low"], entry["diff_ci_high"]) == (
        pytest.approx(0.2 - half),
        pytest.approx(0.2 + half),
    )
    assert entry["verdict"] == "inconclusive" and entry["scale"] == "CE"
    within = Claim("ppl alike", "pretrain", "entropy", "y", "CE", "within", 0.10, "CE")
    assert (
        evaluate(within, _runs({"CE": [10.0, 12.0, 11.0], "y": [10.3, 12.5, 11.2]}))["verdict"]
        == "reproduced"
    )
    assert evaluate(within, _runs({"CE": [10.0, 12.0, 11.0], "y": [12.0, 14.5, 13.2]}))["verdict"] == (
        "not reproduced"
    )


def test_only_the_seeds_both_configurations_have_are_paired() -> None:
    runs = _runs({"CE": [1.0, 2.0, 3.0, None], "x": [None, 2.5, 3.7, 9.0]})
    entry = evaluate(Claim("x above CE", "pretrain", "entropy", "x", "CE", "higher"), runs)
    assert entry["n"] == 2 and entry["diff_mean"] == pytest.approx(0.6)
    one = evaluate(Claim("x above CE", "pretrain", "entropy", "x", "CE"), _runs({"CE": [1.0], "x": [2.0]}))
    assert (one["n"], one["diff_mean"], one["diff_ci_low"], one["diff_ci_high"]) == (1, 1.0, None, None)
    assert one["verdict"] == "inconclusive"


def test_gain_pairs_each_run_with_its_start() -> None:
    def rl(after: float, before: float) -> dict[str, Any]:
        return {"avg@k": after, "initial": {"avg@k": before}}

    runs = [
        {"name": name, "seed": s, "rl": rl(after, before)}
        for name, pairs in (("a", [(0.5, 0.4), (0.6, 0.45)]), ("b", [(0.3, 0.31), (0.7, 0.5)]))
        for s, (after, before) in enumerate(pairs)
    ]
    runs.append({"name": "c", "seed": 0, "rl": {}})  # an RL stage that never finished
    gains = [0.1, 0.15, -0.01, 0.2]
    every = evaluate(Claim("RL helps", "rl", "avg@k", None, kind="gain"), runs)
    ci = stats.ttest_1samp(gains, 0.0).confidence_interval(0.95)
    assert every["n"] == 4  # runs over every configuration and seed
    assert every["diff_mean"] == pytest.approx(sum(gains) / 4)
    assert (every["diff_ci_low"], every["diff_ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert every["config_mean"] == pytest.approx(0.525) and every["baseline_mean"] == pytest.approx(0.415)
    one = evaluate(Claim("RL helps b", "rl", "avg@k", "b", kind="gain"), runs)
    assert one["n"] == 2 and one["diff_mean"] == pytest.approx(0.095)


def test_what_is_not_measured_is_named() -> None:
    runs = _runs({"CE": [1.0, 2.0], "x": [None, None]})
    entry = evaluate(Claim("x above CE", "pretrain", "entropy", "x", "CE"), runs)
    assert entry["verdict"] == "not measured" and entry["detail"] == "no run of 'x' has pretrain 'entropy'"
    assert entry["n"] == 0 and entry["diff_mean"] is None and entry["diff_ci_low"] is None
    missing = evaluate(Claim("y above CE", "pretrain", "entropy", "y", "CE"), runs)
    assert missing["detail"] == "the study has no configuration named 'y'"
    by_knobs = evaluate(Claim("sharp above CE", "pretrain", "entropy", {"beta": -0.5}, {}), runs)
    assert by_knobs["detail"] == "the study has no configuration with knobs beta=-0.5"
    apart = _runs({"CE": [1.0, None], "x": [None, 2.0]})
    assert evaluate(Claim("x above CE", "pretrain", "entropy", "x", "CE"), apart)["detail"] == (
        "no seed has pretrain 'entropy' for 'x', 'CE'"
    )
    gain = evaluate(Claim("RL helps", "rl", "avg@k", None, kind="gain"), runs)
    assert gain["detail"] == "no run has rl 'avg@k' and 'initial/avg@k'"


def _metrics(path: Path, records: list[dict[str, Any]], torn: bool = True) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + ("\n{torn" if torn else "\n"))
    return path


def test_rl_dynamics_from_metrics_jsonl(tmp_path: Path) -> None:
    records = []
    for step in range(1, 21):
        rec: dict[str, Any] = {"step": step, "response_len_mean": 40.0 - step, "accuracy": 0.1}
        if step != 9:  # a step without informative groups trains nothing and logs no entropy
            rec["entropy"] = 2.0 - 0.1 * step
        records.append(rec)
    records[4]["entropy"] = "nan"  # non-finite values are written as strings
    dyn = rl_dynamics(read_metrics(_metrics(tmp_path / "metrics.jsonl", records)))
    # Entropy: first window steps 1-3 (mean 1.8); late window the last three logged up to step 10: 7, 8, 10.
    first, late = (1.9 + 1.8 + 1.7) / 3, (1.3 + 1.2 + 1.0) / 3
    assert dyn["entropy_drop"] == pytest.approx((first - late) / first)
    # Length: steps 1-3 (mean 38) and the last three, 18-20 (mean 21).
    assert dyn["length_change"] == pytest.approx((21.0 - 38.0) / 38.0)
    assert dyn["length_shift"] == pytest.approx(17.0 / 38.0)  # how far it moved, either way


def test_rl_dynamics_of_short_runs(tmp_path: Path) -> None:
    short = [{"step": s, "entropy": 1.0, "response_len_mean": 5.0} for s in (1, 2, 3)]
    none = {"entropy_drop": None, "length_change": None, "length_shift": None}
    assert rl_dynamics(short) == none  # no second window
    four = [*short, {"step": 4, "entropy": 0.5, "response_len_mean": 10.0}]
    assert rl_dynamics(four) == {"entropy_drop": 0.5, "length_change": 1.0, "length_shift": 1.0}
    shorter = [*short, {"step": 4, "entropy": 0.5, "response_len_mean": 2.5}]
    assert (
        rl_dynamics(shorter)["length_shift"] == pytest.approx(0.5) == -rl_dynamics(shorter)["length_change"]
    )
    assert rl_dynamics([]) == none
