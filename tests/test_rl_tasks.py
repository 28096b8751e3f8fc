"""Tests for rlready.rl.tasks: the one JSONL reader of RL data (GSM8K- and MATH-style records), its
``rl.data PATH:LINE`` errors, and the split into training and held-out tasks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from rlready import recipes
from rlready.config import ConfigError
from rlready.rl.rewards import hash_answer_reward
from rlready.rl.tasks import PromptStream, Task, load_jsonl, load_tasks


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_gsm8k_jsonl(tmp_path: Path) -> None:
    records = [
        {"question": " Tom has 3 apples and buys 4. How many? ", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
        {"question": "Big?", "answer": "#### 1,200"},
    ]
    path = write_jsonl(
        tmp_path / "d.jsonl", [json.dumps(r) for r in records[:1]] + ["", json.dumps(records[1])]
    )
    pairs = load_jsonl(path, "gsm8k")
    assert pairs == [("Tom has 3 apples and buys 4. How many?", "7"), ("Big?", "1200")]
    assert hash_answer_reward("... #### 1,200", pairs[1][1]) == 1.0
    assert load_jsonl(path, "arithmetic") == pairs  # the synthetic reward reads the same format


def test_load_math_jsonl(tmp_path: Path) -> None:
    records = [
        {"problem": " What is 1/2 + 1/2? ", "answer": "1"},
        {"problem": "Solve.", "solution": r"So \boxed{\frac{1}{2}}, not \boxed{ x = 3 }."},
        {"question": "Asked as a question?", "answer": r"\sqrt{2}"},
        {"problem": "Empty answer, boxed solution.", "answer": "", "solution": r"\boxed{4}"},
    ]
    pairs = load_jsonl(write_jsonl(tmp_path / "m.jsonl", [json.dumps(r) for r in records]), "math")
    assert pairs == [
        ("What is 1/2 + 1/2?", "1"),
        ("Solve.", "x=3"),  # the last box, whitespace removed
        ("Asked as a question?", r"\sqrt{2}"),
        ("Empty answer, boxed solution.", "4"),
    ]


@pytest.mark.parametrize(
    ("reward", "lines", "match"),
    [
        ("gsm8k", ["{not json"], "d.jsonl:1: invalid JSON"),
        ("gsm8k", ['{"question": "q", "answer": "#### 1"}', "[1, 2]"], "d.jsonl:2: expected a JSON object"),
        ("gsm8k", ['{"answer": "#### 1"}'], "missing string field 'question'"),
        ("gsm8k", ['{"question": "q", "answer": 3}'], "missing string field 'answer'"),
        ("gsm8k", ['{"question": "q", "answer": "no final line"}'], "no '#### <number>' final line"),
        ("gsm8k", ['{"question": "q", "answer": "#### x"}'], "no '#### <number>' final line"),
        ("gsm8k", [""], "holds no records"),
        ("math", ['{"problem": "p", "answer": "1"}', "", "{oops"], r"d.jsonl:3: invalid JSON"),
        ("math", ['{"problem": "p", "answer": "1"}', '"text"'], "d.jsonl:2: expected a JSON object"),
        ("math", ['{"answer": "1"}'], r"d.jsonl:1: missing string field 'question' \(or 'problem'\)"),
        (
            "math",
            ['{"problem": "p", "solution": "no box"}'],
            r"d.jsonl:1: .*'answer' \(or a boxed 'solution'\)",
        ),
        ("math", ['{"problem": "p", "answer": 3}'], "d.jsonl:1: missing string field 'answer'"),
    ],
)
def test_load_jsonl_errors(tmp_path: Path, reward: str, lines: list[str], match: str) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    with pytest.raises(ConfigError, match=match) as err:
        load_jsonl(path, reward)
    # one error type, one line, naming the option and the file
    assert isinstance(err.value, ValueError) and "\n" not in str(err.value)
    assert str(err.value).startswith(f"rl.data {path}")


def test_load_jsonl_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_jsonl(tmp_path / "absent.jsonl", "gsm8k")


def test_real_data_tasks_hold_out_the_last_records(tmp_path: Path) -> None:
    path = tmp_path / "gsm.jsonl"
    path.write_text(
        "".join(json.dumps({"question": f"q{i}?", "answer": f"work\n#### {i}"}) + "\n" for i in range(30))
    )
    cfg = recipes.resolve("rl", "tiny", overrides=[("rl.data", str(path)), ("rl.reward", "gsm8k")])
    train, held = load_tasks(cfg)
    assert len(held) == 3 and len(train) == 27
    assert held[0] == Task("Q: q27?\nA:", "27")
    cfg.rl.data = str(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="does not exist"):
        load_tasks(cfg)


def test_math_data_tasks_and_bad_line_through_load_tasks(tmp_path: Path) -> None:
    path = tmp_path / "math.jsonl"
    lines = [json.dumps({"problem": f"p{i}", "solution": f"so \\boxed{{{i}}}"}) for i in range(20)]
    path.write_text("\n".join(lines) + "\n")
    cfg = recipes.resolve("rl", "tiny", overrides=[("rl.data", str(path)), ("rl.reward", "math")])
    train, held = load_tasks(cfg)
    assert len(held) == 2 and train[0] == Task("Q: p0\nA:", "0") and held[-1] == Task("Q: p19\nA:", "19")
    path.write_text("\n".join([*lines[:4], "{bad", *lines[4:]]) + "\n")
    with pytest.raises(ConfigError, match=rf"^rl\.data {re.escape(str(path))}:5: invalid JSON"):
        load_tasks(cfg)
    path.write_text("\n".join(lines[:5]) + "\n")
    with pytest.raises(ConfigError, match="has 5 records; need at least 10"):
        load_tasks(cfg)


def test_prompt_stream_epochs_and_state() -> None:
    tasks = [Task(str(i), str(i)) for i in range(5)]
    a = PromptStream(tasks, seed=3)
    first = a.take(5)
    assert sorted(t.prompt for t in first) == [str(i) for i in range(5)]  # an epoch is a permutation
    a.take(2)
    b = PromptStream(tasks, seed=3)
    b.load_state_dict(a.state_dict())
    assert a.take(6) == b.take(6)
