"""rlready.hf's GRPO helpers: TRL-signature rewards scored as ``rlready rl`` scores, the recipe's GRPOConfig, and
dataset rows that are the prompts of ``rlready rl``. The run inside TRL's GRPOTrainer is in
tests/test_hf_trainers.py."""

from __future__ import annotations

import json

import pytest

from rlready import recipes
from rlready.hf import (
    GRPO_RECIPE,
    arithmetic_reward,
    grpo_config,
    gsm8k_reward,
    jsonl_prompts,
    math_reward,
    reward_function,
    synthetic_prompts,
)
from rlready.rl.tasks import load_tasks


def test_hash_rewards_read_the_last_answer_of_each_completion_against_its_row():
    completions = ["3 + 4 = 7.\n#### 7", "#### 8", "no answer", "#### 7\n#### 1,234.", "####7"]
    answers = ["7", "7", "7", "1234", "7"]
    assert arithmetic_reward(["p"] * 5, completions, answer=answers, trainer_state=None) == [1, 0, 0, 1, 1]
    # GSM8K rows hold the worked answer; its '#### n' is the gold, as rlready rl reads it from JSONL.
    assert gsm8k_reward(["p"] * 2, ["#### 72", "#### 27"], answer=["48 + 24 = 72\n#### 72"] * 2) == [1.0, 0.0]
    # Conversational datasets hand over the messages; the last one is the completion.
    chat = [[{"role": "assistant", "content": "so #### 5"}]]
    assert arithmetic_reward(["p"], chat, answer=["5"]) == [1.0]


def test_a_reward_that_raises_scores_zero_and_is_counted():
    reward = reward_function("arithmetic")
    assert reward(["p", "p"], ["#### 1", "#### 2"], answer=["not a number", "2"]) == [0.0, 1.0]
    assert reward.failures == 1
    assert reward.__name__ == "arithmetic_reward"


def test_reward_refuses_a_dataset_without_the_answer_column_and_unknown_rewards():
    with pytest.raises(ValueError, match="no 'answer' column.*solution"):
        arithmetic_reward(["p"], ["#### 1"], solution=["1"], trainer_state=None)
    assert reward_function("gsm8k", answer_field="solution")(["p"], ["#### 1"], solution=["#### 1"]) == [1.0]
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        reward_function("nope")
    with pytest.raises(ValueError, match="timeout_s"):
        reward_function("math", timeout_s=0)


def test_math_reward_scores_boxed_answers_in_a_worker_process():
    solution = "Half of it: $\\boxed{\\frac{1}{2}}$."  # a MATH row's solution as the gold
    completions = ["so \\boxed{0.5}", "\\boxed{1/3}", "0.5 without a box"]
    try:
        assert math_reward(["p"] * 3, completions, answer=[solution] * 3) == [1.0, 0.0, 0.0]
        assert math_reward._scorer is not None  # scored under rlready rl's timeout, in worker processes
    finally:
        math_reward.close()


def test_synthetic_prompts_are_the_prompts_of_rlready_rl():
    cfg = recipes.resolve(
        "rl", "tiny", overrides=[("rl.train_problems", "16"), ("eval.reasoning_problems", "8")]
    )
    train, held = load_tasks(cfg)
    kwargs = {"world_seed": cfg.data.world_seed, "max_steps": cfg.rl.task_max_steps}
    kwargs["max_operand"] = cfg.rl.task_max_operand
    assert synthetic_prompts(16, **kwargs) == [{"prompt": t.prompt, "answer": t.answer} for t in train]
    assert synthetic_prompts(8, "eval", **kwargs) == [{"prompt": t.prompt, "answer": t.answer} for t in held]


def test_jsonl_prompts_are_read_as_rl_data(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    rows = [
        {"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(20)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = recipes.resolve("rl", "tiny", overrides=[("rl.data", str(path)), ("rl.reward", "gsm8k")])
    train, held = load_tasks(cfg)
    assert jsonl_prompts(path) == [{"prompt": t.prompt, "answer": t.answer} for t in [*train, *held]]
    assert jsonl_prompts(path)[0] == {"prompt": "Q: What is 0 + 1?\nA:", "answer": "1"}


@pytest.mark.bridges
def test_grpo_config_is_the_papers_recipe_with_overrides(tmp_path):
    pytest.importorskip("trl", reason="trl is not installed (pip install 'rlready[trl]')")
    config = grpo_config(output_dir=str(tmp_path), use_cpu=True, learning_rate=2e-5, max_completion_length=32)
    assert config.loss_type == "dapo" and config.beta == 0.0
    assert (config.epsilon, config.epsilon_high) == (0.2, 0.28)
    assert config.temperature == 1.0 and config.num_generations == 16 and config.scale_rewards == "group"
    assert config.learning_rate == 2e-5 and config.max_completion_length == 32
    assert config.weight_decay == 0.0 and config.lr_scheduler_type == "constant"
    assert GRPO_RECIPE["learning_rate"] == 1e-6 and config.per_device_train_batch_size == 16
    with pytest.raises(TypeError):
        grpo_config(output_dir=str(tmp_path), no_such_field=1)
