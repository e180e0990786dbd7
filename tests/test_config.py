from pathlib import Path

import pytest

from sae_med.config import ConfigError, config_from_dict, load_config

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert cfg.model.hook_name == f"blocks.{cfg.model.hook_layer}.hook_resid_post"


def test_unknown_field_is_named_with_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'train\.lrr' is unknown.*lr_warmup_steps"):
        config_from_dict({"train": {"lrr": 1e-3}})


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match=r"'cache\.n_tokens': expected int"):
        config_from_dict({"cache": {"n_tokens": "lots"}})


def test_range_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"'sae\.l0_targets'.*smaller than sae\.width"):
        config_from_dict({"sae": {"width": 64, "l0_targets": [10, 100]}})
    with pytest.raises(ConfigError, match=r"'cache\.dtype'"):
        config_from_dict({"cache": {"dtype": "float16"}})
    with pytest.raises(ConfigError, match=r"'sae\.seeds'.*>= 1"):
        config_from_dict({"sae": {"seeds": 0}})


def test_overrides_apply_and_change_the_hash():
    base = load_config(None)
    cfg = load_config(None, ["train.lr=1e-3", "sae.l0_targets=[5, 10]", "cache.dtype=bfloat16"])
    assert cfg.train.lr == 1e-3 and cfg.sae.l0_targets == (5.0, 10.0)
    assert cfg.cache.dtype == "bfloat16"
    assert cfg.hash() != base.hash()
    assert load_config(None).hash() == base.hash()


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
