"""The report's claims: declared as data, evaluated generically, explicit about configurations a study lacks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rlready.report.claims import PAPER_CLAIMS, Claim
from rlready.report.report import claims, write_report
from rlready.study import DEFAULT_CONFIGS


def _run(name: str, seed: int, **stages: dict[str, Any]) -> dict[str, Any]:
    """A summary entry as ``collect`` writes it, without run directories behind it."""
    entry = {"name": name, "beta": "0.0", "lam_head": "0.0", "lam_tail": "0.0", "k": 100, "seed": seed}
    return {**entry, "dir": f"runs/{name}-s{seed}", **stages}


def _user_summary() -> dict[str, Any]:
    """Two seeds each of ``CE`` and a user's ``sharp``: none of the paper's other configurations."""
    runs = []
    for name, entropy, ppl, knowledge, avg in (
        ("CE", (3.0, 3.2), 10.0, (0.4, 0.4), (0.3, 0.3)),
        ("sharp", (2.0, 2.2), 11.0, (0.4, 0.6), (0.5, 0.7)),
    ):
        for s in range(2):
            runs.append(
                _run(
                    name,
                    s,
                    pretrain={"ppl": ppl, "entropy": entropy[s], "knowledge": 0.1, "reasoning": 0.1},
                    midtrain={"knowledge": knowledge[s], "reasoning": 0.2},
                    rl={"avg@k": avg[s], "pass@k": 0.5, "initial": {"avg@k": 0.1}},
                )
            )
    return {"runs": runs, "wall_time_s": 60.0}


def test_paper_claims_name_only_the_default_configurations() -> None:
    defaults = {c.name for c in DEFAULT_CONFIGS}
    assert all(set(claim.configs) <= defaults for claim in PAPER_CLAIMS)


@pytest.mark.filterwarnings("ignore:No artists with labels")  # no metrics.jsonl behind these runs
def test_a_study_with_other_configurations_names_what_each_claim_misses(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text(json.dumps(_user_summary()))
    rows = {text: (measured, verdict) for text, measured, verdict in claims(_user_summary())}
    assert set(rows) == {claim.text for claim in PAPER_CLAIMS}  # one line per claim, none dropped
    assert rows["Higher entropy after pre-training with beta=0.5 than CE"] == (
        "–",
        "not measured: the study has no configuration named 'beta=0.5'",
    )
    assert rows["Perplexity converges to comparable values for every beta"][1] == (
        "not measured: the study has no configurations named 'beta=-0.25', 'beta=0.5'"
    )
    assert rows["RL raises Avg@k over the starting model (all configurations)"][1] == "reproduced"
    [path] = write_report([tmp_path])
    text = path.read_text()
    assert (
        "| RL Avg@k: lam_tail=-0.1 above CE | – | not measured: the study has no configuration named "
        "'lam_tail=-0.1' |"
    ) in text


def test_the_claims_data_drive_the_evaluation() -> None:
    checked = [
        Claim("sharp lowers entropy", "pretrain", "entropy", ("sharp", "CE"), "below", "entropy"),
        Claim("sharp knows more", "midtrain", ("knowledge", "reasoning"), ("sharp", "CE"), "above", "mean"),
        Claim("ppl alike", "pretrain", "ppl", (), "comparable", tolerance=0.05),
        Claim("RL helps sharp", "rl", "avg@k", ("sharp",), "gain", "Avg@k gain"),
        Claim("flat beats CE", "rl", "avg@k", ("flat", "CE"), "above", "Avg@k"),
    ]
    assert claims(_user_summary(), checked) == [
        ("sharp lowers entropy", "2.100 ± 0.141 vs 3.100 ± 0.141 (entropy)", "reproduced"),
        (
            "sharp knows more",
            "0.350 ± 0.071 vs 0.300 ± 0.000 (mean)",
            "inconclusive (within the spread across seeds)",
        ),
        ("ppl alike", "CE: 10.00, sharp: 11.00 (max/min - 1 = 10.0%)", "not reproduced (more than 5% apart)"),
        ("RL helps sharp", "0.500 ± 0.141 vs 0.000 ± 0.000 (Avg@k gain)", "reproduced"),
        ("flat beats CE", "–", "not measured: the study has no configuration named 'flat'"),
    ]
    assert claims(_user_summary(), []) == []


def test_a_pairwise_claim_needs_two_configurations() -> None:
    with pytest.raises(ValueError, match="compares two configurations"):
        Claim("x", "rl", "avg@k", ("CE",), "above")
