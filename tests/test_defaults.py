"""Per-stage, per-preset defaults: typed recipes that resolve to the values the project has always used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlready import config, recipes
from rlready.config import ConfigError, RunConfig
from rlready.recipes import stage_defaults

# ``resolve(stage, preset).to_dict()`` for every stage and preset, as produced before the recipes were typed
# (tests/data/preset_configs.json); a change to a recipe shows up here and must be deliberate.
EXPECTED = json.loads((Path(__file__).parent / "data" / "preset_configs.json").read_text())


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_every_preset_and_stage_resolves_to_its_recorded_values(key):
    stage, preset = key.split("/")
    assert recipes.resolve(stage, preset).to_dict() == EXPECTED[key]


def test_the_record_covers_every_stage():
    assert {key.split("/")[0] for key in EXPECTED} == set(config.STAGES)


@pytest.mark.parametrize("stage", config.STAGES)
def test_defaults_are_a_new_typed_config_each_time(stage):
    first = stage_defaults(stage, "tiny")
    assert isinstance(first, RunConfig) and (first.stage, first.model.preset) == (stage, "tiny")
    first.train.lr, first.data.seq_len = 123.0, 7
    assert stage_defaults(stage, "tiny") == recipes.resolve(stage, "tiny")


def test_an_unknown_stage_is_refused():
    with pytest.raises(ConfigError, match="stage must be one of"):
        stage_defaults("finetune", "tiny")
