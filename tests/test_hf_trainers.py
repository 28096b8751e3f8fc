"""The loss bridges and the GRPO helpers inside the real trainers: transformers' Trainer, TRL's SFTTrainer and
GRPOTrainer, on CPU with tiny random Qwen3 models and local tokenizers (no hub).

``bridges`` tests: ``make test-bridges`` installs the extras (trl brings accelerate, which Trainer needs).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from test_hf_bridge import KNOBS, VOCAB, tiny
from test_losses_reference import ref_loss

pytestmark = pytest.mark.bridges

accelerate = pytest.importorskip(
    "accelerate", reason="transformers' Trainer needs accelerate (pip install trl)"
)

from transformers import Trainer, TrainingArguments  # noqa: E402

from rlready.hf import ShapedLossCallback, apply_shaped_loss, remove_shaped_loss, shaped_loss_func  # noqa: E402

SEQ = 16
# Valid (shifted) label counts of the four examples: however the Trainer's shuffle pairs them into two
# micro-batches, the micro-batches hold different counts (28/5, 19/14 or 16/17), so a loss averaged per
# micro-batch differs from the mean over the whole batch.
VALID = (15, 13, 4, 1)


def examples() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(11)
    rows = []
    for valid in VALID:
        ids = torch.randint(0, VOCAB, (SEQ,), generator=g)
        mask = torch.ones(SEQ, dtype=torch.long)
        labels = ids.clone()
        n_tokens = min(SEQ, valid + 3)  # right padding after the example's tokens
        mask[n_tokens:] = 0
        labels[n_tokens:] = -100
        labels[: n_tokens - valid] = -100  # a prompt: the first label is never a target after the shift
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert [int((r["labels"][1:] != -100).sum()) for r in rows] == list(VALID)
    return rows


def sgd_args(tmp_path, **kwargs) -> TrainingArguments:
    """One optimizer step of plain SGD: no weight decay, warmup, schedule or clipping to get in the way."""
    return TrainingArguments(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        weight_decay=0.0,
        warmup_steps=0,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        dataloader_num_workers=0,
        seed=0,
        **kwargs,
    )


def whole_batch_step(model: torch.nn.Module, lr: float = 0.5) -> torch.nn.Module:
    """The step by hand: the shaped loss summed over every valid token of the batch / their count, one
    torch.optim.SGD step."""
    model = copy.deepcopy(model).train()
    batch = {k: torch.stack([r[k] for r in examples()]) for k in ("input_ids", "attention_mask", "labels")}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    loss = ref_loss(logits[:, :-1], labels[:, 1:], reduction="sum", **KNOBS) / (labels[:, 1:] != -100).sum()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss.backward()
    opt.step()
    return model


def assert_same_weights(got: torch.nn.Module, want: torch.nn.Module, start: torch.nn.Module) -> None:
    for (name, a), b, s in zip(want.named_parameters(), got.parameters(), start.parameters(), strict=True):
        assert not torch.equal(a, s), f"{name} did not move"
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)


def train(model, tmp_path, **trainer_kwargs) -> torch.nn.Module:
    trainer = Trainer(model=model, args=sgd_args(tmp_path), train_dataset=examples(), **trainer_kwargs)
    trainer.train()
    return model


def test_trainer_with_gradient_accumulation_gives_the_whole_batch_update(tmp_path):
    start = tiny(seed=5)
    want = whole_batch_step(start)
    got = train(copy.deepcopy(start), tmp_path, compute_loss_func=shaped_loss_func(**KNOBS))
    assert_same_weights(got, want, start)


def test_trainer_with_the_patched_model_gives_the_whole_batch_update(tmp_path):
    start = tiny(seed=5)
    want = whole_batch_step(start)
    model = copy.deepcopy(start)
    state = apply_shaped_loss(model, **KNOBS)
    train(model, tmp_path, callbacks=[ShapedLossCallback(state)])
    remove_shaped_loss(model)
    assert_same_weights(model, want, start)


def test_a_loss_averaged_per_micro_batch_does_not_pass_that_test(tmp_path):
    """The check above is sensitive: dropping num_items_in_batch (a mean per micro-batch) moves the weights."""
    start = tiny(seed=5)
    want = whole_batch_step(start)
    inner = shaped_loss_func(**KNOBS)
    got = train(
        copy.deepcopy(start),
        tmp_path,
        compute_loss_func=lambda out, labels, num_items_in_batch=None: inner(out, labels),
    )
    worst = max(
        ((a - b).abs().max() / a.abs().max()).item()
        for a, b in zip(want.parameters(), got.parameters(), strict=True)
    )
    assert worst > 1e-3


def test_trainer_loss_func_at_neutral_knobs_equals_the_trainers_own_loss(tmp_path):
    start = tiny(seed=6)
    ours = train(copy.deepcopy(start), tmp_path, compute_loss_func=shaped_loss_func())
    theirs = train(copy.deepcopy(start), tmp_path)  # the model's own ForCausalLMLoss with num_items_in_batch
    for (name, a), b in zip(theirs.named_parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)


# ------------------------------------------------------------------------------------------ TRL SFTTrainer


def word_tokenizer():
    from test_models import make_tokenizer

    return make_tokenizer(VOCAB - 2)


def sft_dataset():
    datasets = pytest.importorskip("datasets")
    g = torch.Generator().manual_seed(12)
    texts = [
        " ".join(f"w{int(i)}" for i in torch.randint(0, VOCAB - 2, (n,), generator=g)) for n in (9, 14, 5, 11)
    ]
    return datasets.Dataset.from_list([{"text": t} for t in texts])


def sft(tmp_path, model, **kwargs):
    trl = pytest.importorskip("trl", reason="trl is not installed (pip install 'rlready[trl]')")
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "sft"),
        use_cpu=True,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=2,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
        max_length=32,
        dataset_num_proc=None,
        # SFTConfig turns bf16 autocast on by default; bf16 logits tie often, and a tie at the k-th largest
        # logit may be broken either way by two correct top-k implementations.
        bf16=False,
    )
    return trl.SFTTrainer(
        model=model, args=args, train_dataset=sft_dataset(), processing_class=word_tokenizer(), **kwargs
    )


def reference_loss_func(outputs, labels, num_items_in_batch=None):
    """A compute_loss_func written from scratch: the plain-PyTorch shaped loss on hand-shifted labels."""
    total = ref_loss(outputs.logits[:, :-1], labels[:, 1:], reduction="sum", **KNOBS)
    return total / (num_items_in_batch if num_items_in_batch is not None else (labels[:, 1:] != -100).sum())


def test_sft_trainer_with_the_loss_function_trains_as_the_reference_loss(tmp_path):
    start = tiny(seed=8)
    ours, reference, plain = copy.deepcopy(start), copy.deepcopy(start), copy.deepcopy(start)
    trainer = sft(tmp_path, ours, compute_loss_func=shaped_loss_func(**KNOBS))
    trainer.train()
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 2 and all(math.isfinite(x) for x in logged)
    sft(tmp_path, reference, compute_loss_func=reference_loss_func).train()
    sft(tmp_path, plain).train()  # TRL's own cross-entropy: another update
    for (name, a), b, s in zip(
        reference.named_parameters(), ours.parameters(), start.parameters(), strict=True
    ):
        assert not torch.equal(a, s), f"{name} did not move"
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    differs = max(
        (a - c).abs().max().item() for a, c in zip(ours.parameters(), plain.parameters(), strict=True)
    )
    assert differs > 1e-4


def test_sft_trainer_over_a_patched_model_is_refused_either_way(tmp_path):
    model = tiny(seed=8)
    state = apply_shaped_loss(model, **KNOBS)  # before the trainer: TRL's head would bypass it
    trainer = sft(tmp_path, model, callbacks=[ShapedLossCallback(state)])
    with pytest.raises(ValueError, match="wrapped by TRL's fused LM head"):
        trainer.train()
    model = tiny(seed=8)
    apply_shaped_loss(model, **KNOBS)  # the same without the callback: the decoder's guard stops the step
    with pytest.raises(ValueError, match="around its forward patched by apply_shaped_loss"):
        sft(tmp_path, model).train()
    trainer = sft(tmp_path, tiny(seed=8))
    apply_shaped_loss(trainer.model, **KNOBS)  # after: TRL asks the patched forward for log-probabilities
    with pytest.raises(ValueError, match="compute_loss_func=shaped_loss_func"):
        trainer.train()


# ------------------------------------------------------------------------------------------ TRL GRPOTrainer


@pytest.mark.slow
def test_grpo_trainer_runs_two_steps_with_the_recipe_and_the_arithmetic_reward(tmp_path):
    trl = pytest.importorskip("trl", reason="trl is not installed (pip install 'rlready[trl]')")
    datasets = pytest.importorskip("datasets")
    from rlready.data import tokenizer as tokenizers
    from rlready.data import world
    from rlready.hf import GRPO_RECIPE, arithmetic_reward, grpo_config, synthetic_prompts
    from rlready.models import build_config, build_model
    from rlready.rl.rewards import hash_answer_reward

    w = world.World(world.WorldConfig(seed=0))
    tok = tokenizers.train_tokenizer(w.documents("midtrain", n_chars=40000), 300)
    torch.manual_seed(0)
    model = build_model(build_config("tiny", vocab_size=len(tok)))
    rows = synthetic_prompts(8, world_seed=0, max_steps=2, max_operand=9)
    config = grpo_config(
        output_dir=str(tmp_path / "grpo"),
        use_cpu=True,
        num_generations=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_completion_length=8,
        max_steps=2,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    for key, value in GRPO_RECIPE.items():
        if key not in ("num_generations", "per_device_train_batch_size"):  # set for this tiny run
            assert getattr(config, key) == value, key
    calls = []

    def spy(prompts, completions, **columns):
        """TRL's call: every completion with its prompt's dataset row; rewards as hash_answer_reward gives them."""
        rewards = arithmetic_reward(prompts, completions, **columns)
        calls.append((list(prompts), list(completions), list(columns["answer"]), rewards))
        return rewards

    spy.__name__ = "arithmetic_reward"
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=[spy],
        args=config,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tok,
    )
    trainer.train()
    assert trainer.state.global_step == 2
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2
    gold = {r["prompt"]: r["answer"] for r in rows}
    seen = 0
    for prompts, completions, answers, rewards in calls:
        assert len(prompts) == len(completions) == len(answers) == len(rewards) == 8  # 2 prompts x 4 samples
        for prompt, completion, answer, reward in zip(prompts, completions, answers, rewards, strict=True):
            assert isinstance(completion, str) and answer == gold[prompt]
            assert reward == hash_answer_reward(completion, answer)
            seen += 1
    assert len(calls) == 2 and seen == 16  # one generation batch per optimizer step
    for h in logs:  # TRL logs the mean of each reward function under its name
        assert 0.0 <= h["rewards/arithmetic_reward/mean"] <= 1.0
