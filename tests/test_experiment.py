"""The orchestrator's loops over replications, with the stages they run stood in for."""

from __future__ import annotations

from types import SimpleNamespace

from sae_med import experiment
from sae_med.config import load_config
from sae_med.measure.results import ComparisonTables
from sae_med.report.claims import model_label


def test_concept_verdicts_by_model_judge_this_run_then_each_replication_s_own(monkeypatch):
    cfg = load_config("configs/smoke.yaml")
    reps = list(cfg.replication_configs().values())
    assert reps  # the smoke config replicates on a second model
    calls = []

    def autointerp(rep, l0_target, eval_corpus, progress):
        calls.append(("autointerp", rep.model.name, l0_target, eval_corpus))
        return SimpleNamespace(scores=f"scores of {rep.model.name}")

    def evaluate(rep, progress):
        calls.append(("evaluate", rep.model.name))
        return f"results of {rep.model.name}"

    monkeypatch.setattr(experiment, "stage_autointerp", autointerp)
    monkeypatch.setattr(experiment, "stage_evaluate", evaluate)
    monkeypatch.setattr(experiment, "load_comparisons",
                        lambda path: ComparisonTables(f"families in {path}", None, None))
    monkeypatch.setattr(experiment, "concept_verdict",
                        lambda scores, families, domain, broad, seed, n_boot:
                        f"{scores} | {families} | {domain} vs {broad} | seed {seed} | {n_boot}")

    verdicts = experiment.concept_verdicts_by_model(cfg, "own scores", "own families",
                                                    "medical", "broad", l0_target=10.0)
    assert list(verdicts) == [model_label(cfg), *map(model_label, reps)]
    assert verdicts[model_label(cfg)] == (
        f"own scores | own families | medical vs broad | seed {cfg.seed} | "
        f"{cfg.eval.bootstrap}")
    rep = reps[0]
    assert verdicts[model_label(rep)] == (
        f"scores of {rep.model.name} | families in results of {rep.model.name} | "
        f"medical vs broad | seed {rep.seed} | {rep.eval.bootstrap}")
    assert calls[:2] == [("autointerp", rep.model.name, 10.0, "medical"),
                         ("evaluate", rep.model.name)]
