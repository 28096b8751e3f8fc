"""The paper's claims (docs/method.md §8) as data, and the seed-paired statistics that decide them (§7).

A :class:`Claim` names the configurations it compares by name or by loss knobs, never by the names of the
default study: :func:`default_claims` writes the paper's claims for whatever configurations a study has,
from their knobs (the configuration whose knobs are all neutral is cross-entropy, the baseline), so a study
run with ``--configs`` gets its claims too. A configurations file may add its own (``claims:``, parsed by
:func:`parse_claims`). :func:`evaluate_claims` decides each on the runs of ``summary.json``:

- ``compare``: per seed ``s`` that both configurations have, ``d_s = m(config, s) - m(baseline, s)``,
  divided by ``m(scale, s)`` when ``scale`` names a configuration (a relative difference). The two runs of
  one seed share their initialisation and data order, so the seeds are paired, not independent samples.
- ``gain``: per run, the metric minus the same run's ``initial/<metric>`` (RL's starting model); over the
  seeds of ``config``, or over every run of the study when ``config`` is None (then ``n`` counts runs).

The mean of ``d`` and its two-sided 95% t interval, ``mean ± t_{0.975, n-1} * sd(d) / sqrt(n)``, give the
verdict (:func:`decide`): "reproduced", "not reproduced", "inconclusive" (also whenever ``n < 2``: no
interval) or "not measured" (a configuration or metric is missing; ``detail`` says which).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rlready.config import STAGES, ConfigError

DIRECTIONS = ("higher", "lower", "at_least", "within")
KINDS = ("compare", "gain")
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not measured")
# RL dynamics measured per run from rl/metrics.jsonl (rlready.report.summary.rl_dynamics), kept in each run's
# ``rl_dynamics`` entry of summary.json; a claim on stage "rl" names them like an eval.json key.
DYNAMICS = ("entropy_drop", "length_change", "length_shift")
KNOBS = ("beta", "lam_head", "lam_tail", "k")
SHAPING_KNOBS = ("beta", "lam_head", "lam_tail")  # all 0 is cross-entropy (docs/method.md §3)
FIELDS = ("text", "stage", "metric", "config", "baseline", "direction", "margin", "scale", "kind")
CONFIDENCE = 0.95
# Margins of the default claims: how close "at least" must come (absolute, on accuracies in [0, 1]), and the
# tolerance of "comparable perplexity" (relative to CE's).
AT_LEAST_MARGIN = 0.02
PPL_WITHIN = 0.10


@dataclass(frozen=True)
class Claim:
    """One claim, checked on one stage's evaluation of the study's runs.

    ``metric``: a key of the stage's ``eval.json`` (``/`` for nested ones, e.g. ``initial/avg@k``), one of
    :data:`DYNAMICS` on stage ``rl``, or several keys, averaged per run. ``config`` / ``baseline`` / ``scale``
    name a configuration: a string is its name; a mapping is loss knobs, matched against each configuration's
    (the shaping knobs left out count as 0, ``k`` only when given; ``{}`` is cross-entropy). ``config`` None:
    every configuration (``gain`` only).

    ``direction`` with ``margin`` (CI = the 95% interval of the mean paired difference):

    - ``higher``: reproduced when the CI lies entirely above ``margin``, not reproduced when entirely below.
    - ``lower``: reproduced when entirely below ``margin``, not reproduced when entirely above.
    - ``at_least`` (non-inferiority, ``margin > 0``): reproduced when the CI lies above ``-margin``, not
      reproduced when entirely below it.
    - ``within`` (equivalence, ``margin > 0``): reproduced when the CI lies inside ``[-margin, margin]``, not
      reproduced when it lies entirely outside.

    Anything in between is inconclusive.
    """

    text: str
    stage: str
    metric: str | tuple[str, ...]
    config: str | Mapping[str, Any] | None = None
    baseline: str | Mapping[str, Any] | None = None
    direction: str = "higher"
    margin: float = 0.0
    scale: str | Mapping[str, Any] | None = None
    kind: str = "compare"

    def __post_init__(self) -> None:
        metric = self.metric if isinstance(self.metric, str) else tuple(self.metric)
        object.__setattr__(self, "metric", metric)
        for name in ("config", "baseline", "scale"):
            ref = getattr(self, name)
            if isinstance(ref, Mapping):
                object.__setattr__(self, name, dict(ref))
        problem = self._problem()
        if problem:
            raise ValueError(f"claim {self.text!r}: {problem}")
        object.__setattr__(self, "margin", float(self.margin))

    def _problem(self) -> str | None:
        if self.stage not in STAGES:
            return f"stage must be one of {', '.join(STAGES)}, got {self.stage!r}"
        keys = self.keys
        if not keys or not all(isinstance(k, str) and k for k in keys):
            return "metric must be a key or a list of keys"
        if self.direction not in DIRECTIONS:
            return f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}"
        if self.kind not in KINDS:
            return f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}"
        if (
            isinstance(self.margin, bool)
            or not isinstance(self.margin, (int, float))
            or not math.isfinite(self.margin)
        ):
            return f"margin must be a finite number, got {self.margin!r}"
        if self.direction in ("at_least", "within") and self.margin <= 0:
            return f"{self.direction!r} needs a margin > 0, got {self.margin}"
        if self.kind == "compare" and (self.config is None or self.baseline is None):
            return "a comparison needs a config and a baseline"
        if self.kind == "gain" and (self.baseline is not None or self.scale is not None):
            return "a gain is measured against the run's own start: no baseline or scale"
        for name in ("config", "baseline", "scale"):
            ref = getattr(self, name)
            if ref is None or isinstance(ref, str):
                continue
            if not isinstance(ref, dict):
                return f"{name} must be a configuration name or a mapping of loss knobs"
            unknown = set(ref) - set(KNOBS)
            if unknown:
                return f"{name} has unknown knobs {sorted(unknown)} (knobs: {', '.join(KNOBS)})"
        return None

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.metric,) if isinstance(self.metric, str) else tuple(self.metric)

    def to_dict(self) -> dict[str, Any]:
        """The claim's fields as JSON holds them (a list of keys as a list)."""
        return {
            "text": self.text,
            "stage": self.stage,
            "metric": self.metric if isinstance(self.metric, str) else list(self.metric),
            "config": self.config,
            "baseline": self.baseline,
            "direction": self.direction,
            "margin": self.margin,
            "scale": self.scale,
            "kind": self.kind,
        }


def parse_claims(items: Any, source: str) -> list[Claim]:
    """The ``claims:`` list of a configurations file (``source`` names it in errors): mappings with the
    fields of :class:`Claim`; every problem is one ``ConfigError`` line."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise ConfigError(f"claims in {source!r} must be a list of mappings ({', '.join(FIELDS)})")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"]:
            raise ConfigError(f"claim {i} in {source!r} must be a mapping with a text")
        text = item["text"]
        unknown = set(item) - set(FIELDS)
        if unknown:
            raise ConfigError(f"claim {text!r}: unknown fields {sorted(unknown)}")
        missing = [name for name in ("stage", "metric") if name not in item]
        if missing:
            raise ConfigError(f"claim {text!r}: missing {', '.join(missing)}")
        fields = dict(item)
        if isinstance(fields["metric"], list):
            fields["metric"] = tuple(fields["metric"])
        if "margin" in fields:
            margin = _number(fields["margin"])
            if margin is None:
                raise ConfigError(f"claim {text!r}: margin must be a finite number")
            fields["margin"] = margin
        try:
            out.append(Claim(**fields))
        except (TypeError, ValueError) as err:
            raise ConfigError(str(err)) from None
    return out


def claim_from_entry(entry: Mapping[str, Any]) -> Claim:
    """The claim a ``summary.json`` entry records (its statistics and verdict left out)."""
    fields = {name: entry[name] for name in FIELDS if name in entry}
    if isinstance(fields.get("metric"), list):
        fields["metric"] = tuple(fields["metric"])
    return Claim(**fields)


# -- configurations and their knobs ----------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A knob or metric value as a finite float; None for schedules (text), booleans, NaN and missing."""
    if isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def study_configs(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The configurations of the runs, ``{name, beta, lam_head, lam_tail, k, until}``, in order of first run."""
    seen: dict[str, dict[str, Any]] = {}
    for run in runs:
        config = {"name": run["name"], **{k: run.get(k) for k in KNOBS}, "until": run.get("until", "rl")}
        seen.setdefault(run["name"], config)
    return list(seen.values())


def matches(config: Mapping[str, Any], knobs: Mapping[str, Any]) -> bool:
    """Whether a configuration has these knobs: each shaping knob equal to the given value or, when not
    given, 0; ``k`` only when given. Schedules (text) match only the same text."""
    for knob in SHAPING_KNOBS:
        want, have = knobs.get(knob, 0), config.get(knob)
        w, h = _number(want), _number(have)
        if w is None or h is None:
            if str(want) != str(have):
                return False
        elif not math.isclose(w, h, rel_tol=1e-9, abs_tol=1e-12):
            return False
    return "k" not in knobs or _number(config.get("k")) == _number(knobs["k"])


def resolve(ref: str | Mapping[str, Any], configs: Sequence[Mapping[str, Any]]) -> str | None:
    """The name of the configuration ``ref`` names (the first match of knobs), None if the study lacks it."""
    for config in configs:
        if (isinstance(ref, str) and config["name"] == ref) or (
            isinstance(ref, Mapping) and matches(config, ref)
        ):
            return config["name"]
    return None


def describe(ref: str | Mapping[str, Any] | None) -> str:
    """How a claim's reference reads in the report."""
    if ref is None:
        return "every configuration"
    if isinstance(ref, str):
        return repr(ref)
    return ", ".join(f"{k}={ref[k]}" for k in KNOBS if k in ref) or "all shaping knobs 0 (cross-entropy)"


# -- the default claims, from the knobs ------------------------------------------------------------------


def _arm(config: Mapping[str, Any], knob: str) -> float | None:
    """The constant value of ``knob`` when it is the configuration's only non-zero shaping knob (an arm that
    isolates one knob's effect against CE, as the paper's five configurations do); else None."""
    values = {k: _number(config.get(k)) for k in SHAPING_KNOBS}
    if any(v is None for v in values.values()):
        return None  # a schedule: no sign to read a claim from
    if any(values[k] != 0 for k in SHAPING_KNOBS if k != knob) or values[knob] == 0:
        return None
    return values[knob]


def _largest_pass(runs: Sequence[Mapping[str, Any]], stage: str) -> str:
    """``pass@N`` of the largest N any run's ``stage`` evaluation reports (``pass@k`` if none)."""
    ks = [
        int(m.group(1))
        for run in runs
        for key in (run.get(stage) or {})
        if (m := re.fullmatch(r"pass@(\d+)", key))
    ]
    return f"pass@{max(ks)}" if ks else "pass@k"


# The paper's claims against CE (docs/method.md §8), per arm: (arms, stage, metric, direction, margin,
# relative to CE's value, text). Arms: the configurations in which only that knob is non-zero, with that sign;
# "beta" is every beta arm. ``{pre_pass}`` / ``{rl_pass}``: the largest Pass@N the evaluations report.
# fmt: off
RULES: tuple[tuple[str, str, Any, str, float, bool, str], ...] = (
    ("beta<0", "pretrain", "entropy", "lower", 0.0, False, "{c}: lower held-out entropy than {ce} after pre-training"),
    ("beta>0", "pretrain", "entropy", "higher", 0.0, False, "{c}: higher held-out entropy than {ce} after pre-training"),
    ("beta", "pretrain", "ppl", "within", PPL_WITHIN, True, "{c}: perplexity within 10% of {ce}'s after pre-training"),
    ("lam_tail<0", "pretrain", "tail_mass", "lower", 0.0, False, "{c}: less tail mass than {ce} after pre-training"),
    ("lam_tail<0", "pretrain", "tail_mass", "lower", -0.2, True, "{c}: tail mass at most 0.8x {ce}'s after pre-training"),
    ("lam_head>0", "pretrain", "head_entropy", "higher", 0.0, False, "{c}: higher within-head entropy than {ce} after pre-training"),
    ("beta<0", "pretrain", ("knowledge", "reasoning"), "higher", 0.0, False, "{c}: pre-training average (knowledge, reasoning) above {ce}'s"),
    ("beta<0", "pretrain", "{pre_pass}", "higher", 0.0, False, "{c}: pre-training {pre_pass} above {ce}'s"),
    ("beta<0", "midtrain", "knowledge", "at_least", AT_LEAST_MARGIN, False, "{c}: mid-training knowledge at least {ce}'s"),
    ("beta<0", "midtrain", "reasoning", "higher", 0.0, False, "{c}: mid-training reasoning above {ce}'s"),
    ("beta<0", "rl", "avg@k", "higher", 0.0, False, "{c}: Avg@k after RL above {ce}'s"),
    ("beta<0", "rl", "avg@k_gain", "higher", 0.0, False, "{c}: RL gains more Avg@k than {ce}"),
    ("lam_tail<0", "rl", "avg@k", "higher", 0.0, False, "{c}: Avg@k after RL above {ce}'s"),
    ("lam_tail<0", "rl", "avg@k_gain", "higher", 0.0, False, "{c}: RL gains more Avg@k than {ce}"),
    ("lam_head>0", "rl", "{rl_pass}", "at_least", AT_LEAST_MARGIN, False, "{c}: keeps {rl_pass} after RL at least {ce}'s"),
    ("beta>0", "rl", "avg@k", "lower", 0.0, False, "{c}: Avg@k after RL below {ce}'s"),
    ("beta>0", "rl", "entropy_drop", "higher", 0.0, False, "{c}: larger relative drop of policy entropy early in RL than {ce}"),
    ("beta<0", "rl", "entropy_drop", "lower", 0.0, False, "{c}: smaller relative drop of policy entropy early in RL than {ce}"),
    ("beta>0", "rl", "length_change", "lower", 0.0, False, "{c}: relative change of response length in RL below {ce}'s (the paper: it falls)"),
    ("beta<0", "rl", "length_shift", "lower", 0.0, False, "{c}: response length more stable in RL than {ce}'s (smaller relative change either way)"),
    ("beta<0", "rl", "{rl_pass}", "higher", 0.0, False, "{c}: {rl_pass} after RL above {ce}'s (this project's reading of 'a better exploration space')"),
)
# fmt: on


def _stages_of(configs: Sequence[Mapping[str, Any]], name: str) -> tuple[str, ...]:
    """The stages configuration ``name`` runs: up to its ``until`` (absent: every stage, as study.json
    records configurations that run them all)."""
    until = next((c.get("until", "rl") for c in configs if c["name"] == name), "rl")
    return STAGES[: STAGES.index(until) + 1] if until in STAGES else STAGES


def default_claims(
    configs: Sequence[Mapping[str, Any]], runs: Sequence[Mapping[str, Any]] = ()
) -> list[Claim]:
    """The paper's claims (docs/method.md §8) for these configurations, from their knobs, in stage order.

    The baseline is the first configuration whose shaping knobs are all 0 (cross-entropy, "CE"). An *arm*
    of a knob is a configuration in which only that knob is non-zero, with a constant value: :data:`RULES`
    apply to arms, and held-out entropy must increase along the beta arms (each pair of neighbours in
    beta, CE included; the pairs with CE are already rules). Configurations that combine knobs or use
    schedules get only the claim that RL raises Avg@k. ``runs`` gives the largest Pass@N the evaluations
    report. A claim whose configurations the study lacks is not generated.
    """
    ce = next((c["name"] for c in configs if all(_number(c.get(k)) == 0 for k in SHAPING_KNOBS)), None)
    beta = sorted(((v, c["name"]) for c in configs if (v := _arm(c, "beta")) is not None), key=lambda t: t[0])
    arms = {
        "beta": [name for _, name in beta],
        "beta<0": [name for v, name in beta if v < 0],
        "beta>0": [name for v, name in beta if v > 0],
        "lam_tail<0": [c["name"] for c in configs if (_arm(c, "lam_tail") or 0) < 0],
        "lam_head>0": [c["name"] for c in configs if (_arm(c, "lam_head") or 0) > 0],
    }
    passes = {"pre_pass": _largest_pass(runs, "pretrain"), "rl_pass": _largest_pass(runs, "rl")}
    labels = {key: _label(value) for key, value in passes.items()}
    out: list[Claim] = []
    if ce is not None:
        for group, stage, metric, direction, margin, relative, text in RULES:
            if isinstance(metric, str):
                metric = metric.format(**passes)
            for c in arms[group]:
                if stage not in _stages_of(configs, c):
                    continue  # a pre-training-only arm has no mid-training or RL to claim anything of
                out.append(
                    Claim(
                        text.format(c=c, ce=ce, **labels),
                        stage,
                        metric,
                        c,
                        ce,
                        direction,
                        margin,
                        ce if relative else None,
                    )
                )
    ladder = sorted([*beta, *([(0.0, ce)] if ce is not None else [])], key=lambda t: t[0])
    for (v0, below), (v1, above) in zip(ladder, ladder[1:], strict=False):
        if v0 < v1 and ce not in (below, above):
            text = f"Held-out entropy increases with beta: {above} above {below} after pre-training"
            out.append(Claim(text, "pretrain", "entropy", above, below, "higher"))
    # The paper's two beta arms, whose entropies it reports as about 1.8 and 2.4 (docs/method.md §8, §10).
    low = next((name for v, name in beta if math.isclose(v, -0.25)), None)
    high = next((name for v, name in beta if math.isclose(v, 0.5)), None)
    if ce is not None and low is not None and high is not None:
        text = f"Entropy gap {high} - {low} is at least 10% of {ce}'s entropy after pre-training"
        out.append(Claim(text, "pretrain", "entropy", high, low, "higher", 0.10, ce))
    text = "RL raises Avg@k over the starting model (every configuration)"
    out.append(Claim(text, "rl", "avg@k", None, kind="gain"))
    unique: dict[tuple[Any, ...], Claim] = {}
    for claim in sorted(out, key=lambda claim: STAGES.index(claim.stage)):
        key = (
            claim.stage,
            claim.keys,
            claim.config,
            claim.baseline,
            claim.direction,
            claim.margin,
            claim.scale,
        )
        unique.setdefault(key, claim)
    return list(unique.values())


def _label(key: str) -> str:
    m = re.fullmatch(r"(avg|cons|pass)@(\w+)", key)
    return f"{m.group(1).capitalize()}@{m.group(2)}" if m else key


# -- statistics -------------------------------------------------------------------------------------------


def paired_interval(
    diffs: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[int, float | None, float | None, float | None]:
    """``(n, mean, low, high)`` of paired differences: the two-sided t interval of their mean,
    ``mean ± t_{(1+confidence)/2, n-1} * sd / sqrt(n)`` with the sample sd (ddof 1). With ``n < 2`` there is
    no spread to estimate and no interval (``low = high = None``)."""
    n = len(diffs)
    if n == 0:
        return 0, None, None, None
    mean = math.fsum(diffs) / n
    if n < 2:
        return 1, mean, None, None
    from scipy.stats import t

    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return n, mean, mean - half, mean + half


def decide(direction: str, margin: float, low: float | None, high: float | None) -> str:
    """The verdict of a claim from the interval of its mean difference (see :class:`Claim`)."""
    if low is None or high is None:
        return "inconclusive"
    if direction == "higher":
        yes, no = low > margin, high < margin
    elif direction == "lower":
        yes, no = high < margin, low > margin
    elif direction == "at_least":
        yes, no = low > -margin, high < -margin
    elif direction == "within":
        yes, no = -margin <= low and high <= margin, low > margin or high < -margin
    else:
        raise ValueError(f"unknown direction {direction!r}")
    return "reproduced" if yes else "not reproduced" if no else "inconclusive"


# -- evaluation -------------------------------------------------------------------------------------------


def _value(run: Mapping[str, Any], stage: str, key: str) -> float | None:
    if stage == "rl" and key in DYNAMICS:
        v: Any = (run.get("rl_dynamics") or {}).get(key)
    else:
        v = run.get(stage)
        for part in key.split("/"):
            v = v.get(part) if isinstance(v, Mapping) else None
    return _number(v)


def run_value(run: Mapping[str, Any], stage: str, keys: Sequence[str], prefix: str = "") -> float | None:
    """The run's value of the claim's metric (several keys averaged), None when any key is missing."""
    values = [_value(run, stage, prefix + key) for key in keys]
    if not values or any(v is None for v in values):
        return None
    return math.fsum(values) / len(values)  # type: ignore[arg-type]


def _by_seed(runs: Sequence[Mapping[str, Any]], name: str, claim: Claim) -> dict[Any, float]:
    out = {}
    for run in runs:
        if run["name"] == name and (v := run_value(run, claim.stage, claim.keys)) is not None:
            out[run.get("seed")] = v
    return out


def _metric_name(claim: Claim) -> str:
    return f"{claim.stage} {' and '.join(repr(k) for k in claim.keys)}"


def _missing_config(ref: Any) -> str:
    if isinstance(ref, str):
        return f"the study has no configuration named {ref!r}"
    return f"the study has no configuration with knobs {describe(ref)}"


def _compare_pairs(
    claim: Claim, runs: Sequence[Mapping[str, Any]], configs: Sequence[Mapping[str, Any]]
) -> tuple[list[tuple[float, float, float]], str | None]:
    """Per shared seed ``(config value, baseline value, scale value)``, or why nothing is measured."""
    refs = [claim.config, claim.baseline] + ([claim.scale] if claim.scale is not None else [])
    names = []
    for ref in refs:
        name = resolve(ref, configs)
        if name is None:
            return [], _missing_config(ref)
        names.append(name)
    values = [_by_seed(runs, name, claim) for name in names]
    for name, vs in zip(names, values, strict=True):
        if not vs:
            return [], f"no run of {name!r} has {_metric_name(claim)}"
    scale = values[2] if claim.scale is not None else None
    seeds = [s for s in values[0] if s in values[1] and (scale is None or s in scale)]
    if scale is not None:
        seeds = [s for s in seeds if scale[s] != 0]
    if not seeds:
        return [], f"no seed has {_metric_name(claim)} for {', '.join(repr(n) for n in names)}"
    return [(values[0][s], values[1][s], scale[s] if scale is not None else 1.0) for s in seeds], None


def _gain_pairs(
    claim: Claim, runs: Sequence[Mapping[str, Any]], configs: Sequence[Mapping[str, Any]]
) -> tuple[list[tuple[float, float, float]], str | None]:
    """Per run ``(value after, value of the starting model, 1)``, or why nothing is measured."""
    if claim.config is not None:
        name = resolve(claim.config, configs)
        if name is None:
            return [], _missing_config(claim.config)
        runs = [run for run in runs if run["name"] == name]
    pairs = []
    for run in runs:
        after = run_value(run, claim.stage, claim.keys)
        before = run_value(run, claim.stage, claim.keys, prefix="initial/")
        if after is not None and before is not None:
            pairs.append((after, before, 1.0))
    if not pairs:
        initial = " and ".join(repr("initial/" + k) for k in claim.keys)
        return [], f"no run has {_metric_name(claim)} and {initial}"
    return pairs, None


def evaluate(
    claim: Claim, runs: Sequence[Mapping[str, Any]], configs: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The claim's ``summary.json`` entry: its fields, ``n``, the mean paired difference and its 95%
    interval (``diff_*``; relative when ``scale`` is set), the means of both sides over the paired seeds
    (``config_mean``, ``baseline_mean``: for a gain, after and before RL), the verdict and, when not
    measured, a ``detail``."""
    configs = study_configs(runs) if configs is None else configs
    entry: dict[str, Any] = {
        **claim.to_dict(),
        "n": 0,
        "diff_mean": None,
        "diff_ci_low": None,
        "diff_ci_high": None,
        "config_mean": None,
        "baseline_mean": None,
        "verdict": "not measured",
    }
    pairs, detail = (_gain_pairs if claim.kind == "gain" else _compare_pairs)(claim, runs, configs)
    if detail is not None:
        entry["detail"] = detail
        return entry
    n, mean, low, high = paired_interval([(a - b) / s for a, b, s in pairs])
    entry.update(
        n=n,
        diff_mean=mean,
        diff_ci_low=low,
        diff_ci_high=high,
        config_mean=math.fsum(a for a, _, _ in pairs) / n,
        baseline_mean=math.fsum(b for _, b, _ in pairs) / n,
        verdict=decide(claim.direction, claim.margin, low, high),
    )
    return entry


def evaluate_claims(claims: Sequence[Claim], summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One entry per claim (:func:`evaluate`) on the runs of ``summary``."""
    runs = summary.get("runs", [])
    configs = study_configs(runs)
    return [evaluate(claim, runs, configs) for claim in claims]


def study_claims(summary: Mapping[str, Any], extra: Sequence[Claim] = ()) -> tuple[list[Claim], list[Claim]]:
    """The claims of a study: the default ones for its configurations, and its own (``extra``, or those a
    ``summary.json`` recorded as coming from the configurations file, ``origin: "file"``)."""
    runs = summary.get("runs", [])
    own = list(extra) or [claim_from_entry(e) for e in summary.get("claims", []) if e.get("origin") == "file"]
    return default_claims(study_configs(runs), runs), own


def claims_entries(summary: Mapping[str, Any], extra: Sequence[Claim] = ()) -> list[dict[str, Any]]:
    """``summary.json``'s ``claims``: every default claim of the study's configurations, then its own, each
    evaluated, with ``origin`` "rule" or "file"."""
    rules, own = study_claims(summary, extra)
    entries = [{**e, "origin": "rule"} for e in evaluate_claims(rules, summary)]
    return entries + [{**e, "origin": "file"} for e in evaluate_claims(own, summary)]
