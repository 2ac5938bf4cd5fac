"""Run configs: what the web form, the API, the CLI and the worker all validate against."""

from __future__ import annotations

import pytest

from h3lab.config import ConfigError, RunConfig


def test_a_config_naming_only_a_preset_builds_that_architecture() -> None:
    cfg = RunConfig.from_dict({"preset": "hybrid", "task": {"name": "induction_head"}})
    assert cfg.model.mixers == ("h3", "attn")
    assert cfg.model.vocab_size == 20


def test_model_errors_name_the_field_they_belong_to() -> None:
    good = RunConfig.build(preset="h3").to_dict()
    good["model"]["d_model"] = 0
    good["model"]["d_state"] = 3
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(good)
    assert set(info.value.errors) == {"model.d_model", "model.d_state"}
