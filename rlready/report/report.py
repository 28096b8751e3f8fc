"""``report.md`` and its figures, mirroring the paper's at this scale (docs/method.md §8).

Figures: perplexity and entropy vs tokens in pre-training; knowledge and reasoning after mid-training; RL
accuracy, policy entropy and response length vs step; Pass@k vs k after RL. Tables per stage. Then each claim
of the paper next to the measured outcome: reproduced, not reproduced, or inconclusive given the spread
across seeds (mean +- std; with one seed no spread exists and the verdict says so).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlready.report.claims import PAPER_CLAIMS, Claim
from rlready.report.summary import read_metrics

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]
    if not vals:
        return float("nan"), float("nan"), 0
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, float("nan"), 1
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)), len(vals)


def _fmt(values: list[float], digits: int = 3) -> str:
    m, s, n = _mean_std(values)
    if n == 0:
        return "–"
    return f"{m:.{digits}f}" if n == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"


def _by_config(summary: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in summary["runs"]:
        groups[run["name"]].append(run)
    return groups


def _values(runs: list[dict[str, Any]], stage: str, key: str) -> list[float]:
    out = []
    for r in runs:
        v = r.get(stage, {})
        for part in key.split("/"):
            v = v.get(part, {}) if isinstance(v, dict) else {}
        if isinstance(v, (int, float)):
            out.append(float(v))
    return out


# -- figures ----------------------------------------------------------------------------------------------


def _plot_curves(ax, study: Path, groups, stage: str, x: str, y: str, title: str, smooth: int = 1) -> bool:
    drawn = False
    for i, (name, runs) in enumerate(groups.items()):
        for j, run in enumerate(runs):
            recs = [
                r for r in read_metrics(study / run["dir"] / stage / "metrics.jsonl") if y in r and x in r
            ]
            if not recs:
                continue
            xs = [r[x] for r in recs]
            ys = [r[y] for r in recs]
            if smooth > 1:
                ys = [
                    sum(ys[max(0, t - smooth + 1) : t + 1]) / len(ys[max(0, t - smooth + 1) : t + 1])
                    for t in range(len(ys))
                ]
            ax.plot(
                xs,
                ys,
                color=PALETTE[i % len(PALETTE)],
                alpha=0.9 if j == 0 else 0.5,
                label=name if j == 0 else None,
            )
            drawn = True
    ax.set_title(title)
    ax.set_xlabel(x)
    ax.grid(alpha=0.3)
    return drawn


def _first_key(study: Path, groups, stage: str, pattern: str) -> str | None:
    for runs in groups.values():
        for run in runs:
            for rec in read_metrics(study / run["dir"] / stage / "metrics.jsonl"):
                for key in rec:
                    if re.fullmatch(pattern, key):
                        return key
    return None


def make_figures(study: Path, summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Draw the report's figures into ``study/figures``; returns (file name, description) for each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = _by_config(summary)
    fig_dir = study / "figures"
    fig_dir.mkdir(exist_ok=True)
    made = []
    for figure in (_pretrain_figure, _midtrain_figure, _rl_figure, _passk_figure):
        name, description, fig = figure(plt, study, groups)
        fig.tight_layout()
        fig.savefig(fig_dir / name, dpi=110)
        plt.close(fig)
        made.append((name, description))
    return made


def _pretrain_figure(plt: Any, study: Path, groups: dict[str, list[dict[str, Any]]]) -> tuple[str, str, Any]:
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    _plot_curves(
        axes[0], study, groups, "pretrain", "tokens", "ppl", "pre-training perplexity (train batches)"
    )
    axes[0].set_yscale("log")
    _plot_curves(
        axes[1], study, groups, "pretrain", "tokens", "entropy", "pre-training mean token entropy (nats)"
    )
    axes[1].legend(fontsize=8)
    # The end point on held-out text, where differences between configurations are visible.
    heights = _config_bars(axes[2], groups, "pretrain", "entropy", width=0.8)
    finite = [h for h in heights if math.isfinite(h)]
    if finite:
        pad = max(0.02, (max(finite) - min(finite)) * 0.6)
        axes[2].set_ylim(min(finite) - pad, max(finite) + pad)
    _config_axis(axes[2], groups, "held-out entropy after pre-training")
    return "pretrain.png", "Pre-training: perplexity and entropy vs tokens, held-out entropy at the end", fig


def _midtrain_figure(plt: Any, study: Path, groups: dict[str, list[dict[str, Any]]]) -> tuple[str, str, Any]:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, title in (
        (axes[0], "knowledge", "knowledge (fact recall)"),
        (axes[1], "reasoning", "reasoning (greedy accuracy)"),
    ):
        for stage, offset, hatch in (("pretrain", -0.2, "//"), ("midtrain", 0.2, "")):
            _config_bars(
                ax, groups, stage, key, offset=offset, hatch=hatch, alpha=0.8, label=f"after {stage}"
            )
        _config_axis(ax, groups, title)
    axes[0].legend(fontsize=8)
    return "midtrain.png", "Knowledge and reasoning after pre-training (hatched) and mid-training", fig


def _rl_figure(plt: Any, study: Path, groups: dict[str, list[dict[str, Any]]]) -> tuple[str, str, Any]:
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    eval_key = _first_key(study, groups, "rl", r"eval_avg@\d+")
    if eval_key:  # periodic held-out evaluation along RL
        _plot_curves(axes[0, 0], study, groups, "rl", "step", eval_key, "RL held-out " + eval_key[5:])
    else:  # held-out Avg@k of the starting model and after RL
        for j, (key, label) in enumerate((("initial/avg@k", "before RL"), ("avg@k", "after RL"))):
            _config_bars(
                axes[0, 0],
                groups,
                "rl",
                key,
                offset=(j - 0.5) * 0.4,
                alpha=0.5 + 0.4 * j,
                hatch="//" if j == 0 else "",
                label=label,
            )
        _config_axis(axes[0, 0], groups, "held-out Avg@k before (hatched) and after RL")
    for ax, key, title in (
        (axes[0, 1], "accuracy", "RL training accuracy (rollouts)"),
        (axes[1, 0], "entropy", "RL policy entropy"),
        (axes[1, 1], "response_len_mean", "RL response length (tokens)"),
    ):
        _plot_curves(ax, study, groups, "rl", "step", key, title, smooth=5)
    axes[0, 1].legend(fontsize=8)
    return "rl.png", "RL: accuracy, policy entropy and response length vs step", fig


def _passk_figure(plt: Any, study: Path, groups: dict[str, list[dict[str, Any]]]) -> tuple[str, str, Any]:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, (name, runs) in enumerate(groups.items()):
        for stage, style in (("rl", "-"), ("rl/initial", ":")):
            ks = sorted(
                {
                    int(m.group(1))
                    for r in runs
                    for key in _stage_dict(r, stage)
                    if (m := re.fullmatch(r"pass@(\d+)", key))
                }
            )
            if not ks:
                continue
            ys = [
                _mean_std(_values(runs, "rl", f"{'initial/' if stage != 'rl' else ''}pass@{k}"))[0]
                for k in ks
            ]
            ax.plot(
                ks,
                ys,
                style,
                marker="o",
                color=PALETTE[i % len(PALETTE)],
                label=f"{name}" + (" (before RL)" if stage != "rl" else ""),
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_title("Pass@k after RL (dotted: before RL)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return "passk.png", "Pass@k vs k, after RL (solid) and before (dotted)", fig


def _config_bars(
    ax: Any,
    groups: dict[str, list[dict[str, Any]]],
    stage: str,
    key: str,
    *,
    offset: float = 0.0,
    width: float = 0.4,
    **bar_kwargs: Any,
) -> list[float]:
    """One bar per configuration (its colour): the mean of ``stage``/``key`` over seeds, the std as error
    bar. Returns the heights."""
    stats = [_mean_std(_values(runs, stage, key)) for runs in groups.values()]
    ax.bar(
        [i + offset for i in range(len(stats))],
        [st[0] for st in stats],
        width=width,
        yerr=[0 if math.isnan(st[1]) else st[1] for st in stats],
        color=[PALETTE[i % len(PALETTE)] for i in range(len(stats))],
        **bar_kwargs,
    )
    return [st[0] for st in stats]


def _config_axis(ax: Any, groups: dict[str, list[dict[str, Any]]], title: str) -> None:
    names = list(groups)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")


def _stage_dict(run: dict[str, Any], stage: str) -> dict[str, Any]:
    d: Any = run
    for part in stage.split("/"):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d if isinstance(d, dict) else {}


# -- claims -----------------------------------------------------------------------------------------------


def verdict(a: list[float], b: list[float], *, larger: bool) -> str:
    """Does ``mean(a) > mean(b)`` (``larger``) or ``<`` hold beyond two standard errors of the difference?"""
    ma, sa, na = _mean_std(a)
    mb, sb, nb = _mean_std(b)
    if na == 0 or nb == 0:
        return "not measured"
    diff = ma - mb if larger else mb - ma
    if na < 2 or nb < 2:
        return "consistent (1 seed, no error bar)" if diff > 0 else "not consistent (1 seed, no error bar)"
    se = math.sqrt(sa**2 / na + sb**2 / nb)
    if diff > 2 * se:
        return "reproduced"
    if diff < -2 * se:
        return "not reproduced"
    return "inconclusive (within the spread across seeds)"


def claims(summary: dict[str, Any], checked: Sequence[Claim] = PAPER_CLAIMS) -> list[tuple[str, str, str]]:
    """One row (claim, measured, verdict) per claim in ``checked``. A claim on configurations the study
    does not have (other ``--configs``) says which are missing rather than reporting an empty comparison."""
    present = {run["name"] for run in summary["runs"]}
    rows: list[tuple[str, str, str]] = []
    for claim in checked:
        missing = [name for name in claim.configs if name not in present]
        if missing:
            rows.append((claim.text, "–", _not_in_study(missing)))
            continue
        row = _comparable(summary, claim) if claim.kind == "comparable" else _compared(summary, claim)
        if row is not None:
            rows.append((claim.text, *row))
    return rows


def _not_in_study(missing: list[str]) -> str:
    names = ", ".join(repr(name) for name in missing)
    return f"not measured: the study has no configuration{'s' if len(missing) > 1 else ''} named {names}"


def _runs(summary: dict[str, Any], names: tuple[str, ...]) -> list[dict[str, Any]]:
    """The runs of the named configurations (every run when none is named), in the summary's order."""
    return [run for run in summary["runs"] if not names or run["name"] in names]


def _metric(runs: list[dict[str, Any]], claim: Claim) -> list[float]:
    """The claim's metric per run; several keys are averaged, pairing the runs that report each."""
    values = [_values(runs, claim.stage, key) for key in claim.keys]
    if len(values) == 1:
        return values[0]
    return [sum(vs) / len(vs) for vs in zip(*values, strict=False)]


def _gain_per_run(runs: list[dict[str, Any]], claim: Claim) -> list[float]:
    """Per run with the stage evaluated: the metric minus its value on the starting model (NaN if absent)."""

    def value(run: dict[str, Any], prefix: str) -> float:
        vs = [(_values([run], claim.stage, prefix + key) or [float("nan")])[0] for key in claim.keys]
        return vs[0] if len(vs) == 1 else sum(vs) / len(vs)

    return [value(run, "") - value(run, "initial/") for run in runs if _stage_dict(run, claim.stage)]


def _compared(summary: dict[str, Any], claim: Claim) -> tuple[str, str]:
    if claim.kind == "gain":
        a = _gain_per_run(_runs(summary, claim.configs), claim)
        b = [0.0] * len(a)
    else:
        a, b = (_metric(_runs(summary, (name,)), claim) for name in claim.configs)
    larger = claim.kind != "below"
    return f"{_fmt(a)} vs {_fmt(b)} ({claim.label})", verdict(a, b, larger=larger)


def _comparable(summary: dict[str, Any], claim: Claim) -> tuple[str, str] | None:
    """Whether the configurations' means lie within the tolerance; no row when fewer than two are measured."""
    names = claim.configs or tuple(dict.fromkeys(run["name"] for run in summary["runs"]))
    means = {name: _mean_std(_metric(_runs(summary, (name,)), claim))[0] for name in names}
    finite = [m for m in means.values() if math.isfinite(m)]
    if len(finite) < 2:
        return None
    spread = max(finite) / min(finite) - 1
    within = f"{claim.tolerance:.0%}"
    return (
        ", ".join(f"{name}: {m:.2f}" for name, m in means.items()) + f" (max/min - 1 = {spread:.1%})",
        f"reproduced (within {within})"
        if spread <= claim.tolerance
        else f"not reproduced (more than {within} apart)",
    )


def _gain(runs: list[dict[str, Any]]) -> str:
    """Avg@k gain of RL: with one seed, ± the paired standard error over the held-out problems; with
    several, mean ± std over seeds."""
    gains = _values(runs, "rl", "avg@k_gain")
    se = runs[0].get("rl", {}).get("avg@k_gain_se") if len(runs) == 1 else None
    if len(gains) == 1 and isinstance(se, (int, float)) and math.isfinite(se):
        return f"{gains[0]:+.3f} ± {se:.3f} (paired SE)"
    return _fmt(gains)


def _entropy_drop(study: Path, runs: list[dict[str, Any]]) -> list[float]:
    """Relative fall of RL policy entropy from its first logged value to its minimum."""
    out = []
    for run in runs:
        es = [
            r["entropy"]
            for r in read_metrics(study / run["dir"] / "rl" / "metrics.jsonl")
            if isinstance(r.get("entropy"), (int, float))
        ]
        if len(es) >= 2 and es[0] > 0:
            out.append((es[0] - min(es)) / es[0])
    return out


# -- report -----------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(study: Path, summary: dict[str, Any]) -> str:
    settings = json.loads((study / "study.json").read_text()) if (study / "study.json").is_file() else {}
    groups = _by_config(summary)
    figures = make_figures(study, summary)
    seeds = sorted({r["seed"] for r in summary["runs"]})
    out = [
        f"# rlready study: preset `{settings.get('preset', '?')}`",
        "",
        f"{len(groups)} configurations x {len(seeds)} seed(s); values are mean ± std over seeds "
        f"(one number when there is one seed). Wall time: {summary.get('wall_time_s', float('nan')) / 60:.1f} min.",
        "",
    ]
    cfg_rows = [
        [n, runs[0]["beta"], runs[0]["lam_head"], runs[0]["lam_tail"], str(runs[0]["k"])]
        for n, runs in groups.items()
    ]
    out += ["## Configurations", "", _table(["name", "beta", "lam_head", "lam_tail", "k"], cfg_rows), ""]
    out += ["## Pre-training", "", "![pre-training](figures/pretrain.png)", ""]
    keys = [("ppl", 2), ("entropy", 3), ("accuracy", 3), ("head_mass", 3), ("knowledge", 3), ("reasoning", 3)]
    out += [
        _table(
            ["config", *[k for k, _ in keys]],
            [[n, *[_fmt(_values(r, "pretrain", k), d) for k, d in keys]] for n, r in groups.items()],
        ),
        "",
    ]
    out += ["## Mid-training", "", "![mid-training](figures/midtrain.png)", ""]
    keys = [("knowledge", 3), ("reasoning", 3), ("ppl", 2), ("entropy", 3)]
    out += [
        _table(
            ["config", *[k for k, _ in keys]],
            [[n, *[_fmt(_values(r, "midtrain", k), d) for k, d in keys]] for n, r in groups.items()],
        ),
        "",
    ]
    out += ["## RL (GRPO)", "", "![RL](figures/rl.png)", "", "![Pass@k](figures/passk.png)", ""]
    rl_rows = []
    for n, r in groups.items():
        rl_rows.append(
            [
                n,
                _fmt(_values(r, "rl", "initial/avg@k")),
                _fmt(_values(r, "rl", "avg@k")),
                _fmt(_values(r, "rl", "initial/cons@k")),
                _fmt(_values(r, "rl", "cons@k")),
                _fmt(_values(r, "rl", "initial/pass@k")),
                _fmt(_values(r, "rl", "pass@k")),
                _gain(r),
                _fmt(_entropy_drop(study, r), 2),
            ]
        )
    out += [
        _table(
            [
                "config",
                "Avg@k before",
                "Avg@k after",
                "Cons@k before",
                "Cons@k after",
                "Pass@k before",
                "Pass@k after",
                "Avg@k gain",
                "entropy drop",
            ],
            rl_rows,
        ),
        "",
    ]
    out += [
        "## The paper's claims at this scale",
        "",
        _table(["claim (docs/method.md §8)", "measured", "verdict"], [list(c) for c in claims(summary)]),
        "",
    ]
    out += ["Figures: " + ", ".join(f"`figures/{f}` ({d})" for f, d in figures), ""]
    return "\n".join(out)


def write_report(dirs: list[Path], compare_out: Path | None = None) -> list[Path]:
    """Regenerate ``report.md`` in each study directory; with several, also a side-by-side comparison."""
    written = []
    summaries = []
    for d in dirs:
        path = d / "summary.json"
        if not path.is_file():
            raise ValueError(f"{d} holds no summary.json (not a finished rlready study)")
        summary = json.loads(path.read_text())
        summaries.append((d, summary))
        (d / "report.md").write_text(render(d, summary))
        written.append(d / "report.md")
    if len(dirs) > 1:
        target = compare_out or dirs[0] / "comparison.md"
        lines = ["# Comparison of studies", ""]
        for d, summary in summaries:
            lines += [
                f"## {d}",
                "",
                _table(["claim", "measured", "verdict"], [list(c) for c in claims(summary)]),
                "",
            ]
        target.write_text("\n".join(lines))
        written.append(target)
    return written
