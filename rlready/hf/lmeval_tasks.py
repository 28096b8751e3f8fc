"""lm-evaluation-harness tasks for a run's held-out problems and questions, on local JSONL (no hub).

``export_lm_eval(out, cfg)`` writes, for the synthetic world of ``cfg`` (its seed and problem difficulty: a
pre-/mid-training run's ``data.*``, an RL run's ``rl.task_*``) and its ``eval.*`` settings:

- ``rlready_reasoning``: the held-out arithmetic problems (``World.reasoning_problems(n, "eval")``, the ones the
  run evaluates), greedy, scored by exact match of the number after the last ``####`` (lm-eval's ``regex``
  filter and ``exact_match`` metric; the run's ``reasoning`` greedy accuracy);
- ``rlready_reasoning_pass``: the same problems sampled ``eval.samples`` times at ``eval.temperature`` /
  ``eval.top_p``; every sample is checked with the verifier of ``rlready rl`` and ``utils.py`` next to the YAML
  gives Avg@n, Cons@n, Pass@1 and the unbiased Pass@k of ``rlready.metrics`` per problem (lm-eval has no
  Pass@k of its own outside code tasks);
- ``rlready_knowledge``: the held-out knowledge questions, greedy, exact match of the answer word (the run's
  ``knowledge`` accuracy);
- for each GSM8K-style JSONL given (``question``, ``answer`` ending in ``#### n``): ``rlready_<name>`` and
  ``rlready_<name>_pass``, prompted as ``rlready rl --rl.data`` prompts (``Q: ...\\nA:``).

Every task has the tag ``rlready``. The YAMLs name their JSONL by absolute path, so move the folder by
exporting again. Running the Pass@k tasks needs ``rlready`` importable next to ``lm_eval``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rlready.config import ConfigError, RunConfig

__all__ = ["ExportResult", "export_lm_eval", "world_config_of"]

MANIFEST = "rlready_tasks.json"  # marks a folder written here, so a second export may replace its files
TAG = "rlready"
# The number after the last "####": the answer rlready.rl.answers.extract_hash_answer reads.
HASH_ANSWER = r"#### (\-?[0-9\.\,]+)"
# The first word with "." and "," trimmed at both ends: the word rlready.eval.lm.knowledge_accuracy compares.
FIRST_WORD = r"^\s*[.,]*(\S*?)[.,]*(?:\s|$)"
KNOWLEDGE_TOKENS = 8  # knowledge_accuracy's max_new_tokens

_UTILS = '''"""Pass@k of the rlready tasks in this folder (written by `rlready export-lm-eval`).

Every sample of a problem is checked with the verifier of `rlready rl` (rlready.rl.rewards) and the problem's
Avg@n, Cons@n, Pass@1 and Pass@k come from rlready.metrics.summarize (the unbiased estimator), so lm-eval's
mean over problems is rlready's evaluation of the same samples.
"""

from rlready.metrics import summarize
from rlready.rl.answers import answer_key
from rlready.rl.rewards import get_reward

PASS_K = {pass_k}


def _correct(reward, text, answer):
    try:
        return reward(text, answer) >= 1.0
    except Exception:  # a verifier failing on odd output scores that sample 0, as in rlready rl
        return False


def process_pass(doc, results):
    # take_first_k keeps every sample of the problem: results holds one list of n completions.
    samples = results[0]
    samples = [samples] if isinstance(samples, str) else list(samples)
    name = doc.get("reward", "gsm8k")
    reward = get_reward(name)
    correct = [_correct(reward, s, doc["answer"]) for s in samples]
    keys = [answer_key(s, name) for s in samples]
    n, k = len(samples), min(PASS_K, len(samples))
    out = summarize([(keys, correct)], sorted({{1, k, n}}))
    return {{f"avg@{{n}}": out[f"avg@{{n}}"], f"cons@{{n}}": out[f"cons@{{n}}"], "pass@1": out["pass@1"],
            f"pass@{{k}}": out[f"pass@{{k}}"]}}
'''


@dataclass(frozen=True)
class ExportResult:
    out: Path
    tasks: list[str]
    files: list[Path]

    def command(self, model_dir: str | Path | None = None, device: str | None = None) -> str:
        """The ``lm_eval`` command that evaluates ``model_dir`` (a run's ``final/``) on these tasks."""
        model = str(model_dir) if model_dir is not None else "MODEL_DIR"
        parts = ["lm_eval --model hf --model_args", shlex.quote(f"pretrained={model}")]
        parts += [
            "--include_path",
            shlex.quote(str(self.out)),
            "--tasks",
            ",".join(self.tasks),
            "--batch_size 1",
        ]
        if device:
            parts += ["--device", shlex.quote(device)]
        return " ".join(parts)


def world_config_of(cfg: RunConfig) -> Any:
    """The synthetic world a run evaluates on: the seed of every stage, and the difficulty of its held-out
    problems, ``rl.task_*`` for RL (rlready.rl.tasks.load_tasks) and ``data.reasoning_*`` otherwise
    (rlready.train.lm.world_config)."""
    from rlready.data.reasoning import ReasoningConfig
    from rlready.data.world import WorldConfig

    if cfg.stage == "rl":
        difficulty = ReasoningConfig(max_steps=cfg.rl.task_max_steps, max_operand=cfg.rl.task_max_operand)
    else:
        difficulty = ReasoningConfig(
            max_steps=cfg.data.reasoning_max_steps, max_operand=cfg.data.reasoning_max_operand
        )
    return WorldConfig(seed=cfg.data.world_seed, reasoning=difficulty)


def _task_name(path: Path) -> str:
    stem = re.sub(r"[^0-9a-zA-Z_]+", "_", path.stem).strip("_").lower()
    if not stem:
        raise ConfigError(f"--jsonl {str(path)!r}: cannot make a task name from the file name")
    return f"{TAG}_{stem}"


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise ConfigError(
            f"--out {str(out)!r} is not empty and holds no {MANIFEST}: refusing to write task files into it"
        )


def _previous_files(out: Path) -> set[str]:
    """The files an earlier export in ``out`` wrote, by its manifest (plain names inside ``out`` only)."""
    try:
        listed = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    if not isinstance(listed, list):
        return set()
    return {
        name
        for name in listed
        if isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name
    }


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _task_yaml(name: str, data: Path, body: dict[str, Any], process_results: str | None = None) -> str:
    config = {
        "task": name,
        "tag": [TAG],
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "num_fewshot": 0,
        **body,
        "metadata": {"version": 1.0},
    }
    text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, width=1000)
    if (
        process_results is not None
    ):  # a tag safe_dump cannot write: lm-eval's loader resolves it next to the YAML
        text += f"process_results: !function {process_results}\n"
    return text


def _greedy(max_new_tokens: int) -> dict[str, Any]:
    return {"do_sample": False, "max_gen_toks": max_new_tokens}


def _sampled(cfg: RunConfig) -> dict[str, Any]:
    ev = cfg.eval
    if ev.temperature == 0:
        return _greedy(ev.max_new_tokens)
    return {
        "do_sample": True,
        "temperature": ev.temperature,
        "top_p": ev.top_p,
        "max_gen_toks": ev.max_new_tokens,
    }


def _exact_match_body(
    max_new_tokens: int, regex: str, group_select: int, ignore: list[str]
) -> dict[str, Any]:
    metric: dict[str, Any] = {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}
    if ignore:
        metric["regexes_to_ignore"] = ignore
    return {
        "generation_kwargs": _greedy(max_new_tokens),
        "filter_list": [
            {
                "name": "strict-match",
                "filter": [
                    {"function": "regex", "regex_pattern": regex, "group_select": group_select},
                    {"function": "take_first"},
                ],
            }
        ],
        "metric_list": [metric],
    }


def _pass_body(cfg: RunConfig) -> dict[str, Any]:
    n, k = cfg.eval.samples, min(cfg.eval.pass_k, cfg.eval.samples)
    metrics = [f"avg@{n}", f"cons@{n}", "pass@1", f"pass@{k}"]
    return {
        "repeats": n,
        "generation_kwargs": _sampled(cfg),
        # take_first_k with k = n keeps every sample (lm-eval's default filter would keep the first only).
        "filter_list": [{"name": "samples", "filter": [{"function": "take_first_k", "k": n}]}],
        "metric_list": [
            {"metric": m, "aggregation": "mean", "higher_is_better": True} for m in dict.fromkeys(metrics)
        ],
    }


def export_lm_eval(
    out: str | Path,
    cfg: RunConfig,
    *,
    jsonl: Sequence[str | Path] = (),
    world: bool = True,
) -> ExportResult:
    """Write the task YAMLs, their JSONL, ``utils.py`` and a manifest to ``out``; see the module docstring.

    ``cfg`` is a run's configuration (``config.json`` of a run directory, or ``recipes.resolve``): its world
    seed and difficulty pick the problems, ``eval.reasoning_problems`` / ``eval.knowledge_questions`` how many
    (as many as the run evaluates), ``eval.*`` the sampling of the Pass@k tasks. ``world=False`` leaves the
    synthetic world's tasks out (only ``jsonl``). A folder that is not empty must be an earlier export.
    """
    from rlready.data.world import World
    from rlready.rl.tasks import load_jsonl, qa_prompt

    out = Path(out).absolute()
    _check_out(out)
    # Everything is read and checked before the folder is touched.
    datasets: list[tuple[str, list[dict[str, Any]], bool]] = []  # (task, rows, is reasoning)
    if world:
        the_world = World(world_config_of(cfg))
        if cfg.eval.reasoning_problems > 0:
            problems = the_world.reasoning_problems(cfg.eval.reasoning_problems, "eval")
            rows = [{"prompt": p.prompt, "answer": p.answer, "reward": "arithmetic"} for p in problems]
            datasets.append((f"{TAG}_reasoning", rows, True))
        if cfg.eval.knowledge_questions > 0:
            questions = the_world.knowledge_questions("eval")[: cfg.eval.knowledge_questions]
            # One word per answer is what the FIRST_WORD filter compares; the world's facts are all one word.
            many = [q.answer for q in questions if len(q.answer.split()) != 1]
            if many:
                raise ValueError(f"knowledge answers of one word expected, got {many[0]!r}")
            rows = [{"prompt": q.prompt, "answer": q.answer.strip()} for q in questions]
            datasets.append((f"{TAG}_knowledge", rows, False))
    # Every task name a dataset takes (a reasoning one also NAME_pass), so that no file overwrites another.
    names = {n for name, _, reasoning in datasets for n in ((name, f"{name}_pass") if reasoning else (name,))}
    for path in jsonl:
        name = _task_name(Path(path))
        if name in names or f"{name}_pass" in names:
            raise ConfigError(f"--jsonl {str(path)!r}: task name {name!r} is taken; rename the file")
        names.update({name, f"{name}_pass"})
        if Path(path).is_dir():
            raise ConfigError(f"--jsonl {str(path)!r} is a directory, not a JSONL file")
        if not Path(path).is_file():
            raise ConfigError(f"--jsonl {str(path)!r} does not exist (no such file)")
        try:
            pairs = load_jsonl(path, "gsm8k")
        except ConfigError as err:  # it names the file as rl.data, the option of rlready rl
            raise ConfigError(str(err).replace("rl.data", "--jsonl", 1)) from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"--jsonl {str(path)!r} is not UTF-8 text ({err.reason})") from None
        rows = [{"prompt": qa_prompt(q), "answer": a, "reward": "gsm8k"} for q, a in pairs]
        datasets.append((name, rows, True))
    if not datasets:
        why = (
            "the world's tasks are left out (--no-world)"
            if not world
            else "no world tasks (eval.reasoning_problems and eval.knowledge_questions are 0)"
        )
        raise ConfigError(f"nothing to export: {why} and no --jsonl")

    previous = _previous_files(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    tasks: list[str] = []

    def write(name: str, text: str) -> None:
        path = out / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        files.append(path)

    for name, rows, reasoning in datasets:
        data = out / f"{name}.jsonl"
        _write_jsonl(data, rows)
        files.append(data)
        if reasoning:
            # What rlready.rl.answers.extract_hash_answer drops: thousands separators, a final period.
            body = _exact_match_body(cfg.eval.max_new_tokens, HASH_ANSWER, -1, [",", "\\.$"])
            write(f"{name}.yaml", _task_yaml(name, data, body))
            write(
                f"{name}_pass.yaml", _task_yaml(f"{name}_pass", data, _pass_body(cfg), "utils.process_pass")
            )
            tasks += [name, f"{name}_pass"]
        else:
            write(
                f"{name}.yaml", _task_yaml(name, data, _exact_match_body(KNOWLEDGE_TOKENS, FIRST_WORD, 0, []))
            )
            tasks.append(name)
    write("utils.py", _UTILS.format(pass_k=cfg.eval.pass_k))
    write(MANIFEST, json.dumps({"tasks": tasks, "files": [f.name for f in files]}, indent=2) + "\n")
    # An earlier export's tasks that this one does not hold would still load from --include_path (and run
    # under the tag): remove their files.
    for name in previous - {f.name for f in files}:
        (out / name).unlink(missing_ok=True)
    return ExportResult(out, tasks, files)
