import dataclasses
from pathlib import Path

import pytest
import torch

from sae_med.cache.batches import TensorBatchSource
from sae_med.config import ConfigError, config_from_dict, load_config
from sae_med.report.side_by_side import same_experiment
from sae_med.train.sweep import run_key

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    # long adds to default's runs; matrix's own run is one of its cells (ReLU on Gemma)
    assert cfg.name == {"long": "default", "matrix": "matrix_relu"}.get(path.stem, path.stem)
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
    with pytest.raises(ConfigError, match=r"'train\.pre_act_loss'.*>= 0"):
        config_from_dict({"train": {"pre_act_loss": -1e-3}})
    with pytest.raises(ConfigError, match=r"'model\.dtype'.*float32.*bfloat16"):
        config_from_dict({"model": {"dtype": "float16"}})


def test_model_dtype_keys_only_configs_that_set_it():
    """``model.dtype`` came after artefact keys existed: at its default (fp32) it is left
    out of the config's dict, so older keys stand; bf16 is part of the key."""
    fp32, bf16 = load_config(None), load_config(None, ["model.dtype=bfloat16"])
    assert "dtype" not in fp32.to_dict()["model"] and bf16.to_dict()["model"]["dtype"] == "bfloat16"
    assert fp32.hash() != bf16.hash()


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


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_merges_sections_field_by_field_recursively(tmp_path):
    _write(tmp_path / "root.yaml", "name: root\nseed: 3\ntrain: {lr: 0.002, batch_size: 256}\n"
           "sae: {width: 64, l0_targets: [4, 8, 16]}\n")
    _write(tmp_path / "mid" / "mid.yaml", "base: ../root.yaml\nname: mid\n"
           "train: {batch_size: 128}\n")  # relative to mid/, not to the working directory
    leaf = _write(tmp_path / "leaf.yaml", "base: mid/mid.yaml\ntrain: {log_every: 7}\n"
                  "sae: {l0_targets: [2]}\n")
    cfg = load_config(leaf, ["train.lr=0.003"])
    assert (cfg.name, cfg.seed) == ("mid", 3)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.log_every) == (0.003, 128, 7)
    assert cfg.sae.width == 64 and cfg.sae.l0_targets == (2.0,)  # lists are replaced
    assert cfg.train.n_tokens == load_config(None).train.n_tokens  # untouched: the default


def test_base_cycles_and_bad_bases_are_clear(tmp_path):
    a = _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml: its 'base' chain loops .*b\.yaml"):
        load_config(a)
    with pytest.raises(ConfigError, match=r"nope\.yaml does not exist"):
        load_config(_write(tmp_path / "c.yaml", "base: nope.yaml\n"))
    with pytest.raises(ConfigError, match="'base' must be the path of another config"):
        load_config(_write(tmp_path / "d.yaml", "base: [a.yaml]\n"))


def test_wordnet_control_is_default_with_wordnet_as_the_broad_side():
    root = CONFIGS[0].parent
    control, default = load_config(root / "wordnet_control.yaml"), load_config(
        root / "default.yaml")
    assert control.train_corpora == control.eval_corpora == ("medical", "wordnet")
    same = ["name=wordnet_control", "train_corpora=[medical, wordnet]",
            "eval_corpora=[medical, wordnet]", "replications={}",  # not inherited
            "learning_curve={}"]
    assert load_config(root / "default.yaml", same) == control != default


def test_replications_are_this_config_on_other_models(tmp_path):
    """A replication is the config with its sections merged on and its key as run name;
    the base's replications are not inherited (they name run folders); mistakes inside
    one are named with its key."""
    root = _write(tmp_path / "root.yaml", "name: root\n"
                  "sae: {width: 64, seeds: 2, l0_targets: [4]}\nreplications:\n"
                  "  other: {model: {hook_layer: 5}, sae: {width: 48}}\n")
    cfg = load_config(root, [f"output_dir={tmp_path / 'runs'}"])
    [(name, rep)] = cfg.replication_configs().items()
    assert name == rep.name == "other" and rep.replications == {}
    assert (rep.model.hook_layer, rep.sae.width, rep.sae.seeds) == (5, 48, 2)
    assert rep.run_path == tmp_path / "runs" / "other"  # the parent's overrides carry over
    assert rep.to_dict() == load_config(root, ["name=other", "model.hook_layer=5",
                                               "sae.width=48", "replications={}",
                                               f"output_dir={tmp_path / 'runs'}"]).to_dict()
    child = _write(tmp_path / "child.yaml", "base: root.yaml\nname: child\n")
    assert load_config(child).replications == {}
    # a config without replications keeps the hash it had before the field existed
    assert "replications" not in load_config(child).to_dict()
    with pytest.raises(ConfigError, match=r"replications\.other: config field "
                                          r"'model\.hook_layr' is unknown"):
        load_config(root, ["replications.other.model={hook_layr: 2}"])
    with pytest.raises(ConfigError, match=r"'replications\.root': must differ"):
        load_config(root, ["replications.root={}"])


def test_learning_curve_is_this_config_trained_longer(tmp_path):
    """The learning curve's run is the config with its sections merged on, named
    ``{name}_curve``; it must save snapshots below its length, is not inherited by a
    ``base:`` child with another run name (one that keeps the name inherits it), and a
    config without one keeps its old hash."""
    root = _write(tmp_path / "root.yaml", "name: root\nsae: {width: 64, l0_targets: [4, 8]}\n"
                  "train: {n_tokens: 4096}\nreplications: {other: {sae: {width: 48}}}\n"
                  "learning_curve: {sae: {l0_targets: [8]},\n"
                  "  train: {n_tokens: 8192, snapshot_tokens: [1024, 2048]}}\n")
    cfg = load_config(root, [f"output_dir={tmp_path / 'runs'}"])
    curve = cfg.learning_curve_config()
    assert curve.name == "root_curve" and curve.run_path == tmp_path / "runs" / "root_curve"
    assert (curve.sae.l0_targets, curve.sae.width, curve.train.n_tokens) == ((8.0,), 64, 8192)
    assert curve.train.snapshot_tokens == (1024, 2048) and cfg.train.snapshot_tokens == ()
    assert curve.replications == {} and curve.learning_curve == {}
    assert cfg.replication_configs()["other"].learning_curve == {}
    child = _write(tmp_path / "child.yaml", "base: root.yaml\nname: child\n")
    assert load_config(child).learning_curve_config() is None
    assert {"learning_curve", "replications"}.isdisjoint(load_config(child).to_dict())
    # a child that keeps the base's run name describes the same runs, so it inherits them
    same = _write(tmp_path / "same.yaml", "base: root.yaml\ntrain: {lr: 1.0e-4}\n")
    assert load_config(same).learning_curve_config().train.lr == 1.0e-4
    assert list(load_config(same).replication_configs()) == ["other"]
    assert "snapshot_tokens" not in cfg.to_dict()["train"]
    with pytest.raises(ConfigError, match=r"'learning_curve': needs train\.snapshot_tokens"):
        load_config(root, ["learning_curve.train={n_tokens: 8192}"])
    with pytest.raises(ConfigError, match=r"'train\.snapshot_tokens': must increase and lie "
                                          r"between 0 and train\.n_tokens"):
        load_config(root, ["learning_curve.train.snapshot_tokens=[2048, 9000]"])
    with pytest.raises(ConfigError, match=r"must increase"):
        load_config(root, ["train.snapshot_tokens=[2048, 1024]"])


def test_long_is_the_default_plus_its_learning_curve():
    """configs/long.yaml names the same runs as the default (so they are reused) and adds
    the curve: 1M cached tokens, 10M training tokens at target 40; the default has none,
    so `make run` leaves the long curve out."""
    default, long = (load_config(CONFIGS[0].parent / f"{n}.yaml") for n in ("default", "long"))
    assert default.learning_curve_config() is None
    assert {**long.to_dict(), "learning_curve": {}} == {**default.to_dict(), "learning_curve": {}}
    curve = long.learning_curve_config()
    assert (curve.name, curve.cache.n_tokens, curve.train.n_tokens, curve.sae.l0_targets) == (
        "default_curve", 1_000_000, 10_000_000, (40.0,))
    assert curve.train.snapshots_annealed  # every budget's ΔCE is read, so each is annealed


def test_the_curves_longest_run_is_the_remedy_pairs_off_side():
    """configs/remedy_long.yaml reads its off side from the learning curve's 10M-token
    scores: the curve's longest run (its snapshots aside, which change no weight) must be
    that config with the remedy off, on the same caches, texts and training keys."""
    curve = load_config(CONFIGS[0].parent / "long.yaml").learning_curve_config()
    off = load_config(CONFIGS[0].parent / "remedy_long.yaml", ["train.pre_act_loss=0"])
    longest = dataclasses.replace(curve, train=dataclasses.replace(
        curve.train, snapshot_tokens=(), snapshots_annealed=False))
    source = TensorBatchSource(torch.zeros(4, 640))
    for corpus in off.train_corpora:
        for replicate in range(off.sae.seeds):
            assert (run_key(longest, source, corpus, replicate)
                    == run_key(off, source, corpus, replicate))
    assert same_experiment(curve, off)


def test_default_and_smoke_replicate_on_smollm2():
    for name, rep_name, width in (("default", "smollm2", 4608), ("smoke", "smollm2_smoke", 512)):
        cfg = load_config(CONFIGS[0].parent / f"{name}.yaml")
        rep = cfg.replication_configs()[rep_name]
        assert rep.model.name == "embedded:smollm2-135m-instruct"
        assert rep.model.hook_layer == 22 and rep.sae.width == width
        assert (rep.sae.l0_targets, rep.sae.seeds, rep.train) == (
            cfg.sae.l0_targets, cfg.sae.seeds, cfg.train)


@pytest.mark.parametrize("override", ["eval.bootstrap=-5", "eval.bootstrap=0",
                                      "eval.n_tokens=0", "eval.ce_docs=-1",
                                      "eval.ce_tokens=-3"])
def test_negative_or_zero_eval_counts_are_refused_by_field(override):
    field = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"'{field}'"):
        load_config(None, [override])


def test_baselines_are_named_sae_specs_that_key_only_configs_that_set_them():
    default = load_config("configs/default.yaml")
    assert default.baselines == {} and "baselines" not in default.to_dict()
    gs2 = load_config("configs/gemma_scope_2.yaml")
    assert gs2.model.name == "google/gemma-3-270m" and gs2.replications == {}
    assert all(b.sae.startswith("sae_lens:gemma-scope-2-270m-pt-res-all/layer_13_")
               for b in gs2.baselines.values())
    with_one = load_config("configs/default.yaml", ["baselines={gs: {sae: /tmp/x}}"])
    assert with_one.hash() != default.hash()
    with pytest.raises(ConfigError, match=r"baselines\.gs\.sae.*is required"):
        load_config("configs/default.yaml", ["baselines={gs: {description: no spec}}"])
