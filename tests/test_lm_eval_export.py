"""``rlready export-lm-eval``: the exported problems and questions are the ones a run evaluates (compared with
the stages' own selection code), the command's errors, and (``bridges``) lm-evaluation-harness itself scoring
the exported tasks as rlready scores them, with a scripted model and with a real model directory."""

from __future__ import annotations

import collections
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlready import recipes
from rlready.data.world import World
from rlready.hf.lmeval_tasks import world_config_of
from rlready.rl.tasks import load_tasks
from rlready.train.lm import world_config

SMALL_EVAL = [("eval.reasoning_problems", "12"), ("eval.knowledge_questions", "6")]
SMALL_EVAL += [("eval.samples", "4"), ("eval.pass_k", "2")]


def run_dir(tmp_path: Path, stage: str, overrides=()) -> tuple[Path, object]:
    """A run directory as far as the export reads it: config.json, the resolved configuration."""
    cfg = recipes.resolve(stage, "tiny", overrides=[*SMALL_EVAL, *overrides])
    d = tmp_path / f"run-{stage}"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return d, cfg


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlready.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Loader(yaml.SafeLoader):
    """Reads the exported YAML as lm-eval does, keeping ``!function`` as its text."""


Loader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


def test_export_from_an_rl_run_holds_the_runs_held_out_problems_and_questions(tmp_path):
    run, cfg = run_dir(tmp_path, "rl", [("rl.task_max_operand", "7")])
    out = tmp_path / "tasks"
    done = cli("export-lm-eval", "--out", str(out), "--config", str(run), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    tasks = ["rlready_reasoning", "rlready_reasoning_pass", "rlready_knowledge"]
    first, command = done.stdout.strip().splitlines()
    assert first.endswith(", ".join(tasks))
    assert command == (
        f"lm_eval --model hf --model_args pretrained={run / 'final'} --include_path {out.absolute()} "
        f"--tasks {','.join(tasks)} --batch_size 1 --device cpu"
    )
    _, held = load_tasks(cfg)  # the RL stage's own held-out problems
    assert [(r["prompt"], r["answer"]) for r in rows(out / "rlready_reasoning.jsonl")] == [
        (t.prompt, t.answer) for t in held
    ]
    assert len(held) == 12 and max(int(t.answer) for t in held) <= 7 * 2 * 9  # the run's difficulty
    questions = World(world_config(cfg)).knowledge_questions("eval")[:6]
    assert rows(out / "rlready_knowledge.jsonl") == [
        {"prompt": q.prompt, "answer": q.answer.strip()} for q in questions
    ]
    greedy = yaml.load((out / "rlready_reasoning.yaml").read_text(), Loader=Loader)
    assert greedy["dataset_kwargs"]["data_files"]["test"] == str(out.absolute() / "rlready_reasoning.jsonl")
    assert greedy["generation_kwargs"] == {"do_sample": False, "max_gen_toks": cfg.eval.max_new_tokens}
    sampled = yaml.load((out / "rlready_reasoning_pass.yaml").read_text(), Loader=Loader)
    assert sampled["repeats"] == 4 and sampled["process_results"] == "!function utils.process_pass"
    assert sampled["generation_kwargs"]["temperature"] == cfg.eval.temperature
    assert [m["metric"] for m in sampled["metric_list"]] == ["avg@4", "cons@4", "pass@1", "pass@2"]
    assert json.loads((out / "rlready_tasks.json").read_text())["tasks"] == tasks
    # Exporting again replaces the earlier export; the run's config.json itself names the run as well.
    again = cli("export-lm-eval", "--out", str(out), "--config", str(run / "config.json"))
    assert again.returncode == 0 and f"pretrained={run / 'final'} " in again.stdout


def test_export_from_a_mid_training_config_uses_the_worlds_data_difficulty(tmp_path):
    cfg = recipes.resolve("midtrain", "tiny", overrides=SMALL_EVAL)
    out = tmp_path / "tasks"
    config = tmp_path / "mid.yaml"
    config.write_text(
        "stage: midtrain\neval:\n  reasoning_problems: 12\n  knowledge_questions: 6\n  samples: 4\n"
    )
    done = cli("export-lm-eval", "--out", str(out), "--config", str(config), "--eval.pass_k", "2")
    assert done.returncode == 0, done.stderr
    problems = World(world_config(cfg)).reasoning_problems(12, "eval")  # what the LM stage evaluates
    assert [(r["prompt"], r["answer"]) for r in rows(out / "rlready_reasoning.jsonl")] == [
        (p.prompt, p.answer) for p in problems
    ]
    assert "pretrained=MODEL_DIR" in done.stdout


def test_export_of_gsm8k_jsonl_prompts_as_rlready_rl_does(tmp_path):
    data = tmp_path / "My GSM-8k.jsonl"
    records = [
        {"question": f"What is {i} * 2?", "answer": f"{i} * 2 = {2 * i}\n#### {2 * i:,}"}
        for i in range(600, 603)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "tasks"
    done = cli("export-lm-eval", "--out", str(out), "--jsonl", str(data), "--no-world")
    assert done.returncode == 0, done.stderr
    assert "--tasks rlready_my_gsm_8k,rlready_my_gsm_8k_pass " in done.stdout
    got = rows(out / "rlready_my_gsm_8k.jsonl")
    assert got[0] == {"prompt": "Q: What is 600 * 2?\nA:", "answer": "1200", "reward": "gsm8k"}
    assert len(got) == 3 and not (out / "rlready_reasoning.yaml").exists()


def test_exporting_again_removes_the_tasks_the_new_export_leaves_out(tmp_path):
    """The folder is lm-eval's --include_path: an earlier export's task left in it would still load and run
    under the ``rlready`` tag."""
    data = tmp_path / "extra.jsonl"
    data.write_text('{"question": "1 + 1?", "answer": "#### 2"}\n')
    out = tmp_path / "tasks"
    small = [a for k, v in SMALL_EVAL for a in (f"--{k}", v)]
    assert cli("export-lm-eval", "--out", str(out), "--jsonl", str(data), *small).returncode == 0
    assert (out / "rlready_extra_pass.yaml").is_file()
    (out / "notes.txt").write_text("mine")  # not the export's: kept
    done = cli("export-lm-eval", "--out", str(out), *small)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "rlready_tasks.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*manifest["files"], "rlready_tasks.json", "notes.txt"]
    )
    assert not list(out.glob("rlready_extra*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "{tmp}/missing.yaml"], "config file '{tmp}/missing.yaml' does not exist"),
        (["--config", "{tmp}"], "is a directory without config.json (not a run)"),
        (["--config", "{tmp}/run/config.json"], "--config '{tmp}/run/config.json' does not exist"),
        (["--jsonl", "{tmp}/none.jsonl"], "--jsonl '{tmp}/none.jsonl' does not exist"),
        (["--eval.samples", "0"], "eval.samples must be"),
        (["--no-world"], "nothing to export: the world's tasks are left out (--no-world)"),
        (["--jsonl", "{tmp}/foreign"], "--jsonl '{tmp}/foreign' is a directory"),
        (["--jsonl", "{tmp}/latin1.jsonl"], "--jsonl '{tmp}/latin1.jsonl' is not UTF-8 text"),
        (["--jsonl", "{tmp}/reasoning_pass.jsonl"], "task name 'rlready_reasoning_pass' is taken"),
        (["--out", "{tmp}/foreign"], "is not empty and holds no rlready_tasks.json"),
    ],
)
def test_export_errors_are_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    (tmp_path / "latin1.jsonl").write_bytes(
        '{"question": "caf\u00e9?", "answer": "#### 1"}\n'.encode("latin-1")
    )
    # Its task would be the file name of the world's Pass@k task, rlready_reasoning_pass.yaml.
    (tmp_path / "reasoning_pass.jsonl").write_text('{"question": "1 + 1?", "answer": "#### 2"}\n')
    args = [a.format(tmp=tmp_path) for a in args]
    if "--out" not in args:
        args = ["--out", str(tmp_path / "tasks"), *args]
    done = cli("export-lm-eval", *args)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert message.format(tmp=tmp_path) in done.stderr
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "tasks").exists()


@pytest.mark.parametrize(
    ("version", "message"), [(None, "records no data.world_version"), (6, "world_version 6")]
)
def test_export_refuses_a_run_of_another_world(tmp_path, version, message):
    # Its held-out problems are another world's: exporting this world's as the run's would mislead.
    run, _ = run_dir(tmp_path, "rl")
    saved = json.loads((run / "config.json").read_text())
    if version is None:
        del saved["data"]["world_version"]
    else:
        saved["data"]["world_version"] = version
    (run / "config.json").write_text(json.dumps(saved))
    done = cli("export-lm-eval", "--out", str(tmp_path / "tasks"), "--config", str(run))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr
    assert not (tmp_path / "tasks").exists()


# ------------------------------------------------------------------------------------------ lm-eval itself


def lm_eval_or_skip():
    return pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'rlready[lmeval]')")


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimator with binomials, as Chen et al. (2021) write it."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


@pytest.mark.bridges
def test_lm_eval_scores_the_exported_tasks_as_rlready_does(tmp_path, monkeypatch):
    """A scripted model answers through lm-eval's real evaluator, filters, metrics and aggregation."""
    lm_eval = lm_eval_or_skip()
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager

    from rlready.hf import export_lm_eval

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = recipes.resolve("rl", "tiny", overrides=SMALL_EVAL)
    result = export_lm_eval(tmp_path / "tasks", cfg)
    problems = rows(tmp_path / "tasks" / "rlready_reasoning.jsonl")
    questions = rows(tmp_path / "tasks" / "rlready_knowledge.jsonl")
    # Per problem: a greedy answer and four samples, the sample patterns cycling over problems.
    greedy_forms = [
        " 2 + 3 = 5.\n#### {a}",
        " #### {a}.",
        "#### {a}\n#### 99999",
        "#### 9{a}",
        "no answer",
        "#### 1,{a}",
    ]
    sample_forms = [
        ["#### {a}", "#### {a}", "#### 0{a}", "#### {a}"],
        ["#### 9{a}", "x", "#### {a}", "#### 9{a}"],
        ["x", "y", "z", "#### -1"],
        ["#### {a}", "#### {a}", "#### {a}", "#### {a}"],
    ]
    knowledge_forms = [" {a}.", " {a}, who", " {a}s", "{a}", " the {a}", " .{a}. Then", " {A}"]
    greedy, sampled, known = {}, {}, {}
    for i, p in enumerate(problems):
        greedy[p["prompt"]] = greedy_forms[i % len(greedy_forms)].format(a=p["answer"])
        sampled[p["prompt"]] = [s.format(a=p["answer"]) for s in sample_forms[i % len(sample_forms)]]
    for i, q in enumerate(questions):
        known[q["prompt"]] = knowledge_forms[i % len(knowledge_forms)].format(
            a=q["answer"], A=q["answer"].upper()
        )

    class Scripted(LM):
        def __init__(self):
            super().__init__()
            self.drawn = collections.Counter()

        def generate_until(self, requests):
            out = []
            for req in requests:
                context, kwargs = req.args
                if kwargs.get("do_sample"):
                    out.append(sampled[context][self.drawn[context] % 4])
                    self.drawn[context] += 1
                else:
                    out.append(known.get(context) or greedy[context])
            return out

        def loglikelihood(self, requests):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

    res = lm_eval.simple_evaluate(
        model=Scripted(), tasks=result.tasks, task_manager=TaskManager(include_path=str(result.out))
    )["results"]
    from rlready.rl.rewards import hash_answer_reward

    # Greedy exact match: the verifier of rlready rl on each greedy answer (the last '####', exact number).
    want = sum(hash_answer_reward(greedy[p["prompt"]], p["answer"]) for p in problems) / len(problems)
    assert res["rlready_reasoning"]["exact_match,strict-match"] == pytest.approx(want)
    assert 0 < want < 1
    # Pass@k: per problem from the correct count, with the binomial estimator, then the mean.
    per = [sum(hash_answer_reward(s, p["answer"]) for s in sampled[p["prompt"]]) for p in problems]
    got = res["rlready_reasoning_pass"]
    assert got["avg@4,samples"] == pytest.approx(sum(c / 4 for c in per) / len(per))
    assert got["pass@1,samples"] == pytest.approx(sum(pass_at_k(4, int(c), 1) for c in per) / len(per))
    assert got["pass@2,samples"] == pytest.approx(sum(pass_at_k(4, int(c), 2) for c in per) / len(per))
    assert 0 < got["pass@1,samples"] < got["pass@2,samples"] < 1
    # Knowledge: the answer's word, '.'/',' trimmed, compared exactly (rlready.eval.lm.knowledge_accuracy).
    hits = [[w.strip(".,") for w in known[q["prompt"]].split()[:1]] == [q["answer"]] for q in questions]
    assert res["rlready_knowledge"]["exact_match,strict-match"] == pytest.approx(sum(hits) / len(hits))
    assert 0 < sum(hits) < len(hits)


def program_model(tmp_path: Path, cfg, answer: str) -> tuple[Path, object, object]:
    """A tiny Qwen3 whose greedy continuation of any prompt ending in ':' is '#### <answer>' then EOS.

    Attention and MLP outputs are zero, so the last hidden state is the current token's embedding; one-hot
    embeddings on the chain ':' -> '####' -> answer -> EOS and a head that maps each to the next make it a fixed
    program. A word-level tokenizer keeps '####' one token.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from rlready.models import build_config, build_model, save_model

    world = World(world_config_of(cfg))
    texts = [p.prompt for p in world.reasoning_problems(cfg.eval.reasoning_problems, "eval")]
    texts += [q.prompt for q in world.knowledge_questions("eval")[: cfg.eval.knowledge_questions]]
    split = pre_tokenizers.Whitespace()
    words = sorted({t for text in texts for t, _ in split.pre_tokenize_str(text)} | {"####", answer})
    vocab = {w: i for i, w in enumerate(words)}
    vocab["<eos>"], vocab["<unk>"] = len(vocab), len(vocab) + 1
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = split
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>", pad_token="<eos>"
    )
    torch.manual_seed(0)
    model = build_model(build_config("tiny", vocab_size=len(vocab), tie_word_embeddings=False)).eval()
    chain = [vocab[":"], vocab["####"], vocab[answer], vocab["<eos>"]]
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed.normal_(0.0, 0.02)
        head.zero_()
        for i, token in enumerate(chain):
            embed[token].zero_()
            embed[token, i] = 1.0
            if i + 1 < len(chain):
                head[chain[i + 1], i] = 10.0
    path = save_model(model, tok, tmp_path / "model", max_new_tokens=cfg.eval.max_new_tokens)
    return path, model, tok


@pytest.mark.bridges
@pytest.mark.slow
def test_lm_eval_on_a_model_directory_agrees_with_rlreadys_evaluation(tmp_path, monkeypatch):
    lm_eval = lm_eval_or_skip()
    from lm_eval.tasks import TaskManager

    from rlready.eval.lm import _greedy_accuracy, knowledge_accuracy

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run, cfg = run_dir(
        tmp_path, "rl", [("eval.reasoning_problems", "8"), ("eval.samples", "2"), ("eval.pass_k", "1")]
    )
    held = load_tasks(cfg)[1]
    answer = collections.Counter(t.answer for t in held).most_common(1)[0][0]
    model_dir, model, tok = program_model(tmp_path, cfg, answer)
    out = tmp_path / "tasks"
    done = cli("export-lm-eval", "--out", str(out), "--config", str(run), "--model", str(model_dir))
    assert done.returncode == 0, done.stderr
    tasks = done.stdout.split("--tasks ")[1].split()[0].split(",")
    res = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir}",
        tasks=tasks,
        task_manager=TaskManager(include_path=str(out)),
        batch_size=1,
        device="cpu",
    )["results"]
    share = sum(t.answer == answer for t in held) / len(held)
    assert 0 < share < 1
    assert res["rlready_reasoning"]["exact_match,strict-match"] == pytest.approx(share)
    assert _greedy_accuracy(model, tok, held, cfg.eval.max_new_tokens) == pytest.approx(share)
    # The program's margin makes sampling at temperature 0.7 deterministic too.
    assert res["rlready_reasoning_pass"]["pass@1,samples"] == pytest.approx(share)
    assert res["rlready_reasoning_pass"]["avg@2,samples"] == pytest.approx(share)
    questions = World(world_config(cfg)).knowledge_questions("eval")[:6]  # the seed decides them
    assert (
        res["rlready_knowledge"]["exact_match,strict-match"] == knowledge_accuracy(model, tok, questions) == 0
    )


def test_importing_the_bridges_and_exporting_load_neither_torch_nor_transformers():
    code = (
        "import sys, rlready.hf; from rlready.hf.lmeval_tasks import export_lm_eval; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
