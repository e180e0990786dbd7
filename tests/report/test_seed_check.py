"""The claims re-judged with ten seeds beside the run's own (issue 31, how many seeds)."""

import math

from synthetic_runs import write_synthetic_results

from sae_med.config import load_config
from sae_med.measure.results import load_comparisons
from sae_med.report.claims import ModelRun
from sae_med.report.seed_check import (
    SEEDS10_COMMAND,
    load_seeds10_run,
    seed_check_tables,
)

SHIFT = {("medical", "medical"): 0.10, ("broad", "broad"): 0.02}
"""The medical SAE planted better on medical text: every gap claim holds."""


def default_run(tmp_path):
    cfg = load_config("configs/default.yaml")
    path = write_synthetic_results(tmp_path / "default" / "results.json", cfg, SHIFT)
    return ModelRun("gemma", cfg, load_comparisons(path)), path


def test_absent_ten_seed_run_names_its_command_and_keeps_this_runs_shares(tmp_path):
    run, path = default_run(tmp_path)
    absent = load_seeds10_run(tmp_path / "seeds10" / "results.json")
    verdicts, shares = seed_check_tables(run, path, absent, "medical", "broad")
    assert verdicts.columns.tolist() == ["note"] and SEEDS10_COMMAND in verdicts.note.iloc[0]
    assert shares.columns.tolist() == ["3 seeds (this run)"]
    assert "dark_matter.r2_error_mean" in shares.index.get_level_values("metric")


def test_the_claims_are_judged_on_both_seed_counts(tmp_path):
    run, path = default_run(tmp_path)
    cfg = load_config("configs/seeds10.yaml")
    assert cfg.sae.seeds == 10 and cfg.model.name == run.cfg.model.name
    ten = write_synthetic_results(tmp_path / "seeds10" / "results.json", cfg, SHIFT, seeds=10)
    verdicts, shares = seed_check_tables(run, path, load_seeds10_run(ten), "medical", "broad")
    assert verdicts.columns.tolist() == ["3 seeds (this run)", "10 seeds",
                                         "same verdict with more seeds"]
    fve = verdicts.loc["The domain SAE explains more variance (FVE)"]
    assert fve.tolist() == ["supported", "supported", "yes"]
    assert shares.columns.tolist() == ["3 seeds (this run)", "10 seeds"]
    # every judged gap on both runs (inf: the seeds make the whole interval)
    assert shares.index.names == ["metric", "target L0"]
    assert all(not math.isnan(v) and v >= 0 for v in shares.to_numpy().ravel())


def test_a_ten_seed_run_of_another_model_is_not_set_beside_this_one(tmp_path):
    run, path = default_run(tmp_path)
    cfg = load_config("configs/seeds10.yaml",
                      ["model.name=embedded:smollm2-135m-instruct", "model.hook_layer=22"])
    other = write_synthetic_results(tmp_path / "seeds10" / "results.json", cfg, SHIFT)
    verdicts, shares = seed_check_tables(run, path, load_seeds10_run(other), "medical",
                                         "broad")
    assert "smollm2" in verdicts.note.iloc[0]
    assert shares.columns.tolist() == ["3 seeds (this run)"]
