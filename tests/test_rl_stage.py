"""The RL stage (``rlready rl``): reward shaping, packing, the GRPO update, dynamic sampling wiring, rollouts,
a full run with its metrics and eval.json, exact resume from a checkpoint, and bad configuration."""

from __future__ import annotations

import json
import operator
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rlready import recipes
from rlready.config import ConfigError
from rlready.metrics import paired_gain
from rlready.rl.batch import Group, pack, token_logprobs
from rlready.rl.rollout import Completion, HFRollout
from rlready.rl.sampling import collect_informative_groups
from rlready.rl.tasks import PromptStream, Task
from rlready.train import rl


def _load(path: Path):
    from rlready.data.tokenizer import load_tokenizer
    from rlready.models import load_model

    return load_model(path), load_tokenizer(path)


# -- pure pieces --------------------------------------------------------------------------------------------


def test_entropy_collapse_detection() -> None:
    assert not rl.entropy_collapsed([2.0], 0.5)
    assert not rl.entropy_collapsed([2.0, 1.5, 1.01], 0.5)
    assert rl.entropy_collapsed([2.0, 1.5, 0.99], 0.5)
    assert not rl.entropy_collapsed([0.5, 1.0, 2.0], 0.5)  # a rise is no collapse


def _group(prompt, responses, rewards, truncated=None):
    truncated = truncated or [False] * len(responses)
    comps = [Completion(prompt, r, "", t) for r, t in zip(responses, truncated, strict=True)]
    return Group(Task("q", "1"), comps, list(rewards), list(rewards))


def test_pack_masks_response_targets_and_truncated() -> None:
    g = _group([5, 6, 7], [[8, 9, 0], [10, 11]], [1.0, 0.0], truncated=[False, True])
    ids, attn, mask = pack([g], pad_id=0, mask_truncated=False)
    assert ids.tolist() == [[5, 6, 7, 8, 9, 0], [5, 6, 7, 10, 11, 0]]
    assert attn.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]]
    # target t of the shifted sequence predicts ids[t + 1]: response tokens are targets 2..
    assert mask.tolist() == [[False, False, True, True, True], [False, False, True, True, False]]
    _, _, mask = pack([g], pad_id=0, mask_truncated=True)
    assert mask[1].sum() == 0 and mask[0].sum() == 3


# -- the update and dynamic sampling ------------------------------------------------------------------------


def _seq_logprob(model, prompt, response) -> float:
    ids = torch.tensor([prompt + response])
    logp, _ = token_logprobs(model, ids, torch.ones_like(ids), 1.0)
    return float(logp[0, len(prompt) - 1 :].sum().detach())


def _update(model, optimizer, groups, cfg):
    """One process's GRPO update, as the RL stage makes it (pad and EOS id 0)."""
    from rlready.train import dist

    tok = SimpleNamespace(pad_token_id=0, eos_token_id=0)
    return rl._Updater(cfg, dist.init(), model, model, optimizer, tok)(groups)


@pytest.mark.parametrize("minibatches", [1, 2])
def test_update_moves_policy_toward_rewarded_responses(tiny_model: Path, minibatches: int) -> None:
    from rlready.train.lm import make_optimizer

    model, _ = _load(tiny_model)
    cfg = recipes.resolve(
        "rl", "tiny", overrides=[("rl.group_size", "2"), ("rl.minibatches", str(minibatches))]
    )
    cfg.train.lr = 1e-2
    opt = make_optimizer(model, cfg)
    prompts = [[20, 21, 22], [30, 31]]
    good, bad = [[40, 41, 42], [50, 51]], [[60, 61], [70, 71, 72, 73]]
    groups = [_group(p, [g, b], [1.0, 0.0]) for p, g, b in zip(prompts, good, bad, strict=True)]
    before = [
        (_seq_logprob(model, p, g), _seq_logprob(model, p, b))
        for p, g, b in zip(prompts, good, bad, strict=True)
    ]
    w0 = [p.detach().clone() for p in model.parameters()]
    stats = _update(model, opt, groups, cfg)
    assert stats is not None and stats["updates"] == minibatches
    assert any(not torch.equal(a, b) for a, b in zip(w0, model.parameters(), strict=True))
    with torch.no_grad():
        after = [
            (_seq_logprob(model, p, g), _seq_logprob(model, p, b))
            for p, g, b in zip(prompts, good, bad, strict=True)
        ]
    if minibatches == 1:  # one update on both groups: each rewarded response up, each other one down
        for (lg, lb), (ag, ab) in zip(before, after, strict=True):
            assert ag > lg and ab < lb
    else:  # each update sees one group; the last group moved the right way, and the margins grew overall
        assert after[-1][0] > before[-1][0] and after[-1][1] < before[-1][1]
    assert sum(g - b for g, b in after) > sum(g - b for g, b in before)
    for key in ("loss", "entropy", "clip_frac_low", "clip_frac_high", "approx_kl", "grad_norm"):
        assert key in stats


def test_update_skips_zero_variance_and_fully_masked(tiny_model: Path) -> None:
    from rlready.train.lm import make_optimizer

    model, _ = _load(tiny_model)
    cfg = recipes.resolve("rl", "tiny", overrides=[("rl.group_size", "2"), ("rl.minibatches", "1")])
    cfg.rl.mask_truncated = True
    opt = make_optimizer(model, cfg)
    g = _group([20, 21], [[40, 41], [50]], [1.0, 0.0], truncated=[True, True])
    assert _update(model, opt, [g], cfg) is None


class _FakeBackend:
    """Responses are the prompt's index repeated; the answer decides which groups vary."""

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompts, n, max_new_tokens, temperature, top_p=1.0, seeds=None):
        self.calls += 1
        return [
            [Completion([1], [2] * (i + 1), f"#### {i}", i == max_new_tokens) for i in range(n)]
            for _ in prompts
        ]


class _FakeScorer:
    def score(self, texts, answers):
        # "vary" answers give 1 to the first response only; others give all-equal rewards.
        return [float(a == "vary" and t == "#### 0") for t, a in zip(texts, answers, strict=True)], 1


def test_dynamic_sampling_wiring() -> None:
    cfg = recipes.resolve(
        "rl",
        "tiny",
        overrides=[
            ("rl.group_size", "3"),
            ("rl.prompts_per_step", "2"),
            ("rl.minibatches", "1"),
            ("rl.max_new_tokens", "3"),
        ],
    )
    tasks = [Task("a", "same"), Task("b", "vary"), Task("c", "same"), Task("d", "same")]
    stream = PromptStream(tasks, seed=0)
    backend = _FakeBackend()

    def round_(_missing):
        return rl.rollout_round(backend, _FakeScorer(), stream.take(2), cfg.rl, [0, 1])[0]

    batch = collect_informative_groups(round_, 2, max_rounds=10, tol=cfg.rl.std_tol)
    assert len(batch.groups) == 2 and not batch.capped
    assert all(g.task.answer == "vary" for g in batch.groups)
    assert batch.rounds == backend.calls and batch.dropped_zero_variance == 2 * batch.rounds - 2
    groups, failures = rl.rollout_round(backend, _FakeScorer(), [Task("x", "vary")], cfg.rl, [0])
    assert failures == 1 and groups[0].correct == [1.0, 0.0, 0.0]
    # the overlong penalty is added to the reward only when enabled
    cfg.rl.overlong_buffer = 2
    groups, _ = rl.rollout_round(backend, _FakeScorer(), [Task("x", "vary")], cfg.rl, [0])
    assert groups[0].rewards == pytest.approx([1.0, -0.5, -1.0])


def test_hf_rollout_shapes_and_truncation(tiny_model: Path) -> None:
    model, tok = _load(tiny_model)
    torch.manual_seed(0)
    outs = HFRollout(model, tok, gen_batch=6).generate(["Q: Mia has 3 apples.", "Q: x"], 3, 5, 1.0)
    assert [len(g) for g in outs] == [3, 3]
    for group, prompt in zip(outs, ["Q: Mia has 3 apples.", "Q: x"], strict=True):
        for c in group:
            assert c.prompt_ids == tok(prompt)["input_ids"]
            assert 1 <= len(c.ids) <= 5
            assert c.truncated == (tok.eos_token_id not in c.ids)
            if c.truncated:
                assert len(c.ids) == 5
            else:
                assert c.ids[-1] == tok.eos_token_id
    with pytest.raises(ValueError, match="n and max_new_tokens"):
        HFRollout(model, tok).generate(["a"], 0, 5, 1.0)


# -- a whole run, and exact resume --------------------------------------------------------------------------

_RUN = [
    ("train.max_steps", "4"),
    ("train.checkpoint_every", "2"),
    ("rl.prompts_per_step", "2"),
    ("rl.group_size", "4"),
    ("rl.minibatches", "2"),
    ("rl.max_new_tokens", "6"),
    ("rl.max_rounds", "3"),
    ("rl.eval_every", "2"),
    ("eval.reasoning_problems", "3"),
    ("eval.samples", "4"),
    ("eval.pass_k", "2"),
    ("eval.max_new_tokens", "6"),
    ("log.progress", "lines"),
]


# Two short runs (about a minute on 2 CPU cores): the tests using them are marked slow.
@pytest.fixture(scope="module")
def finished_run(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The untrained model almost never writes the answer after ####; a lexicographic comparison gives groups
    # that vary, so updates happen. operator.lt is picklable for the spawned reward workers.
    mp = pytest.MonkeyPatch()
    mp.setattr("rlready.rl.rewards.get_reward", lambda name: operator.lt)
    cfg = recipes.resolve("rl", "tiny", overrides=[*_RUN, ("model.init", str(tiny_model))])
    out = tmp_path_factory.mktemp("rl") / "run"
    try:
        rl.run(cfg, out)
        # Resume: drop the results and the last state, so the same command resumes from step 2.
        ref = {k: v.clone() for k, v in _load(out / "final")[0].state_dict().items()}
        shutil.rmtree(out / "final")
        (out / "eval.json").unlink()
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]
        rl.run(cfg, out)
    finally:
        mp.undo()
    torch.save(ref, out.parent / "reference.pt")
    return out


@pytest.mark.slow
def test_run_writes_metrics_eval_and_final(finished_run: Path) -> None:
    from transformers import AutoModelForCausalLM

    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # steps redone after the resume are logged once
    for key in (
        "reward_mean",
        "accuracy",
        "response_len_mean",
        "response_len_max",
        "truncation_rate",
        "zero_variance_frac",
        "gen_rounds",
        "reward_failures",
        "entropy_collapse",
    ):
        assert all(key in r for r in records), key
    trained = [r for r in records if "entropy" in r]
    assert trained, "no step trained"
    for key in ("entropy", "clip_frac_low", "clip_frac_high", "loss"):
        assert all(key in r for r in trained)
    assert "eval_avg@k" in records[1]
    assert all(r["response_len_max"] <= 6 for r in records)
    ev = json.loads((finished_run / "eval.json").read_text())
    for d in (ev, ev["initial"]):
        for key in ("avg@k", "cons@k", "pass@k", "avg@4", "cons@4", "pass@2", "pass@4", "avg@1"):
            assert 0.0 <= d[key] <= 1.0
        assert d["avg@k"] == d["avg@4"] and d["pass@k"] == d["pass@2"] and d["cons@k"] == d["cons@4"]
        per_problem = d["avg@k_per_problem"]
        assert len(per_problem) == d["problems"]
        assert sum(per_problem) / len(per_problem) == pytest.approx(d["avg@k"], abs=1e-12)
    gain, se = paired_gain(ev["initial"]["avg@k_per_problem"], ev["avg@k_per_problem"])
    assert ev["avg@k_gain"] == pytest.approx(ev["avg@k"] - ev["initial"]["avg@k"], abs=1e-12)
    assert (ev["avg@k_gain"], ev["avg@k_gain_se"]) == (gain, se)
    assert ev["step"] == 4
    model = AutoModelForCausalLM.from_pretrained(finished_run / "final")
    assert model.config.vocab_size > 0


@pytest.mark.slow
def test_resume_gives_the_same_final_weights(finished_run: Path) -> None:
    ref = torch.load(finished_run.parent / "reference.pt")
    resumed = _load(finished_run / "final")[0].state_dict()
    assert ref.keys() == resumed.keys()
    for name, tensor in ref.items():
        assert torch.equal(tensor, resumed[name]), name


@pytest.mark.slow
def test_finished_run_is_not_retrained(finished_run: Path, tiny_model: Path) -> None:
    cfg = recipes.resolve("rl", "tiny", overrides=[*_RUN, ("model.init", str(tiny_model))])
    before = (finished_run / "metrics.jsonl").read_text()
    assert rl.run(cfg, finished_run)["step"] == 4
    assert (finished_run / "metrics.jsonl").read_text() == before
    other = recipes.resolve(
        "rl", "tiny", overrides=[*_RUN, ("model.init", str(tiny_model)), ("rl.eps_high", "0.3")]
    )
    with pytest.raises(ConfigError, match="different configuration"):
        rl.run(other, finished_run)


def _tree(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.mark.slow
def test_overwrite_with_bad_input_leaves_a_finished_run_untouched(
    finished_run: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(finished_run, out)
    before = _tree(out)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"question": "1+1?", "answer": "2"}\n{oops\n')
    bad_init = tmp_path / "gpt2ish"
    bad_init.mkdir()
    (bad_init / "config.json").write_text('{"model_type": "qwen3"}')
    for key, value in (
        ("rl.data", str(tmp_path / "nope.jsonl")),
        ("rl.data", str(bad_jsonl)),
        ("model.init", str(bad_init)),
    ):
        cfg = recipes.resolve("rl", "tiny", overrides=[*_RUN, ("model.init", str(tiny_model)), (key, value)])
        with pytest.raises(ValueError):
            rl.run(cfg, out, overwrite=True)
        assert _tree(out) == before, (key, value)
        with pytest.raises(ValueError):
            rl.run(cfg, tmp_path / "new")
        assert not (tmp_path / "new").exists(), (key, value)


# -- configuration and CLI ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rl.group_size", "1", "rl.group_size must be >= 2"),
        ("rl.minibatches", "0", "rl.minibatches must be >= 1"),
        ("rl.minibatches", "500", "must be <= rl.prompts_per_step"),
        ("rl.backend", "tgi", "rl.backend must be cached, hf or vllm"),
        ("rl.overlong_buffer", "48", "must be < rl.max_new_tokens"),
        ("rl.temperature", "0", "rl.temperature must be > 0"),
        ("rl.eps_low", "1.5", "rl.eps_low must be in"),
        ("rl.entropy_drop", "1", "rl.entropy_drop must be in"),
        ("rl.reward", "gsm8k", "needs rl.data"),
        ("rl.reward", "nope", "rl.reward must be one of"),
        ("rl.reward_timeout_s", "0", "rl.reward_timeout_s must be > 0"),
        ("rl.mask_truncated", "maybe", "must be true or false"),
    ],
)
def test_bad_rl_config_is_one_line_error(field: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        recipes.resolve("rl", "tiny", overrides=[(field, value)])
    assert "\n" not in str(err.value)


def test_rl_defaults_follow_the_paper() -> None:
    cfg = recipes.resolve("rl", "dense-4b")
    assert (cfg.rl.prompts_per_step, cfg.rl.group_size, cfg.rl.temperature) == (128, 16, 1.0)
    assert (cfg.rl.eps_low, cfg.rl.eps_high, cfg.train.lr, cfg.train.max_steps) == (0.2, 0.28, 1e-6, 1000)
    assert cfg.rl.minibatches > 1 and cfg.train.decay_fraction == 0.0 and cfg.train.warmup_steps == 0
    assert (cfg.eval.samples, cfg.eval.pass_k) == (128, 64)
    tiny = recipes.resolve("rl", "tiny")
    assert tiny.rl.minibatches > 1 and tiny.train.final_lr == tiny.train.lr


def test_cli_registers_rl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rlready.cli import build_parser, main

    assert "rl" in build_parser().format_help()
    with pytest.raises(SystemExit):
        main(["rl", "--out", str(tmp_path / "x")])  # --init is required
    assert "--init" in capsys.readouterr().err
    assert main(["rl", "--out", str(tmp_path / "x"), "--init", str(tmp_path / "none")]) == 2
    assert "rl needs --init" in capsys.readouterr().err
