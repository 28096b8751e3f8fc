"""Upper bounds of the run configuration: sizes, seeds, lengths against the model's context, the stage of a
config file. Each bad value is a one-line ConfigError naming the field, raised by ``resolve`` before a stage
touches the disk."""

from __future__ import annotations

import json

import pytest

from rlready import cli, config, recipes
from rlready.config import ConfigError
from rlready.models.presets import PRESETS


def _error(stage: str = "pretrain", preset: str = "tiny", **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        recipes.resolve(stage, preset, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("stage", "overrides", "names"),
    [
        ("pretrain", [("data.vocab_size", "1000000000")], ["data.vocab_size", "1048576"]),
        ("pretrain", [("data.world_chars", "1e13")], ["data.world_chars"]),
        ("pretrain", [("data.reasoning_max_steps", "1e9")], ["data.reasoning_max_steps"]),
        ("pretrain", [("loss.k", "1e9")], ["loss.k"]),
        ("pretrain", [("loss.chunk_size", "1e12")], ["loss.chunk_size"]),
        ("pretrain", [("train.batch_size", "1e9"), ("train.micro_batch", "1e9")], ["train.batch_size"]),
        ("pretrain", [("train.micro_batch", "1e9")], ["train.micro_batch"]),
        ("pretrain", [("eval.samples", "1e9")], ["eval.samples"]),
        ("pretrain", [("eval.knowledge_questions", "1e9")], ["eval.knowledge_questions"]),
        ("pretrain", [("eval.reasoning_problems", "1e9")], ["eval.reasoning_problems"]),
        ("rl", [("rl.prompts_per_step", "1e9")], ["rl.prompts_per_step"]),
        ("rl", [("rl.group_size", "1e9")], ["rl.group_size"]),
        ("rl", [("rl.prompts_per_step", "4096"), ("rl.group_size", "4096")], ["rl.prompts_per_step", "x"]),
        ("rl", [("rl.gen_batch", "1e9")], ["rl.gen_batch"]),
        ("rl", [("rl.micro_batch", "1e9")], ["rl.micro_batch"]),
        ("rl", [("rl.train_problems", "1e9")], ["rl.train_problems"]),
        ("rl", [("rl.task_max_steps", "1e9")], ["rl.task_max_steps"]),
        ("rl", [("rl.reward_workers", "1e6")], ["rl.reward_workers"]),
    ],
)
def test_sizes_have_an_upper_bound(stage, overrides, names):
    message = _error(stage, overrides=overrides)
    for name in names:
        assert name in message


def test_largest_allowed_sizes_resolve():
    cfg = recipes.resolve(
        "pretrain",
        "tiny",
        overrides=[
            ("data.vocab_size", str(config.MAX_VOCAB_SIZE)),
            ("train.batch_size", str(config.MAX_ITEMS)),
            ("train.micro_batch", str(config.MAX_ITEMS)),
            ("eval.samples", str(config.MAX_ITEMS)),
        ],
    )
    assert cfg.data.vocab_size == 2**20 and cfg.train.batch_size == 2**20


@pytest.mark.parametrize("raw", ["-1", "1e29", str(2**32)])
def test_seed_out_of_range_names_the_field_and_range(raw):
    message = _error(overrides=[("seed", raw)])
    assert message.startswith("seed must be in [0, 4294967295]")


def test_seed_range_ends_are_accepted():
    for seed in (0, 2**32 - 1):
        assert recipes.resolve("pretrain", "tiny", overrides=[("seed", str(seed))]).seed == seed


def test_max_positions_come_from_the_preset_or_the_init_config(tmp_path):
    cfg = recipes.resolve("pretrain", "dense-1b")
    assert config.model_max_positions(cfg) == PRESETS["dense-1b"].max_position_embeddings == 32768
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 96}))
    cfg.model.init = str(tmp_path)
    assert config.model_max_positions(cfg) == 96
    for text in ("{not json", json.dumps({"n_positions": 96}), json.dumps([1])):
        (tmp_path / "config.json").write_text(text)
        assert config.model_max_positions(cfg) is None
    cfg.model.init = str(tmp_path / "missing")
    assert config.model_max_positions(cfg) is None


@pytest.mark.parametrize(
    ("stage", "overrides", "name"),
    [
        ("pretrain", [("eval.max_new_tokens", "1000000000")], "eval.max_new_tokens"),
        ("pretrain", [("eval.max_new_tokens", "2048")], "eval.max_new_tokens"),  # no room for the prompt
        ("pretrain", [("data.seq_len", "2049")], "data.seq_len"),
        ("midtrain", [("data.seq_len", "4096")], "data.seq_len"),
        ("rl", [("rl.max_new_tokens", "4096")], "rl.max_new_tokens"),
        ("rl", [("eval.max_new_tokens", "4096")], "eval.max_new_tokens"),
    ],
)
def test_lengths_must_fit_the_preset(stage, overrides, name):
    message = _error(stage, overrides=overrides)
    assert name in message and "2048" in message and "preset 'tiny'" in message


def test_lengths_must_fit_the_init_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 200}))
    init = [("model.init", str(tmp_path))]
    message = _error("midtrain", overrides=init)  # tiny's mid-training windows are 256 tokens
    assert "data.seq_len" in message and "200" in message and "config.json" in message
    message = _error("rl", overrides=[*init, ("rl.max_new_tokens", "200")])
    assert "rl.max_new_tokens" in message
    cfg = recipes.resolve("rl", "tiny", overrides=[*init, ("rl.max_new_tokens", "199")])
    assert cfg.rl.max_new_tokens == 199  # RL trains on no windows: data.seq_len is not its concern


def test_an_unreadable_init_is_left_to_the_stage():
    cfg = recipes.resolve("midtrain", "tiny", overrides=[("model.init", "/nonexistent/model")])
    assert cfg.model.init == "/nonexistent/model"


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("stage", config.STAGES)
def test_every_preset_default_fits_its_context(stage, preset):
    recipes.resolve(stage, preset)


@pytest.mark.parametrize(("fmt", "text"), [("yaml", "stage: rl\n"), ("toml", 'stage = "rl"\n')])
def test_a_config_file_for_another_stage_is_refused(tmp_path, fmt, text):
    path = tmp_path / f"run.{fmt}"
    path.write_text(text + ("train:\n  max_steps: 5\n" if fmt == "yaml" else "[train]\nmax_steps = 5\n"))
    message = _error("pretrain", file=path)
    assert str(path) in message and "'rl'" in message and "'pretrain'" in message
    assert recipes.resolve("rl", "tiny", file=path).train.max_steps == 5


def test_a_stage_override_must_match_the_command():
    assert "--stage 'rl'" in _error("pretrain", overrides=[("stage", "rl")])
    assert recipes.resolve("rl", "tiny", overrides=[("stage", "rl")]).stage == "rl"


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (["--data.vocab_size", "1000000000"], "data.vocab_size"),
        (["--eval.max_new_tokens", "1000000000"], "eval.max_new_tokens"),
        (["--train.batch_size", "1e9"], "train.batch_size"),
        (["--seed", "-1"], "seed"),
        (["--seed", "1e29"], "seed"),
        (["--config", "{stage_file}"], "stage"),
    ],
)
def test_cli_reports_one_line_and_writes_nothing(tmp_path, capsys, args, name):
    stage_file = tmp_path / "rl.yaml"
    stage_file.write_text("stage: rl\n")
    out = tmp_path / "run"
    argv = ["pretrain", "--out", str(out), *(a.format(stage_file=stage_file) for a in args)]
    assert cli.main([*argv, "--train.max_steps", "1"]) == cli.EXIT_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlready: error: ") and name in lines[0], lines
    assert not out.exists()


def test_study_checks_every_stage_length_before_starting(tmp_path):
    from rlready import study

    with pytest.raises(ConfigError, match="rl.max_new_tokens plus the prompt"):
        study.run_study("tiny", tmp_path / "s", extra=["--rl.rl.max_new_tokens", "100000"])
    assert not (tmp_path / "s").exists()
