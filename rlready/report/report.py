"""``report.md`` and its figures, mirroring the paper's at this scale (docs/method.md §8).

Figures: perplexity and entropy vs tokens in pre-training; knowledge and reasoning after mid-training; RL
accuracy, policy entropy and response length vs step; Pass@k vs k after RL. Tables per stage (mean ± std over
seeds). Then each claim of the paper (rlready/report/claims.py) with the seed-paired mean difference, its 95%
interval and the verdict: reproduced, not reproduced, inconclusive (also with one seed: no interval) or not
measured (docs/method.md §7). When ``summary.json`` holds a fixed-point analysis, "What the data allows" sets
it against the measured values.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlready.report.claims import claims_entries, describe
from rlready.report.summary import read_metrics, with_dynamics

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


def _num(x: float | None, relative: bool = False, sign: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    if relative:
        return f"{x:+.1%}" if sign else f"{x:.1%}"
    return f"{x:+.3f}" if sign else f"{x:.3f}"


def _test(entry: dict[str, Any]) -> str:
    """The rule that makes the claim reproduced, in words (docs/method.md §7)."""
    relative = entry.get("scale") is not None
    m = entry["margin"]
    rule = {
        "higher": f"CI > {_num(m, relative)}",
        "lower": f"CI < {_num(m, relative)}",
        "at_least": f"CI > {_num(-m, relative)} (non-inferiority)",
        "within": f"CI within ±{_num(m, relative)}",
    }[entry["direction"]]
    return f"relative to {describe(entry['scale'])}: {rule}" if relative else rule


def _compared(entry: dict[str, Any]) -> str:
    if entry.get("kind") == "gain":
        return f"{describe(entry['config'])} vs its start"
    return f"{describe(entry['config'])} vs {describe(entry['baseline'])}"


def _measured(entry: dict[str, Any]) -> str:
    a, b = entry.get("config_mean"), entry.get("baseline_mean")
    if a is None or b is None:
        return "—"
    if entry.get("kind") == "gain":
        return f"{_num(a)} after vs {_num(b)} before"
    return f"{_num(a)} vs {_num(b)}"


def _difference(entry: dict[str, Any]) -> str:
    relative = entry.get("scale") is not None
    mean = entry.get("diff_mean")
    if mean is None:
        return "—"
    low, high = entry.get("diff_ci_low"), entry.get("diff_ci_high")
    if low is None or high is None:
        return f"{_num(mean, relative, sign=True)} (no interval)"
    return f"{_num(mean, relative, sign=True)} [{_num(low, relative, sign=True)}, {_num(high, relative, sign=True)}]"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def claims_table(entries: Sequence[dict[str, Any]]) -> str:
    """The claims of ``summary.json`` as a markdown table, with the rules that decide them."""
    rows = []
    for e in entries:
        metric = e["metric"] if isinstance(e["metric"], str) else " & ".join(e["metric"])
        verdict = e["verdict"] + (f": {e['detail']}" if e.get("detail") else "")
        rows.append(
            [
                _cell(e["text"]),
                e["stage"],
                _cell(metric),
                _cell(_compared(e)),
                _measured(e),
                str(e["n"]),
                _difference(e),
                _cell(_test(e)),
                _cell(verdict),
            ]
        )
    header = ["claim", "stage", "metric", "compared", "measured (means)", "n", "mean difference [95% CI]"]
    out = [_table([*header, "reproduced when", "verdict"], rows), ""]
    out.append(
        "A comparison pairs the runs of two configurations that share a seed (the same initialisation and "
        "data order): per seed, d = config - baseline (divided by the third configuration's value when the "
        "rule is relative), and the interval is the 95% t interval of the mean of d over the n seeds. A gain "
        "pairs each run with its own starting model; for every configuration at once n counts runs. The "
        'verdict is "not reproduced" when the interval lies entirely on the other side of the rule\'s bound '
        '(outside ±margin for "within") and "inconclusive" otherwise (docs/method.md §7).'
    )
    single = sum(1 for e in entries if e["n"] == 1)
    if single:
        out += [
            "",
            f"{single} claim{'s rest' if single > 1 else ' rests'} on one seed (n = 1): one difference gives no "
            "interval, so the verdict is inconclusive; `--seeds 3` or more gives one.",
        ]
    return "\n".join(out)


def _gain(runs: list[dict[str, Any]]) -> str:
    """Avg@k gain of RL: with one seed, ± the paired standard error over the held-out problems; with
    several, mean ± std over seeds."""
    gains = _values(runs, "rl", "avg@k_gain")
    se = runs[0].get("rl", {}).get("avg@k_gain_se") if len(runs) == 1 else None
    if len(gains) == 1 and isinstance(se, (int, float)) and math.isfinite(se):
        return f"{gains[0]:+.3f} ± {se:.3f} (paired SE)"
    return _fmt(gains)


def _fixed_point(summary: dict[str, Any], groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    """ "What the data allows": each objective's fixed point on a model of the data (docs/method.md §10)
    next to the measured held-out values after pre-training; nothing when the summary has no fixed point."""
    fp = summary.get("fixed_point")
    if not isinstance(fp, dict):
        return []
    configs = fp.get("configs") if isinstance(fp.get("configs"), dict) else {}
    names = [*groups, *(name for name in configs if name not in groups)]

    def fixed(name: str, key: str) -> str:
        value = (configs.get(name) or {}).get(key)
        return _num(float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"

    def measured(name: str, key: str) -> str:
        m, _, n = _mean_std(_values(groups.get(name, []), "pretrain", key))
        return _num(m) if n else "—"

    rows = []
    for name in names:
        row = [name]
        for fp_key, eval_key in (
            ("entropy", "entropy"),
            ("entropy_fork", "entropy_fork"),
            ("entropy_determ", "entropy_determ"),
            ("tail_mass", "tail_mass"),
            ("head_entropy", "head_entropy"),
        ):
            row += [fixed(name, fp_key), measured(name, eval_key)]
        rows.append(row)
    header = ["config"]
    for label in ("entropy", "fork entropy", "near-deterministic entropy", "tail mass", "head entropy"):
        header += [f"{label}: fixed point", "measured"]
    oracle = fp.get("oracle") if isinstance(fp.get("oracle"), dict) else {}
    facts = ", ".join(
        f"{key} {_num(float(v))}"
        for key, v in oracle.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    order, tokens = fp.get("order", "?"), fp.get("tokens", "?")
    return [
        "## What the data allows",
        "",
        f"The fixed point of each objective on an order-{order} model of the training data ({tokens} tokens): "
        "the held-out values its training would reach with unlimited steps (docs/method.md §10), next to "
        "the values measured after pre-training (mean over seeds). Fork tokens are those with several "
        "plausible continuations, near-deterministic ones those with one."
        + (f" The data itself: {facts}." if facts else ""),
        "",
        _table(header, rows),
        "",
    ]


# -- report -----------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def prepare(study: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` as the report reads it: RL dynamics filled in for runs that lack them, and the claims
    evaluated again by the current rules (the default claims of its configurations, then those its
    configurations file added, which ``summary.json`` records with ``origin: "file"``)."""
    summary = with_dynamics(study, summary)
    return {**summary, "claims": claims_entries(summary)}


def render(study: Path, summary: dict[str, Any]) -> str:
    """``report.md`` of a study; ``summary`` as :func:`prepare` gives it (claims are evaluated if absent)."""
    if "claims" not in summary:
        summary = prepare(study, summary)
    settings = json.loads((study / "study.json").read_text()) if (study / "study.json").is_file() else {}
    groups = _by_config(summary)
    figures = make_figures(study, summary)
    seeds = sorted({r["seed"] for r in summary["runs"]})
    out = [
        f"# rlready study: preset `{settings.get('preset', '?')}`",
        "",
        f"{len(groups)} configurations x {len(seeds)} seed(s); values are mean ± std over seeds "
        f"(one number when there is one seed). {_wall_time(summary)}",
        "",
    ]
    cfg_rows = [
        [n, runs[0]["beta"], runs[0]["lam_head"], runs[0]["lam_tail"], str(runs[0]["k"])]
        for n, runs in groups.items()
    ]
    out += ["## Configurations", "", _table(["name", "beta", "lam_head", "lam_tail", "k"], cfg_rows), ""]
    out += ["## Pre-training", "", "![pre-training](figures/pretrain.png)", ""]
    keys = [
        ("ppl", 2),
        ("entropy", 3),
        ("accuracy", 3),
        ("head_mass", 3),
        ("tail_mass", 3),
        ("head_entropy", 3),
        ("knowledge", 3),
        ("reasoning", 3),
    ]
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
                _fmt(_values(r, "rl_dynamics", "entropy_drop"), 2),
                _fmt(_values(r, "rl_dynamics", "length_change"), 2),
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
                "entropy drop (early)",
                "length change",
            ],
            rl_rows,
        ),
        "",
    ]
    out += [
        "## The paper's claims at this scale (docs/method.md §8)",
        "",
        claims_table(summary["claims"]),
        "",
    ]
    out += _fixed_point(summary, groups)
    out += ["Figures: " + ", ".join(f"`figures/{f}` ({d})" for f, d in figures), ""]
    return "\n".join(out)


def _wall_time(summary: dict[str, Any]) -> str:
    """The study's wall time, saying when it is only its last run's (a resumed study)."""
    minutes = summary.get("wall_time_s", float("nan")) / 60
    reused = summary.get("stages_reused", 0)
    if not summary.get("resumed", bool(reused)):
        return f"Wall time: {minutes:.1f} min."
    return (
        f"Wall time of its last run, which resumed an earlier one: {minutes:.1f} min "
        f"({reused} stages were finished before it)."
    )


def write_report(dirs: list[Path], compare_out: Path | None = None) -> list[Path]:
    """Regenerate ``report.md`` in each study directory; with several, also a side-by-side comparison."""
    written = []
    summaries = []
    for d in dirs:
        path = d / "summary.json"
        if not path.is_file():
            raise ValueError(f"{d} holds no summary.json (not a finished rlready study)")
        summary = prepare(d, json.loads(path.read_text()))
        summaries.append((d, summary))
        (d / "report.md").write_text(render(d, summary))
        written.append(d / "report.md")
    if len(dirs) > 1:
        target = compare_out or dirs[0] / "comparison.md"
        lines = ["# Comparison of studies", ""]
        for d, summary in summaries:
            lines += [f"## {d}", "", claims_table(summary["claims"]), ""]
        target.write_text("\n".join(lines))
        written.append(target)
    return written
