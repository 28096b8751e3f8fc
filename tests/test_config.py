"""Run configuration: every field settable from the command line, YAML and TOML; bad values name the field."""

from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from rlready import config, recipes
from rlready.config import ConfigError, LossConfig, RunConfig
from rlready.losses.schedules import Constant, Cosine, Linear, parse_schedule

# One valid, non-default value per field of the pre-/mid-training sections (native Python types).
VALUES: dict[str, object] = {
    "seed": 7,
    "model.preset": "small",
    "model.init": "/models/base",
    "model.rope_theta": 1e6,
    "model.dtype": "bfloat16",
    "data.path": "/data/corpus.jsonl",
    "data.text_field": "body",
    "data.tokenizer": "/tok",
    "data.vocab_size": 512,
    "data.seq_len": 64,
    "data.world_seed": 3,
    "data.world_chars": 1000,
    "data.reasoning_max_steps": 4,
    "data.reasoning_max_operand": 30,
    "data.cache_dir": "/cache",
    "data.document_attention": True,
    "loss.beta": "-0.25",
    "loss.lam_head": "0.1",
    "loss.lam_tail": "linear:0:-0.1",
    "loss.k": 7,
    "loss.chunk_size": 1024,
    "train.max_steps": 11,
    "train.tokens": 11264,  # = 11 steps of 16 x 64 tokens, consistent with train.max_steps above
    "train.batch_size": 16,
    "train.micro_batch": 4,
    "train.lr": 1e-3,
    "train.final_lr": 1e-5,
    "train.warmup_steps": 2,
    "train.decay_fraction": 0.5,
    "train.weight_decay": 0.05,
    "train.grad_clip": 0.5,
    "train.beta1": 0.8,
    "train.beta2": 0.9,
    "train.checkpoint_every": 5,
    "train.keep_checkpoints": 3,
    "train.log_every": 2,
    "train.eval_every": 4,
    "train.autocast": "off",
    "train.fsdp": True,
    "train.max_bad_steps": 5,
    "eval.tokens": 100,
    "eval.knowledge_questions": 3,
    "eval.reasoning_problems": 2,
    "eval.samples": 4,
    "eval.pass_k": 2,
    "eval.temperature": 1.0,
    "eval.top_p": 0.9,
    "eval.max_new_tokens": 8,
    "log.tensorboard": True,
    "log.wandb": True,
    "log.progress": "lines",
}
SECTIONS = ("model", "data", "loss", "train", "eval", "log")
# Fields with one valid value, recorded rather than chosen (tested on their own below).
RECORDED = {"data.world_version"}


def _get(cfg: RunConfig, dotted: str) -> object:
    obj: object = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _expected(dotted: str, value: object) -> object:
    """The configuration's value for ``value`` given to ``dotted``: loss knobs are parsed into schedules."""
    return parse_schedule(value) if dotted in ("loss.beta", "loss.lam_head", "loss.lam_tail") else value


def _as_cli(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _nested(values: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for dotted, value in values.items():
        if "." in dotted:
            section, name = dotted.split(".")
            out.setdefault(section, {})[name] = value  # type: ignore[index]
        else:
            out[dotted] = value
    return out


def _toml(values: dict[str, object]) -> str:
    def lit(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        return repr(v)

    top = [f"{k} = {lit(v)}" for k, v in values.items() if "." not in k]
    lines = top[:]
    for section in SECTIONS:
        items = {k.split(".")[1]: v for k, v in values.items() if k.startswith(section + ".")}
        if items:
            lines.append(f"[{section}]")
            lines += [f"{k} = {lit(v)}" for k, v in items.items()]
    return "\n".join(lines) + "\n"


def test_table_covers_every_field_of_the_stage_sections():
    fields = {"seed"}
    for section in SECTIONS:
        fields |= {f"{section}.{f.name}" for f in dataclasses.fields(getattr(RunConfig(), section))}
    assert fields == set(VALUES) | RECORDED


@pytest.mark.parametrize("dotted", sorted(VALUES))
def test_each_field_from_the_command_line(dotted):
    value = VALUES[dotted]
    expected = _expected(dotted, value)
    default = _get(recipes.resolve("pretrain", "tiny"), dotted)
    assert default != expected  # otherwise the test would not show the override took effect
    cfg = recipes.resolve(
        "pretrain", "tiny", overrides=config.parse_overrides([f"--{dotted}", _as_cli(value)])
    )
    assert _get(cfg, dotted) == expected
    cfg = recipes.resolve(
        "pretrain", "tiny", overrides=config.parse_overrides([f"--{dotted}={_as_cli(value)}"])
    )
    assert _get(cfg, dotted) == expected


@pytest.mark.parametrize("fmt", ["yaml", "toml"])
def test_every_field_from_a_file(tmp_path, fmt):
    import yaml

    path = tmp_path / f"run.{fmt}"
    path.write_text(yaml.safe_dump(_nested(VALUES)) if fmt == "yaml" else _toml(VALUES))
    cfg = recipes.resolve("pretrain", "tiny", file=path)
    for dotted, value in VALUES.items():
        assert _get(cfg, dotted) == _expected(dotted, value), dotted


def test_precedence_defaults_then_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  max_steps: 50\n  lr: 0.01\n")
    cfg = recipes.resolve("pretrain", "tiny", file=path, overrides=[("train.lr", "0.02")])
    assert (cfg.train.max_steps, cfg.train.lr) == (50, 0.02)
    assert cfg.train.batch_size == recipes.resolve("pretrain", "tiny").train.batch_size


def test_optional_fields_accept_none_and_integers_accept_integral_floats():
    cfg = recipes.resolve(
        "pretrain", "tiny", overrides=[("loss.chunk_size", "none"), ("train.max_steps", "1e3")]
    )
    assert cfg.loss.chunk_size is None and cfg.train.max_steps == 1000
    cfg = recipes.resolve("pretrain", "tiny", overrides=[("train.max_steps", "1_000")])
    assert cfg.train.max_steps == 1000


def test_midtrain_defaults_follow_the_paper_recipe():
    pre, mid = recipes.resolve("pretrain", "tiny"), recipes.resolve("midtrain", "tiny")
    # The RoPE base is raised for the paper's 16K contexts only; at 256 tokens the tiny model keeps its own.
    assert mid.model.rope_theta is None and pre.model.rope_theta is None
    assert recipes.resolve("midtrain", "dense-1b").model.rope_theta == 1e6
    assert mid.data.seq_len > pre.data.seq_len
    assert mid.train.lr == pre.train.lr and mid.train.final_lr == pytest.approx(pre.train.lr / 10)
    assert (mid.train.warmup_steps, mid.train.decay_fraction) == (0, 1.0)


@pytest.mark.parametrize(("preset", "max_operand"), [("tiny", 11), ("small", 9)])
def test_every_stage_draws_the_same_problems(preset, max_operand):
    # Mid-training's held-out numbers are RL's starting point only if both draw the same kind of problem, and
    # pre-training teaches the copying those problems need.
    pre, mid, rl = (recipes.resolve(stage, preset) for stage in config.STAGES)
    drawn = {
        (pre.data.reasoning_max_steps, pre.data.reasoning_max_operand),
        (mid.data.reasoning_max_steps, mid.data.reasoning_max_operand),
        (rl.rl.task_max_steps, rl.rl.task_max_operand),
    }
    assert drawn == {(pre.data.reasoning_max_steps, max_operand)}


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ([("loss.k", "0")], "loss.k"),
        ([("loss.k", "-3")], "loss.k"),
        ([("loss.k", "1.5")], "loss.k"),
        ([("loss.k", "1.0")], "loss.k"),
        ([("loss.k", "0.0")], "loss.k"),
        ([("loss.k", "-0.5")], "loss.k"),
        ([("loss.k", "nan")], "loss.k"),
        ([("loss.k", "inf")], "loss.k"),
        ([("loss.k", "many")], "loss.k"),
        ([("loss.beta", "nan")], "loss.beta"),
        ([("loss.beta", "inf")], "loss.beta"),
        ([("loss.beta", "-inf")], "loss.beta"),
        ([("loss.lam_tail", "linear:0:nan")], "loss.lam_tail"),
        ([("loss.lam_head", "abc")], "loss.lam_head"),
        ([("train.max_steps", "-1")], "train.max_steps"),
        ([("train.max_steps", "0")], "train.max_steps"),
        ([("train.warmup_steps", "-1")], "train.warmup_steps"),
        ([("train.checkpoint_every", "-5")], "train.checkpoint_every"),
        ([("train.lr", "abc")], "train.lr"),
        ([("train.lr", "nan")], "train.lr"),
        ([("train.lr", "-1e-3")], "train.lr"),
        ([("train.decay_fraction", "1.5")], "train.decay_fraction"),
        ([("train.fsdp", "maybe")], "train.fsdp"),
        ([("train.autocast", "fp8")], "train.autocast"),
        ([("data.seq_len", "0")], "data.seq_len"),
        ([("data.vocab_size", "100")], "data.vocab_size"),
        ([("data.vocab_size", "257")], "data.vocab_size must be >= 258"),  # bytes, EOS and PAD
        ([("model.rope_theta", "-1")], "model.rope_theta"),
        ([("data.world_version", "5")], "data.world_version 5 cannot be generated"),
        ([("model.dtype", "int8")], "model.dtype"),
        ([("model.preset", "huge")], "huge"),
        ([("eval.pass_k", "9"), ("eval.samples", "8")], "eval.pass_k"),
        ([("seed", "x")], "seed"),
        ([("train.nope", "1")], "train.nope"),
        ([("nope.x", "1")], "nope.x"),
        ([("nope", "1")], "nope"),
        ([("train", "1")], "train"),
        ([("train.lr.x", "1")], "train.lr.x"),
    ],
)
def test_bad_override_names_the_field(overrides, names):
    with pytest.raises(ConfigError, match=None) as err:
        recipes.resolve("pretrain", "tiny", overrides=overrides)
    assert names in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "k", "head"),
    [("100", 100, 100), ("1", 1, 1), ("5000", 5000, 2048), ("0.05", 0.05, 102), ("0.999", 0.999, 2046)],
)
def test_loss_k_is_a_count_or_a_fraction_of_the_vocabulary(tmp_path, text, k, head):
    """An int is a count (capped at V), a float in (0, 1) a fraction: round(k V), at least 1 (docs/method.md §1).
    The kind survives config.json and the file formats, so a run resumes with the same head."""
    cfg = recipes.resolve("pretrain", "tiny", overrides=[("loss.k", text)])
    assert cfg.loss.k == k and type(cfg.loss.k) is type(k)
    assert cfg.loss.weighting(0.0).head_size(2048) == head
    again = config.from_dict(json.loads(config.dumps(cfg)))
    assert again == cfg and type(again.loss.k) is type(k)
    path = tmp_path / "k.toml"
    path.write_text(f"[loss]\nk = {text}\n")
    assert recipes.resolve("pretrain", "tiny", file=path).loss.k == k
    assert recipes.resolve("pretrain", "tiny", overrides=cfg.loss.to_overrides()).loss == cfg.loss


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*tiny"):
        recipes.resolve("pretrain", "huge")


def test_batch_must_split_into_micro_batches():
    with pytest.raises(ConfigError, match="train.micro_batch"):
        recipes.resolve(
            "pretrain", "tiny", overrides=[("train.batch_size", "10"), ("train.micro_batch", "4")]
        )


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("bad.yaml", "train: [1, 2\n", "malformed YAML"),
        ("bad.yml", "train:\n  lr: 1\n bad indent: 2\n", "malformed YAML"),
        ("bad.toml", "[train\nlr = 1\n", "malformed TOML"),
        ("bad2.toml", "[train]\nlr = \n", "malformed TOML"),
        ("list.yaml", "- 1\n- 2\n", "mapping"),
        ("run.json", "{}", r"\.yaml, \.yml or \.toml"),
        ("field.yaml", "train:\n  nope: 1\n", "train.nope"),
        ("section.toml", "[nope]\nx = 1\n", "nope.x"),
        ("value.yaml", "loss:\n  beta: .nan\n", "loss.beta"),
        ("value.toml", "[loss]\nk = 0\n", "loss.k"),
        ("float.toml", "[loss]\nk = 1.0\n", "loss.k.*ambiguous"),
        ("float.yaml", "loss:\n  k: 100.0\n", "loss.k"),
        ("nan.yaml", "loss:\n  k: .nan\n", "loss.k"),
        ("text.yaml", "loss:\n  k: [1]\n", "loss.k"),
        ("bool.toml", "[loss]\nk = true\n", "loss.k"),
        ("type.toml", '[train]\nlr = "abc"\n', "train.lr"),
        ("nested.yaml", "train:\n  lr: {a: 1}\n", "train.lr"),
        ("bool.yaml", "train:\n  max_steps: true\n", "train.max_steps"),
    ],
)
def test_bad_config_files(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        recipes.resolve("pretrain", "tiny", file=path)
    assert "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        recipes.resolve("pretrain", "tiny", file=tmp_path / "none.yaml")


def test_empty_yaml_file_changes_nothing(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert recipes.resolve("pretrain", "tiny", file=path) == recipes.resolve("pretrain", "tiny")


@pytest.mark.parametrize(
    "args",
    [["train.lr", "1"], ["--"], ["--train.lr"], ["--a", "1", "stray"]],
    ids=["bare", "dashes", "novalue", "stray"],
)
def test_malformed_override_arguments(args):
    with pytest.raises(ConfigError):
        config.parse_overrides(args)


def test_saved_config_round_trips():
    cfg = recipes.resolve(
        "midtrain", "tiny", overrides=[(k, _as_cli(v)) for k, v in VALUES.items() if k != "model.preset"]
    )
    text = config.dumps(cfg)
    again = config.from_dict(json.loads(text))
    assert again == cfg
    assert config.dumps(again) == text


def test_token_budget_sets_the_number_of_steps():
    cfg = recipes.resolve(
        "pretrain",
        "tiny",
        overrides=[("train.tokens", "100000"), ("train.batch_size", "16"), ("data.seq_len", "128")],
    )
    assert cfg.train.max_steps == 49  # ceil(100000 / (16 * 128))
    with pytest.raises(config.ConfigError, match="train.tokens must be >= 0"):
        recipes.resolve("pretrain", "tiny", overrides=[("train.tokens", "-5")])


# -- the loss knobs: schedules parsed once, saved as given ----------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("-0.25", Constant),
        ("0", Constant),
        (".5", Constant),
        ("1e-5", Constant),
        ("linear:0.5:0", Linear),
        ("LINEAR:-0.25:0.0", Linear),
        (" cosine:0.5:0 ", Cosine),
    ],
)
def test_a_schedule_knob_round_trips_config_json_byte_identically(raw, kind):
    saved = recipes.resolve("pretrain", "tiny").to_dict()
    saved["loss"].update(beta=raw, lam_head="0.0", lam_tail=raw)
    text = json.dumps(saved, indent=2, sort_keys=True) + "\n"
    cfg = config.from_dict(json.loads(text))
    assert isinstance(cfg.loss.beta, kind) and cfg.loss.beta == parse_schedule(raw)
    assert config.dumps(cfg) == text


def test_knobs_are_schedules_from_the_command_line_and_files(tmp_path):
    cli = recipes.resolve(
        "pretrain", "tiny", overrides=[("loss.beta", "-0.25"), ("loss.lam_tail", "linear:0:-0.1")]
    )
    assert cli.loss.beta == Constant(-0.25) and cli.loss.lam_tail == Linear(0.0, -0.1)
    assert cli.loss.lam_head == Constant(0.0) and cli.loss.beta(0.7) == -0.25
    # Numbers from a file are saved as their str(), as they always were.
    yaml_file, toml_file = tmp_path / "run.yaml", tmp_path / "run.toml"
    yaml_file.write_text("loss:\n  beta: -0.25\n  lam_head: 0\n  lam_tail: 'cosine:0.5:0'\n")
    toml_file.write_text("[loss]\nbeta = -0.25\nlam_head = 0\nlam_tail = 1e-5\n")
    from_yaml = recipes.resolve("pretrain", "tiny", file=yaml_file)
    assert from_yaml.loss.lam_tail == Cosine(0.5, 0.0)
    assert {k: from_yaml.to_dict()["loss"][k] for k in ("beta", "lam_head", "lam_tail")} == {
        "beta": "-0.25",
        "lam_head": "0",
        "lam_tail": "cosine:0.5:0",
    }
    assert recipes.resolve("pretrain", "tiny", file=toml_file).to_dict()["loss"]["lam_tail"] == "1e-05"
    # The default is the constant 0, saved as "0.0".
    assert LossConfig().beta == Constant(0.0) and RunConfig().to_dict()["loss"]["beta"] == "0.0"


@pytest.mark.parametrize(
    "make",
    [
        lambda: recipes.resolve("pretrain", "tiny", overrides=[("loss.lam_tail", "linear:0")]),
        lambda: config.from_dict({"loss": {"lam_tail": "cubic:0:1"}}),
        lambda: config.from_dict({"loss": {"lam_tail": [1, 2]}}),
        lambda: config.from_dict({"loss": {"lam_tail": True}}),
        lambda: LossConfig(lam_tail="abc"),
    ],
    ids=["cli", "config.json", "list", "bool", "constructor"],
)
def test_an_invalid_knob_is_a_one_line_error_naming_the_field(make):
    with pytest.raises(ConfigError, match=r"^loss\.lam_tail: bad schedule") as err:
        make()
    assert "\n" not in str(err.value)


def test_a_knob_assigned_as_text_is_parsed_on_validation():
    cfg = RunConfig()
    cfg.loss.beta = "linear:-0.25:0"  # type: ignore[assignment]
    cfg.validate()
    assert cfg.loss.beta == Linear(-0.25, 0.0) and cfg.to_dict()["loss"]["beta"] == "linear:-0.25:0"


def test_configs_pickle_and_compare_by_value():
    cfg = recipes.resolve(
        "pretrain", "tiny", overrides=[("loss.beta", ".5"), ("loss.lam_head", "cosine:1:0")]
    )
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg and config.dumps(again) == config.dumps(cfg)
    # Equal knobs are equal (and hash alike) whatever their spelling; the spelling is what is saved.
    assert cfg.loss.beta == parse_schedule("0.5") and hash(cfg.loss.beta) == hash(Constant(0.5))
    assert str(cfg.loss.beta) == ".5"


def test_weighting_follows_the_knobs():
    loss = LossConfig(beta="linear:-0.5:0.5", lam_head=0.1, k=7)
    assert loss.scheduled and not LossConfig(beta="-0.25").scheduled
    w = loss.weighting(0.25)
    assert (w.beta, w.lam_head, w.lam_tail, w.k) == (-0.25, 0.1, 0.0, 7)


def test_loss_overrides_resolve_to_the_same_knobs_and_text():
    loss = LossConfig(beta=".5", lam_tail="linear:0:-0.1", k=9, chunk_size=64)
    assert loss.to_overrides() == [
        ("loss.beta", ".5"),
        ("loss.lam_head", "0.0"),
        ("loss.lam_tail", "linear:0:-0.1"),
        ("loss.k", "9"),
    ]
    cfg = recipes.resolve("pretrain", "tiny", overrides=loss.to_overrides())
    assert (
        cfg.loss.knobs()
        == loss.knobs()
        == {"beta": ".5", "lam_head": "0.0", "lam_tail": "linear:0:-0.1", "k": 9}
    )


def test_world_version_is_recorded_and_an_earlier_world_is_not_resumed(tmp_path):
    """config.json records the world's generator; a run recorded before it (an older rlready's, without the
    field) or with another version is refused on resume instead of continued on other text."""
    from rlready.data.world import GENERATOR_VERSION
    from rlready.train import rundir

    cfg = recipes.resolve("pretrain", "tiny")
    assert cfg.to_dict()["data"]["world_version"] == GENERATOR_VERSION
    out = tmp_path / "run"
    rundir.claim(out, cfg, overwrite=False).release()
    (out / "checkpoints").mkdir()  # a run that trained: not replaced silently
    assert rundir.check_run_dir(out, cfg, overwrite=False) == "resume"
    saved = json.loads((out / "config.json").read_text())
    del saved["data"]["world_version"]
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match=f"data.world_version: None there, {GENERATOR_VERSION} now"):
        rundir.check_run_dir(out, cfg, overwrite=False)
    saved["data"]["world_version"] = GENERATOR_VERSION - 1
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(
        ConfigError, match=f"data.world_version: {GENERATOR_VERSION - 1} there, {GENERATOR_VERSION} now"
    ):
        rundir.check_run_dir(out, cfg, overwrite=False)


def _init_run(tmp_path, data: dict) -> str:
    """An --init directory inside a run directory whose config.json records ``data``."""
    run = tmp_path / "pt"
    (run / "final").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"stage": "pretrain", "data": data}))
    return str(run / "final")


def test_init_from_another_world_is_noted_not_refused(tmp_path):
    from rlready.config import init_world_mismatch
    from rlready.data.world import GENERATOR_VERSION as V

    def note(data, *overrides, stage="midtrain"):
        init = _init_run(tmp_path / str(len(list(tmp_path.iterdir()))), data)
        return init_world_mismatch(
            recipes.resolve(stage, "tiny", overrides=[("model.init", init), *overrides])
        )

    assert note({"world_version": V, "world_seed": 0}) is None
    assert note({"world_version": V}) is None  # the seed's default
    assert f"world version {V - 1}, seed 0; this run makes world version {V}, seed 0" in note(
        {"world_version": V - 1, "world_seed": 0}
    )
    assert "an unrecorded version (before 6), seed 0" in note({"world_seed": 0})
    assert "seed 1; this run makes world version" in note({"world_version": V, "world_seed": 1})
    assert note({"world_version": V, "world_seed": 1}, stage="rl") is not None  # RL's tasks are the world's
    # Nothing to compare: text data on either side, RL on a task file, or no rlready run around the model.
    assert note({"world_version": V - 1, "path": "corpus.txt"}) is None
    assert note({"world_version": V - 1}, ("data.path", "corpus.txt")) is None
    assert note({"world_version": V - 1}, ("rl.data", "tasks.jsonl"), stage="rl") is None
    bare = tmp_path / "hub-model"
    bare.mkdir()
    cfg = recipes.resolve("midtrain", "tiny", overrides=[("model.init", str(bare))])
    assert init_world_mismatch(cfg) is None
    (tmp_path / "config.json").write_text("{not json")
    assert init_world_mismatch(cfg) is None
