"""Config loading: YAML sections into typed dataclasses, overrides, and clear errors."""

import pytest

from pipeline.config import ConfigError, load_project, load_section
from pipeline.evaluate import EvaluateConfig
from pipeline.ingest import IngestConfig
from pipeline.promote import PromoteConfig
from pipeline.train import TrainConfig
from pipeline.validate import ValidateConfig

STAGE_CONFIGS = {"ingest": IngestConfig, "validate": ValidateConfig, "train": TrainConfig,
                 "evaluate": EvaluateConfig, "promote": PromoteConfig}


@pytest.mark.parametrize("name", ["embedded.yaml", "tiny.yaml", "nights.yaml"])
def test_every_shipped_config_parses(name):
    path = f"configs/{name}"
    load_project(path)
    for section, cls in STAGE_CONFIGS.items():
        load_section(path, section, cls)


def test_overrides_take_precedence_and_keep_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {max_steps: 10}\n")
    config = load_section(path, "train", TrainConfig, ["train.max_steps=3", "train.system_prompt=null"])
    assert config.max_steps == 3 and config.system_prompt is None
    assert load_section(path, "train", TrainConfig).learning_rate == TrainConfig().learning_rate  # default kept


def test_unknown_key_is_named_with_file_and_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {max_stepz: 10}\n")
    with pytest.raises(ConfigError, match=r"c.yaml:train: unknown key\(s\) \['max_stepz'\]"):
        load_section(path, "train", TrainConfig)


def test_wrong_type_is_rejected(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {max_steps: ten}\n")
    with pytest.raises(ConfigError, match=r"train.max_steps: expected <class 'int'>, got 'ten'"):
        load_section(path, "train", TrainConfig)


def test_rule_in_post_init_is_reported(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {precision: fp8}\n")
    with pytest.raises(ConfigError, match="precision must be one of auto, bf16, fp32, bf16_states"):
        load_section(path, "train", TrainConfig)


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_project(tmp_path / "nope.yaml")
    (tmp_path / "c.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_project(tmp_path / "c.yaml", ["max_steps=3"])
