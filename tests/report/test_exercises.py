"""Checked exercises: every solution (the notebook's own computation, on small data made
here) passes its check and a wrong answer fails it; every registered exercise is tested
and called from its notebook's solution; the checks say right / close / wrong."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pytest
import torch

from sae_med.interpret.synthetic import (
    SyntheticSpec,
    absorption_table,
    plant,
    recovery,
    sample,
    score_sae,
    truth_sae,
)
from sae_med.measure.bootstrap import Interval
from sae_med.report import exercises
from sae_med.report.book import PROJECT_ROOT
from sae_med.report.exercises import EXERCISES, Verdict, check, compare_number

CHECKED_CHAPTERS = ("00", "01", "02", "03", "04", "05", "06", "07", "08", "09", "10")
SMALL = SyntheticSpec(d_model=24, n_features=16, n_hierarchies=2, n_correlated=2,
                      freq_min=0.03, freq_max=0.1)


class Case(NamedTuple):
    data: dict[str, Any]
    solution: Any
    """What the notebook's solution cell computes on ``data``."""
    wrong: Any
    """A plausible mistake."""


# ------------------------------------------------------------------------- chapter 00

def case_syn_bar(tmp_path) -> Case:
    truth = plant(SMALL)
    sae = truth_sae(truth)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # decoder rows at spread cosines, so the bar matters
        sae.W_dec.mul_(torch.linspace(0.6, 1.0, SMALL.n_features)[:, None])
        sae.W_dec.add_(0.3 * torch.randn(sae.W_dec.shape, generator=g))
    solution = int(recovery(sae.W_dec, truth, at=0.8).recovered.sum())
    return Case({"sae": sae, "truth": truth}, solution, int(recovery(sae.W_dec, truth).recovered
                                                           .sum()) - 2)


def case_syn_absorb(tmp_path) -> Case:
    truth = plant(SMALL)
    test = sample(truth, 8000, seed=1)
    one = absorption_table(truth_sae(truth, absorbed=truth.hierarchy[:1]), truth, test)
    clean = absorption_table(truth_sae(truth), truth, test)  # forgot to absorb
    return Case({"truth": truth, "batch": test}, float(one.iloc[0].absorption_rate),
                float(clean.iloc[0].absorption_rate))


def case_syn_superposition(tmp_path) -> Case:
    wide = plant(dataclasses.replace(SMALL, n_features=2 * SMALL.d_model))
    fve = score_sae(truth_sae(wide), wide, sample(wide, 2000, seed=1)).fve
    narrow = plant(SMALL)  # forgot to widen
    return Case({"spec": SMALL, "n_rows": 2000}, fve,
                score_sae(truth_sae(narrow), narrow, sample(narrow, 2000, seed=1)).fve)


# ------------------------------------------------------------------------- chapter 01

class FakeBatch(NamedTuple):
    tokens: torch.Tensor
    attention_mask: torch.Tensor
    keep: torch.Tensor


class FakeModel:
    """resid(layer) grows with depth, so each block's mean norm differs."""

    device, n_layers = "cpu", 4

    def resid(self, tokens, attention_mask, layer):
        g = torch.Generator().manual_seed(layer)
        return (1 + layer) * torch.randn(*tokens.shape, 8, generator=g)


def case_cache_layer(tmp_path) -> Case:
    model = FakeModel()
    batch = FakeBatch(torch.zeros(3, 5), torch.ones(3, 5), torch.rand(3, 5) > 0.3)
    depth = {}
    for layer in range(model.n_layers):  # the notebook's loop
        x = model.resid(batch.tokens, batch.attention_mask, layer)[batch.keep].float()
        depth[layer] = float(x.norm(dim=1).mean())
    data = {"key_now": "abc", "key_other": "def", "model": model, "batch": batch}
    return Case(data, {"reused": False, "mean_norm": depth},
                {"reused": True, "mean_norm": depth})


def case_cache_corpus(tmp_path, monkeypatch) -> Case:
    from sae_med.corpora import registry as data_module

    texts = {"a": ["w " * n for n in (3, 4, 50, 5, 6)], "b": ["w " * n for n in (9, 10, 11)]}
    monkeypatch.setattr(data_module, "iter_documents",
                        lambda name, split: iter(SimpleNamespace(text=t) for t in texts[name]))
    tokenizer = lambda text: {"input_ids": text.split()}  # noqa: E731
    lengths = {n: [len(tokenizer(t)["input_ids"]) for t in ts] for n, ts in texts.items()}
    return Case({"tokenizer": tokenizer, "corpora": ["a", "b"]},
                {n: float(pd.Series(v).median()) for n, v in lengths.items()},
                {n: float(pd.Series(v).mean()) for n, v in lengths.items()})


# ------------------------------------------------------------------------- chapter 02

def case_train_target(tmp_path) -> Case:
    final = pd.DataFrame({"train corpus": ["medical", "medical", "broad", "broad"],
                          "target L0": [8.0, 16.0, 8.0, 16.0], "seed replicate": [0] * 4,
                          "tokens": [400] * 4, "l0": [8.4, 13.0, 7.9, 16.5]})
    curves = pd.concat([pd.DataFrame({"train_corpus": c, "l0_target": t, "replicate": 0,
                                      "tokens": [100, 200, 300, 400],
                                      "l0": [40.0, l0 * 1.5, l0 * 1.05, l0]})
                        for c, t, l0 in zip(final["train corpus"], final["target L0"],
                                            final.l0, strict=True)])
    reached = final.assign(ratio=final.l0 / final["target L0"])  # the notebook's solution
    worst = reached.loc[(reached.ratio - 1).abs().idxmax()]
    settled = {}
    for (c, t, r), g in curves.groupby(["train_corpus", "l0_target", "replicate"]):
        off = ((g.l0 - g.l0.iloc[-1]).abs() > 0.1 * g.l0.iloc[-1]).to_numpy()
        last_off = off.nonzero()[0].max() if off.any() else -1
        settled[(c, t, r)] = int(g.tokens.iloc[min(last_off + 1, len(g) - 1)])
    answer = {"sae": (worst["train corpus"], worst["target L0"], worst["seed replicate"]),
              "direction": "above" if worst.ratio > 1 else "below", "settled": settled}
    return Case({"final": final, "curves": curves}, answer,
                {**answer, "direction": "above"})


def case_train_third(tmp_path) -> Case:
    from sae_med.config import config_from_dict
    from sae_med.layout import sae_dirs

    cfg = config_from_dict({"output_dir": str(tmp_path), "sae": {"width": 64,
                                                                 "l0_targets": [4, 8]}})
    corpora = ",".join([*cfg.train_corpora, "wordnet"])
    third = config_from_dict(cfg.to_dict(), [f"train_corpora=[{corpora}]"])
    for path in sae_dirs(cfg).values():  # the first run's SAEs are on disk
        path.mkdir(parents=True)
        (path / "cfg.json").write_text("{}")
    new = {sae for sae, path in sae_dirs(third).items() if not (path / "cfg.json").exists()}
    return Case({"cfg_third": third}, new, set(sae_dirs(third)))


# ------------------------------------------------------------------------- chapter 03

def _gaps() -> pd.DataFrame:
    """Gap rows as load_comparisons stores them: the l0_target rows medical vs broad, the
    matched-FVE rows the other way round (oriented_gaps must flip them)."""
    rows = []
    for i, (target, fve) in enumerate(((8.0, 0.6), (16.0, 0.7), (32.0, 0.8))):
        for metric, value in (("fve", 0.02 * (i + 1)), ("delta_ce", -0.05 + 0.04 * i),
                              ("dark_matter.r2_norm", 0.01 - 0.02 * i)):
            for eval_corpus in ("medical", "broad"):
                base = {"metric": metric, "eval_corpus": eval_corpus, "value": value,
                        "low": value - 0.03, "high": value + 0.03}
                rows.append({**base, "train_corpus": "medical", "versus": "broad",
                             "basis": "l0_target", "l0_target": target, "fve": np.nan})
                rows.append({**base, "train_corpus": "broad", "versus": "medical",
                             "basis": "fve", "l0_target": np.nan, "fve": fve,
                             "value": -value, "low": -value - 0.03, "high": -value + 0.03})
    return pd.DataFrame(rows)


def case_fidelity_target(tmp_path) -> Case:
    from sae_med.report.claims import oriented_gaps

    gaps = _gaps()
    med = oriented_gaps(gaps, "medical", "broad")
    ends = med[(med.basis == "l0_target") & (med.eval_corpus == "medical")
               & med.metric.isin(["fve", "delta_ce"])
               & med.l0_target.isin([med.l0_target.min(), med.l0_target.max()])]
    ends = ends.assign(excludes_zero=(ends.low > 0) | (ends.high < 0))
    solution = {"gaps": {(r.l0_target, r.metric): r.value for r in ends.itertuples()},
                "exclude_zero": {(r.l0_target, r.metric) for r in ends.itertuples()
                                 if r.excludes_zero}}
    return Case({"gaps": gaps, "medical": "medical", "broad": "broad"}, solution,
                {**solution, "gaps": {k: -v for k, v in solution["gaps"].items()}})


def _results_mean() -> pd.DataFrame:
    rows = []
    for corpus, own in (("medical", 0.8), ("broad", 0.7)):
        for target in (8.0, 32.0):
            for ev in ("medical", "broad"):
                fve = own + 0.05 * (target == 32.0) - (0.1 if ev != corpus else 0.0) \
                    - (0.05 if corpus == "medical" and ev != corpus else 0.0)
                ce = {"ce_clean": 3.0 + (ev == "broad"), "ce_zero": 9.0 + (ev == "broad"),
                      "ce_mean_ablation": 4.0 + 1.5 * (ev == "broad")}
                for metric, value in {"fve": fve, **ce}.items():
                    rows.append({"train_corpus": corpus, "eval_corpus": ev,
                                 "l0_target": target, "metric": metric, "value": value})
    return pd.DataFrame(rows)


def case_fidelity_transfer(tmp_path) -> Case:
    from sae_med.report.notebook import metric_value

    results_mean, other = _results_mean(), {"medical": "broad", "broad": "medical"}
    lost = {(c, t): metric_value(results_mean, "fve", c, c, t)
            - metric_value(results_mean, "fve", c, other[c], t)
            for c in other for t in (8.0, 32.0)}
    mean = pd.Series(lost).groupby(level=0).mean()
    return Case({"results_mean": results_mean, "medical": "medical", "broad": "broad"},
                {"lost": lost, "better": mean.idxmin()},
                {"lost": lost, "better": mean.idxmax()})


def case_fidelity_baselines(tmp_path) -> Case:
    from sae_med.report.notebook import metric_value

    results_mean = _results_mean()
    ratio = {}
    for ev in ("medical", "broad"):
        clean = metric_value(results_mean, "ce_clean", "medical", ev, 8.0)
        ratio[ev] = ((metric_value(results_mean, "ce_zero", "medical", ev, 8.0) - clean)
                     / (metric_value(results_mean, "ce_mean_ablation", "medical", ev, 8.0)
                        - clean))
    return Case({"results_mean": results_mean}, ratio, {k: 1 / v for k, v in ratio.items()})


# ------------------------------------------------------------------------- chapter 04

def case_dm_decomp(tmp_path) -> Case:
    rows = []
    for i, sae in enumerate(("medical/seed_0/l0_8", "broad/seed_0/l0_8")):
        for ev in ("medical", "broad"):
            linear, nonlinear = 0.05 + 0.01 * i, 0.2 + 0.03 * (ev == "broad")
            for metric, value in (("fvu_linear", linear), ("fvu_nonlinear", nonlinear),
                                  ("fvu_sae", linear + nonlinear), ("r2_norm", 0.3)):
                rows.append({"sae_id": sae, "eval_corpus": ev,
                             "metric": f"dark_matter.{metric}", "value": value})
    dm = pd.DataFrame(rows)
    dm["metric"] = dm.metric.str.removeprefix("dark_matter.")  # as the notebook's `dm`
    parts = dm.pivot_table(index=["sae_id", "eval_corpus"], columns="metric", values="value")
    return Case({"dm": dm}, (parts.fvu_linear / parts.fvu_sae).to_dict(),
                (parts.fvu_nonlinear / parts.fvu_sae).to_dict())


def case_dm_norm(tmp_path) -> Case:
    from sae_med.report.claims import gap_intervals, oriented_gaps

    gaps = _gaps()
    med = oriented_gaps(gaps, "medical", "broad")
    solution = {}
    for basis in ("l0_target", "fve"):
        sel = med[(med.basis == basis) & (med.metric == "dark_matter.r2_norm")
                  & (med.eval_corpus == "medical")].sort_values(basis)
        for point, iv in zip(sel[basis], gap_intervals(med, "dark_matter.r2_norm", "medical",
                                                        basis=basis), strict=True):
            solution[(basis, point)] = iv.value
    unoriented = gaps[(gaps.metric == "dark_matter.r2_norm") & (gaps.eval_corpus == "medical")]
    wrong = {(r.basis, getattr(r, r.basis)): r.value for r in unoriented.itertuples()}
    return Case({"gaps": gaps, "medical": "medical", "broad": "broad"}, solution, wrong)


def case_dm_tokens(tmp_path) -> Case:
    fit_tokens, d_model, n_tokens = [300, 250, 400], 64, 4096  # 3.8 per input: too few
    ratio = min(fit_tokens) / (d_model + 1)
    return Case({"n_tokens": n_tokens, "fit_tokens": fit_tokens, "d_model": d_model},
                int(n_tokens * max(1.0, 10 / ratio)), int(n_tokens * max(1.0, ratio / 10)))


# ------------------------------------------------------------------------- chapter 05

def case_feat_concept(tmp_path) -> Case:
    from collections import Counter

    from sae_med.interpret.features import DEFAULT_CONCEPT_KEYS, concept_aurocs, document_concepts

    chapters = ["infect"] * 6 + ["neoplasm"] * 10 + ["eye"] * 4 + ["ear"] * 8
    labels = [{"chapter": [c]} for c in chapters]
    g = torch.Generator().manual_seed(0)
    doc_max = {sae: torch.rand(len(labels), 12, generator=g) for sae in ("medical", "broad")}
    for j, sae in ((3, "medical"), (7, "broad")):  # one latent per SAE tracks 'ear'
        doc_max[sae][[i for i, c in enumerate(chapters) if c == "ear"], j] += 1
    case_concepts = ["chapter:neoplasm"]
    counts = Counter(c for lab in labels for c in document_concepts(lab, DEFAULT_CONCEPT_KEYS)
                     if c.startswith("chapter:"))
    fresh = next(c for c, _ in counts.most_common() if c not in case_concepts)
    latents = {sae: int(concept_aurocs(m, labels, fresh)[0].argmax())
               for sae, m in doc_max.items()}
    return Case({"labels": labels, "doc_max": doc_max, "case_concepts": case_concepts},
                {"concept": fresh, "latents": latents},
                {"concept": "chapter:neoplasm", "latents": latents})


def case_feat_phrase(tmp_path) -> Case:
    from sae_med.interpret.features import search_latents
    from sae_med.sae.jumprelu import JumpReLUSAE

    g = torch.Generator().manual_seed(0)
    saes = {c: JumpReLUSAE(8, 32, generator=g) for c in ("medical", "broad")}
    x_old, x_new = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    x_new[:3] = x_old[:3]  # the phrases share words, so some latents are shared
    found = {c: search_latents(s, x_old) for c, s in saes.items()}
    shared = {c: sorted({j for j, _ in found[c]} & {j for j, _ in search_latents(s, x_new,
                                                                                 k=5)})
              for c, s in saes.items()}
    return Case({"saes": saes, "x_new": x_new, "found": found}, shared,
                {c: sorted({j for j, _ in search_latents(s, x_new, k=5)})
                 for c, s in saes.items()})


def case_feat_bar(tmp_path) -> Case:
    bars = [0.6, 0.7, 0.8, 0.9, 0.95]
    alignment = {"medical": SimpleNamespace(auroc=torch.tensor([0.5, 0.6, 0.7, 0.8, 0.91])),
                 "broad": SimpleNamespace(auroc=torch.tensor([0.55, 0.65, 0.9, 0.96]))}
    shares = {c: {b: float((al.auroc >= b).float().mean()) for b in bars}
              for c, al in alignment.items()}
    strict = {c: {b: float((al.auroc > b).float().mean()) for b in bars}  # > instead of >=
              for c, al in alignment.items()}
    return Case({"alignment": alignment, "bars": bars}, shares, strict)


# ------------------------------------------------------------------------- chapter 06

def case_ai_best(tmp_path) -> Case:
    # two seeds' SAEs of one family both scored their latent 1: a latent is a triple
    per_latent = pd.DataFrame({"SAE": ["medical"] * 3 + ["broad"] * 3,
                               "replicate": [0, 1, 1, 0, 0, 1],
                               "latent": [1, 1, 3, 4, 5, 6],
                               "detection_auroc": [0.9, 0.85, 0.4, 0.8, 0.95, 0.5]})

    def triples(rows):
        return list(zip(rows.SAE, rows.replicate, rows.latent, strict=True))

    best = per_latent.nlargest(3, "detection_auroc")
    return Case({"per_latent": per_latent}, triples(best),
                triples(per_latent.nsmallest(3, "detection_auroc")))


def case_ai_budget(tmp_path) -> Case:
    from sae_med.config import AutointerpConfig

    full = AutointerpConfig(demo=False, n_latents=8, n_score=6, fuzzing=True)

    def n_requests(b) -> int:  # the notebook's count
        return b.n_latents * (1 + 2 * 2 * b.n_score * (2 if b.fuzzing else 1))

    return Case({"full": full, "n_saes": 2}, n_requests(full) * 2,
                full.n_latents * (1 + 2 * full.n_score) * 2)  # one request per window


# ------------------------------------------------------------------------- chapter 07

def _report(clean: float, spliced: float, zero: float, mean: float, shares: list[float]
            ) -> SimpleNamespace:
    from sae_med.measure.diagnose import Bin

    bins = [Bin(f"bin {i}", 10, s, s) for i, s in enumerate(shares)]
    return SimpleNamespace(ce_clean=clean, ce_spliced=spliced, ce_zero=zero,
                           ce_mean_ablation=mean,
                           loss_recovered_vs_zero=1 - (spliced - clean) / (zero - clean),
                           loss_recovered_vs_mean=1 - (spliced - clean) / (mean - clean),
                           by_position=bins, by_norm_decile=bins[::-1],
                           by_frequency=bins[1:] + bins[:1])


def case_damage_recovered(tmp_path) -> Case:
    reports = {"medical": _report(3.0, 3.3, 10.0, 4.0, [0.2, 0.5, 0.3]),
               "broad": _report(3.0, 3.6, 10.0, 4.5, [0.6, 0.1, 0.3])}

    def recovered(r, baseline: float) -> float:  # the notebook's formula
        return (baseline - r.ce_spliced) / (baseline - r.ce_clean)

    answer = {n: {"vs zero": recovered(r, r.ce_zero), "vs mean": recovered(r, r.ce_mean_ablation)}
              for n, r in reports.items()}
    swapped = {n: {"vs zero": v["vs mean"], "vs mean": v["vs zero"]} for n, v in answer.items()}
    return Case({"reports": reports}, answer, swapped)


def case_damage_where(tmp_path) -> Case:
    from sae_med.measure.diagnose import bins_frame

    reports = {"medical": _report(3.0, 3.3, 10.0, 4.0, [0.2, 0.5, 0.3]),
               "broad": _report(3.0, 3.6, 10.0, 4.5, [0.6, 0.1, 0.3])}
    top, bottom = {}, {}
    for field in ("by_position", "by_norm_decile", "by_frequency"):
        for name, g in bins_frame(reports, field).groupby("sae"):
            top[(name, field)] = g.loc[g.share.idxmax()].bin
            bottom[(name, field)] = g.loc[g.share.idxmin()].bin
    return Case({"reports": reports}, top, bottom)


# ------------------------------------------------------------------------- chapter 08

def _families() -> pd.DataFrame:
    rows = []
    for corpus, scale in (("medical", 1.0), ("broad", 0.8)):
        for tokens, fve, dce, l0 in ((1000, 0.5, 0.9, 44), (3000, 0.7, 0.5, 41),
                                     (10000, 0.75, 0.42, 40.5)):
            for metric, v in (("fve", fve * scale), ("delta_ce", dce / scale), ("l0", l0)):
                rows.append({"eval_corpus": "medical", "train_corpus": corpus,
                             "tokens": tokens, "metric": metric, "value": v,
                             "low": v - 0.01, "high": v + 0.01, "l0_target": 40.0})
    return pd.DataFrame(rows)


def case_curve_converged(tmp_path) -> Case:
    families, domain = _families(), "medical"
    fam = families[(families.eval_corpus == domain)
                   & families.metric.isin(["fve", "delta_ce"])]
    steps = (fam.pivot_table(index=["train_corpus", "metric"], columns="tokens",
                             values="value").diff(axis=1).iloc[:, 1:])
    ratios = (steps.iloc[:, -1] / steps.iloc[:, 0]).to_dict()
    return Case({"families": families, "domain": domain}, ratios,
                {k: 1 / v for k, v in ratios.items()})


def case_curve_l0(tmp_path) -> Case:
    families, domain = _families(), "medical"
    l0 = families[(families.eval_corpus == domain) & (families.metric == "l0")]
    off = l0.value / l0.l0_target - 1
    answer = dict(zip(zip(l0.tokens, l0.train_corpus, strict=True), off, strict=True))
    return Case({"families": families, "domain": domain}, answer,
                dict(zip(zip(l0.tokens, l0.train_corpus, strict=True), l0.value - l0.l0_target,
                         strict=True)))


# ------------------------------------------------------------------------- chapter 09

def _home_gaps() -> pd.DataFrame:
    """Typical-token FVE gaps: medical vs broad stored as broad minus medical (flipped by
    oriented_gaps), medical vs mixed_10 as medical minus mixed_10; both eval corpora."""
    rows = []
    for target in (8.0, 16.0):
        for first, versus, ev, value in (
                ("broad", "medical", "medical", -0.06 - 0.001 * target),
                ("broad", "medical", "broad", 0.02 + 0.002 * target),
                ("medical", "mixed_10", "medical", 0.03 + 0.001 * target)):
            rows.append({"train_corpus": first, "versus": versus, "eval_corpus": ev,
                         "metric": "fve_typical", "basis": "l0_target", "l0_target": target,
                         "value": value, "low": value - 0.01, "high": value + 0.01})
    return pd.DataFrame(rows)


def case_home_did(tmp_path) -> Case:
    from sae_med.report.domain_report import home_advantages

    home = home_advantages(_home_gaps(), ["medical", "broad"], ["medical", "broad"])
    sel = home[(home.metric == "fve_typical") & (home.basis == "l0_target")]
    own = sel[(sel.train_corpus == "medical") & (sel.versus == "broad")].set_index("l0_target")
    theirs = sel[(sel.train_corpus == "broad") & (sel.versus == "medical")] \
        .set_index("l0_target")
    return Case({"gaps": _home_gaps(), "medical": "medical", "broad": "broad"},
                (own.value - theirs.value).to_dict(), (own.value + theirs.value).to_dict())


def case_home_mix(tmp_path) -> Case:
    from sae_med.report.claims import oriented_gaps

    def gap_points(other: str) -> pd.Series:  # the notebook's solution
        g = oriented_gaps(_home_gaps(), "medical", other)
        return g[(g.metric == "fve_typical") & (g.basis == "l0_target")
                 & (g.eval_corpus == "medical")].set_index("l0_target").value

    share = (gap_points("mixed_10") / gap_points("broad")).to_dict()
    solution = {("mixed_10", t): v for t, v in share.items()}
    return Case({"gaps": _home_gaps(), "medical": "medical", "broad": "broad",
                 "mixed": ["mixed_10"]}, solution, {k: 1 / v for k, v in solution.items()})


# ------------------------------------------------------------------------- chapter 10

def _width_gaps() -> dict:
    """The chapter's gaps: the interval holds 0 from 16×, the point value reaches 0 at 16×,
    the intervals' widths differ (so the weights matter)."""
    return {2: Interval(0.10, 0.09, 0.11), 4: Interval(0.06, 0.05, 0.07),
            8: Interval(0.02, 0.005, 0.035), 16: Interval(0.0, -0.02, 0.02),
            32: Interval(-0.01, -0.03, 0.01)}


def case_width_crossover(tmp_path) -> Case:
    gaps = _width_gaps()
    widths = sorted(gaps)  # the notebook's walk down from the largest width
    first = next(i for i in range(len(widths)) if all(
        gaps[w].low <= 0 for w in widths[i:]))
    below, at = widths[first - 1], widths[first]
    lo0, lo1 = gaps[below].low, gaps[at].low
    by_hand = 2 ** (np.log2(below) + lo0 / (lo0 - lo1) * (np.log2(at) - np.log2(below)))
    v0, v1 = gaps[below].value, gaps[at].value  # interpolating the point values instead
    by_points = 2 ** (np.log2(below) + v0 / (v0 - v1) * (np.log2(at) - np.log2(below)))
    solution = {"below": below, "width": at, "estimate": float(by_hand)}
    return Case({"gaps": gaps, "sign": 1}, solution,
                {**solution, "estimate": float(by_points)})


def case_width_slope(tmp_path) -> Case:
    gaps = _width_gaps()

    def fit(g: dict, weighted: bool) -> float:  # the slope test written out with numpy
        x, y = np.log2(list(g)), np.array([iv.value for iv in g.values()])
        se = np.array([(iv.high - iv.low) / (2 * 1.959963984540054) for iv in g.values()])
        return float(np.polyfit(x, y, 1, w=1 / se if weighted else None)[0])

    wide = {**gaps, 32: Interval(-0.01, -0.09, 0.07)}
    solution = {"unweighted": fit(gaps, False), "weighted": fit(gaps, True),
                "widened": fit(wide, True)}
    return Case({"gaps": gaps, "sign": 1}, solution,
                {**solution, "weighted": solution["unweighted"]})


CASES: dict[str, Callable[..., Case]] = {
    "ex-syn-bar": case_syn_bar, "ex-syn-absorb": case_syn_absorb,
    "ex-syn-superposition": case_syn_superposition, "ex-cache-layer": case_cache_layer,
    "ex-cache-corpus": case_cache_corpus, "ex-train-target": case_train_target,
    "ex-train-third": case_train_third, "ex-fidelity-target": case_fidelity_target,
    "ex-fidelity-transfer": case_fidelity_transfer,
    "ex-fidelity-baselines": case_fidelity_baselines, "ex-dm-decomp": case_dm_decomp,
    "ex-dm-norm": case_dm_norm, "ex-dm-tokens": case_dm_tokens,
    "ex-feat-concept": case_feat_concept,
    "ex-feat-phrase": case_feat_phrase, "ex-feat-bar": case_feat_bar,
    "ex-ai-best": case_ai_best, "ex-ai-budget": case_ai_budget,
    "ex-damage-recovered": case_damage_recovered, "ex-damage-where": case_damage_where,
    "ex-curve-converged": case_curve_converged, "ex-curve-l0": case_curve_l0,
    "ex-home-did": case_home_did, "ex-home-mix": case_home_mix,
    "ex-width-crossover": case_width_crossover, "ex-width-slope": case_width_slope,
}


@pytest.mark.parametrize("label", sorted(CASES))
def test_the_solution_passes_and_a_wrong_answer_fails(label, tmp_path, monkeypatch):
    make = CASES[label]
    case = make(tmp_path, monkeypatch) if "monkeypatch" in make.__code__.co_varnames \
        else make(tmp_path)
    ok = check(label, case.solution, **case.data)
    assert ok.right, str(ok)
    bad = check(label, case.wrong, **case.data)
    assert bad.verdict is Verdict.WRONG, str(bad)
    assert str(bad).startswith(f"{label}: wrong, because ") and len(bad.reason) > 10
    with pytest.raises(exercises.ExerciseCheckError, match=label):
        bad.require()


def _exercise_labels(chapter: str) -> list[str]:
    [path] = (PROJECT_ROOT / "notebooks").glob(f"{chapter}_*.py")
    return re.findall(r"^# :label: (\S+)", path.read_text(), re.M)


def test_every_exercise_of_the_checked_chapters_is_registered_tested_and_called():
    """Each of them asks for a number or code; its solution cell ends in its check."""
    for chapter in CHECKED_CHAPTERS:
        labels = _exercise_labels(chapter)
        assert labels, chapter
        registered = [e.label for e in exercises.exercises_of(chapter)]
        assert registered == labels, chapter  # same exercises, notebook order
        [path] = (PROJECT_ROOT / "notebooks").glob(f"{chapter}_*.py")
        for label in labels:
            assert re.search(rf'check\(\s*"{label}",[^)]*\)[\s\S]*?\.require\(\)',
                             path.read_text()), f"{path.name}: {label}'s solution is unchecked"
    assert set(CASES) == set(EXERCISES)


@pytest.mark.parametrize(("label", "why"), [("ex-width-crossover", "point value"),
                                             ("ex-width-slope", "unweighted one")])
def test_the_width_mistakes_are_named(label, why):
    case = CASES[label](None)
    assert why in check(label, case.wrong, **case.data).reason


def test_every_exercise_carries_a_difficulty_and_a_time_budget():
    for e in EXERCISES.values():
        assert e.difficulty in ("starter", "core", "stretch") and 0 < e.minutes <= 60
        assert e.answer
    table = exercises.exercise_table("02")
    assert list(table.data.exercise) == _exercise_labels("02")


def test_a_near_miss_is_close_and_a_malformed_answer_is_wrong_not_an_error():
    assert compare_number("x", "v", 0.52, 0.5, tol=0.005, close=0.05).verdict is Verdict.CLOSE
    assert compare_number("x", "v", 0.5, 0.5).right
    assert compare_number("x", "v", np.int64(5), 5.0).right  # numpy scalars are numbers
    assert compare_number("x", "v", "0.5", 0.5).verdict is Verdict.WRONG
    case = case_ai_budget(None)
    off = check("ex-ai-budget", int(case.solution * 1.1), **case.data)
    assert off.verdict is Verdict.CLOSE and "above" in off.reason
    malformed = check("ex-damage-recovered", {"medical": 0.9}, **case_damage_recovered(None).data)
    assert malformed.verdict is Verdict.WRONG
    with pytest.raises(KeyError, match="no checked exercise"):
        check("ex-nope", 1)
