"""The evaluation pipeline on the real model: known answers, naive twins, sae-lens as a peer.

One small eval cache (500 tokens, ctx 48) and one :func:`evaluate_saes` run over three SAEs
(exact identity, zero reconstruction, a least-squares-fitted random one) are shared by the
tests, so the model runs only a handful of short batches.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from sae_med.cache.activations import build_cache
from sae_med.config import load_config
from sae_med.experiment import evaluate_paths
from sae_med.lm.model import TokenBatch
from sae_med.measure.bootstrap import Draws, bootstrap_ci, bootstrap_many
from sae_med.measure.compare import SaeDraws, compare
from sae_med.measure.metrics import DocCE, summarize_ce
from sae_med.measure.results import (
    CE_METRICS,
    DARK_MATTER_METRICS,
    MEAN_ABLATION_METRICS,
    POINT_METRICS,
    RECON_METRICS,
    SCHEMA_VERSION,
    TYPICAL_METRICS,
    load_comparisons,
    load_results,
    write_results,
)
from sae_med.measure.scoring import ce_batches, ce_texts, evaluate_saes
from sae_med.measure.spliced import spliced_losses
from sae_med.sae.io import to_sae_lens
from sae_med.sae.jumprelu import JumpReLUSAE

CORPUS = "medical"


def small_cfg(cache_root, *extra):
    return load_config(None, [f"cache_dir={cache_root}", "cache.n_tokens=600",
                              "cache.shard_tokens=200", "cache.batch_size=4",
                              "cache.ctx_len=48", "eval.n_tokens=500", "eval.ce_docs=5",
                              "eval.bootstrap=20", *extra])


def identity_sae(d_model: int) -> JumpReLUSAE:
    """Exact identity: JumpReLU zeroes negative pre-activations, so encode [x, −x] and
    decode [I; −I]: x̂ = relu(x) − relu(−x) = x (thresholds tiny, biases 0)."""
    sae = JumpReLUSAE(d_model, 2 * d_model)
    eye = torch.eye(d_model)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.log_threshold.fill_(-60.0)
    return sae


def zero_sae(d_model: int) -> JumpReLUSAE:
    sae = JumpReLUSAE(d_model, 64)
    with torch.no_grad():
        sae.log_threshold.fill_(30.0)  # nothing ever fires; b_dec = 0 so x̂ = 0
    return sae


def mean_sae(x: torch.Tensor) -> JumpReLUSAE:
    """Nothing fires and b_dec is the mean: the mean-ablation baseline as an SAE."""
    sae = zero_sae(x.shape[1])
    with torch.no_grad():
        sae.b_dec.copy_(x.double().mean(0).float())
    return sae


def fitted_sae(x: torch.Tensor, d_sae: int = 128, fire_rate: float = 0.1) -> JumpReLUSAE:
    """A random encoder with per-latent thresholds at the (1 − fire_rate) quantile (L0 ≈
    fire_rate · d_sae) and a least-squares decoder: a moderately good SAE without training."""
    sae = JumpReLUSAE(x.shape[1], d_sae, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = x @ sae.W_enc
        theta = torch.quantile(z, 1 - fire_rate, dim=0).clamp_min(1e-3)
        sae.log_threshold.copy_(theta.log())
        sae.b_dec.copy_(x.mean(0))
        f = sae.encode(x)
        # ridge in float64: plain least squares gives rarely-firing latents huge decoder
        # rows, and decoding those in float32 (|x| ~ 1e4) cancelled so badly that the FVE
        # swung between -0.04 and 0.05 with the thread count
        F, X = f.double(), (x - x.mean(0)).double()
        gram = F.T @ F
        lam = 1e-2 * torch.trace(gram) / d_sae
        sae.W_dec.copy_(torch.linalg.solve(gram + lam * torch.eye(d_sae, dtype=F.dtype),
                                           F.T @ X))
    return sae


@pytest.fixture(scope="module")
def cfg(cache_root):
    return small_cfg(cache_root)


@pytest.fixture(scope="module")
def cache(model, cfg):
    return build_cache(model, cfg, CORPUS, "eval", n_tokens=cfg.eval.n_tokens, progress=False)


@pytest.fixture(scope="module")
def saes(model, cache):
    return {"identity": identity_sae(model.d_model), "zero": zero_sae(model.d_model),
            "fit": fitted_sae(cache.activations()), "mean": mean_sae(cache.activations())}


@pytest.fixture(scope="module")
def rows(model, cfg, cache, saes):
    meta = {k: {"train_corpus": "none", "l0_target": i, "kind": k}
            for i, k in enumerate(saes)}
    out = evaluate_saes(saes, model, cfg, CORPUS, cache, meta=meta, progress=False)
    return {r["sae_id"]: r for r in out}


def val(row, name):
    return row["metrics"][name]["value"]


# --------------------------------------------------------------------------------------
# Known answers through the whole pipeline
# --------------------------------------------------------------------------------------

def test_identity_sae_known_answers(rows):
    r = rows["identity"]
    assert val(r, "fve") == pytest.approx(1.0, abs=1e-9)
    assert val(r, "fve_uncentered") == pytest.approx(1.0, abs=1e-9)
    assert val(r, "mse") == pytest.approx(0.0, abs=1e-12)
    assert val(r, "loss_recovered") == pytest.approx(1.0, abs=1e-5)
    assert val(r, "delta_ce") == pytest.approx(0.0, abs=1e-5)
    assert val(r, "kl_spliced") == pytest.approx(0.0, abs=1e-5)
    assert val(r, "kl_score") == pytest.approx(1.0, abs=1e-5)
    assert val(r, "ce_zero") > val(r, "ce_clean") + 1.0


def test_zero_sae_known_answers(rows):
    r = rows["zero"]
    assert val(r, "loss_recovered") == pytest.approx(0.0, abs=1e-5)
    assert val(r, "kl_score") == pytest.approx(0.0, abs=1e-5)
    assert val(r, "fve") <= 1e-9 and val(r, "fve_uncentered") < 0
    assert val(r, "l0") == 0 and val(r, "dead_frac") == 1.0
    assert r["metrics"]["rel_bias"]["value"] is None  # 0/0, stored as JSON null
    assert r["density_histogram"]["n_dead"] == 64 and sum(r["density_histogram"]["counts"]) == 0


def test_massive_tokens_are_left_out_of_fve_typical(model, cfg, cache, saes, rows):
    """The typical FVE is the FVE of the tokens under eval.massive_norm_ratio x the median
    norm: all of them at a huge ratio; at a ratio that cuts the top tokens it is the
    pooled FVE of the rest (recomputed here from the activations)."""
    from sae_med.measure.metrics import fve

    fit = rows["fit"]
    assert val(fit, "fve_typical") == pytest.approx(val(fit, "fve"), rel=1e-9) or (
        val(fit, "massive_tokens") > 0)
    assert val(rows["identity"], "fve_typical") == pytest.approx(1.0, abs=1e-9)
    x = cache.activations()
    norms = x.norm(dim=-1)
    ratio = float(norms.quantile(0.9) / norms.median())  # the top ~10% are "massive"
    tight = dataclasses.replace(cfg, eval=dataclasses.replace(
        cfg.eval, massive_norm_ratio=ratio, ce_docs=1, ce_tokens=0))
    [row] = evaluate_saes({"fit": saes["fit"]}, model, tight, CORPUS, cache, progress=False)
    keep = norms <= ratio * norms.median()
    sae = saes["fit"]
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x))
    assert val(row, "massive_tokens") == int((~keep).sum()) > 0
    assert val(row, "fve_typical") == pytest.approx(fve(x[keep], x_hat[keep]), rel=1e-6)
    assert val(row, "fve") == pytest.approx(val(fit, "fve"), rel=1e-9)


def test_fitted_sae_is_in_between(rows):
    r = rows["fit"]
    assert 5 < val(r, "l0") < 30
    assert 0.0 < val(r, "fve") < 1.0
    assert val(r, "ce_clean") < val(r, "ce_spliced") < val(r, "ce_zero")
    dm = r["dark_matter"]
    assert dm["n_train"] > 0 and dm["n_eval"] > 0 and dm["n_train"] + dm["n_eval"] == 500
    # ~250 fit tokens for 641 regression inputs: the held-out map overfits, so nothing
    # orders fvu_nonlinear and fvu_sae here (test_dark_matter has the known answers)
    assert 0 < dm["fvu_nonlinear"] < math.inf and 0 < dm["fvu_sae"] < 1
    assert dm["r2_error_pooled"] <= 1 and dm["r2_norm"] <= 1


# --------------------------------------------------------------------------------------
# Rows, intervals, results files
# --------------------------------------------------------------------------------------

def test_rows_share_tokens_and_carry_meta(rows, cache, saes):
    n_docs = int(torch.unique(cache.token_info()[:, 1]).numel())
    for i, (k, r) in enumerate(rows.items()):
        assert r["eval_corpus"] == CORPUS and r["split"] == "eval"
        assert (r["n_tokens"], r["n_documents"], r["ce_documents"]) == (500, n_docs, 5)
        assert r["ce_tokens"] == rows["identity"]["ce_tokens"] > 0
        assert (r["train_corpus"], r["l0_target"], r["kind"]) == ("none", i, k)
        assert set(r["metrics"]) == {*RECON_METRICS, *TYPICAL_METRICS, *POINT_METRICS,
                                     *CE_METRICS, *MEAN_ABLATION_METRICS}
        hist = r["density_histogram"]
        assert sum(hist["counts"]) + hist["n_dead"] == saes[k].d_sae
    # same documents, same clean/zero passes: these agree exactly across SAEs
    for name in ("ce_clean", "ce_zero", "kl_zero", "ce_mean_ablation"):
        assert len({json.dumps(r["metrics"][name]) for r in rows.values()}) == 1


def test_rows_resample_document_groups(rows, cache):
    """The bootstrap's unit is the split's group: as many as the distinct groups of the
    documents the cache and the CE documents cover (the cache's ids checked against the
    corpus's)."""
    from itertools import islice

    from sae_med.corpora.registry import iter_documents

    used = {*cache.tokens().doc_index.tolist(), *range(5)}  # eval.ce_docs=5
    docs = list(islice(iter_documents(CORPUS, "eval"), max(used) + 1))
    assert [d.doc_id for d in docs[:len(cache.doc_ids())]] == cache.doc_ids()[:len(docs)]
    groups = {docs[i].group_key for i in used}
    assert len(groups) < len(used)  # HPO terms group several documents
    for r in rows.values():
        assert r["bootstrap"]["unit"] == "document group"
        assert r["bootstrap"]["n_groups"] == len(groups)


def test_mean_ablation_baseline_known_answers(rows):
    """Identity recovers all the loss against the mean baseline, the eval mean none."""
    assert val(rows["identity"], "loss_recovered_mean") == pytest.approx(1.0, abs=1e-4)
    mean = rows["mean"]
    assert val(mean, "ce_mean_ablation") == pytest.approx(val(mean, "ce_spliced"), abs=1e-4)
    assert val(mean, "loss_recovered_mean") == pytest.approx(0.0, abs=1e-3)
    # the eval mean is a far milder baseline than zero
    assert val(mean, "ce_mean_ablation") < val(mean, "ce_zero")


def test_intervals_contain_estimates(rows):
    # the constant mean SAE's FVEs sit at the edge of their bootstrap distribution (every
    # resample's own mean is closer to its documents than the pooled one), so a
    # percentile interval need not contain them
    for r in (r for k, r in rows.items() if k != "mean"):
        for name, m in r["metrics"].items():
            if name in POINT_METRICS:
                assert m["low"] is None and m["high"] is None
            elif m["value"] is not None:
                tol = 1e-9 * max(1.0, abs(m["value"]))
                assert m["low"] - tol <= m["value"] <= m["high"] + tol, (r["sae_id"], name)
    fit = rows["fit"]["metrics"]
    assert fit["fve"]["low"] < fit["fve"]["high"]
    assert fit["ce_spliced"]["low"] < fit["ce_spliced"]["high"]
    dm = rows["fit"]["dark_matter"]
    assert set(dm["intervals"]) == set(DARK_MATTER_METRICS)
    assert dm["n_eval_documents"] >= 2
    for name in DARK_MATTER_METRICS:
        iv = dm["intervals"][name]
        tol = 1e-9 * max(1.0, abs(dm[name]))
        assert iv["low"] - tol <= dm[name] <= iv["high"] + tol, name
    assert dm["intervals"]["fvu_sae"]["low"] < dm["intervals"]["fvu_sae"]["high"]


def test_bootstrap_many_equals_bootstrap_ci():
    g = torch.Generator().manual_seed(1)
    n = torch.randint(5, 40, (30,), generator=g).double()
    doc = DocCE(n, *(n * (1 + torch.rand(30, generator=g) * k) for k in range(1, 6)))
    many = bootstrap_many(doc, lambda d: summarize_ce(d)._asdict(), 50, seed=7)
    for name in ("loss_recovered", "ce_spliced", "kl_score"):
        ref = bootstrap_ci(doc, lambda d, name=name: getattr(summarize_ce(d), name), 50, seed=7)
        assert many[name].value == pytest.approx(ref.value, rel=1e-12)
        assert many[name].low == pytest.approx(ref.low, rel=1e-9)
        assert many[name].high == pytest.approx(ref.high, rel=1e-9)


def test_results_roundtrip(rows, cfg, tmp_path):
    path = write_results(list(rows.values()), cfg, tmp_path / "results.json")
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == SCHEMA_VERSION and doc["seed"] == cfg.seed
    assert doc["config"] == json.loads(cfg.to_json())
    assert {"python", "torch", "transformers", "transformer_lens", "sae_lens",
            "sae_med"} <= set(doc["software"])
    df = load_results(path)
    csv = pd.read_csv(path.with_suffix(".csv"))
    assert set(csv.row_type) == {"sae"}  # no comparisons passed
    lead = ["sae_id", "eval_corpus", "split", "n_tokens", "n_documents", "ce_documents",
            "ce_tokens", "metric", "value", "low", "high"]
    assert list(csv.columns[:len(lead)]) == lead and list(df.columns[:len(lead)]) == lead
    assert {"train_corpus", "l0_target", "kind"} <= set(csv.columns)
    n_metrics = (len(RECON_METRICS) + len(TYPICAL_METRICS) + len(POINT_METRICS)
                 + len(CE_METRICS) + len(MEAN_ABLATION_METRICS))
    assert len(df) == len(csv) >= 3 * n_metrics
    for _, row in df.iterrows():
        want = rows[row.sae_id]
        if row.metric.startswith("dark_matter."):
            name = row.metric.split(".", 1)[1]
            got = want["dark_matter"][name]
            iv = want["dark_matter"]["intervals"][name]
            want_iv = tuple(math.nan if v is None else v for v in (iv["low"], iv["high"]))
            assert (row.low, row.high) == pytest.approx(want_iv, nan_ok=True)
        else:
            got = want["metrics"][row.metric]["value"]
        assert (got is None and math.isnan(row.value)) or row.value == pytest.approx(got)
    pd.testing.assert_frame_equal(df.reset_index(drop=True), csv, check_dtype=False)

    # with a comparison: its family, gap and step rows come back from the JSON and the CSV
    rng = np.random.default_rng(0)
    comp = compare([SaeDraws(c, t, r, {"fve": Draws(v, v + 0.01 * rng.standard_normal(20))})
                    for c, v0 in (("medical", 0.8), ("broad", 0.7)) for r in range(2)
                    for t, v in ((20.0, v0), (40.0, v0 + 0.05))],
                   CORPUS, ("medical", "broad"), seed=0)
    path = write_results(list(rows.values()), cfg, tmp_path / "compared.json", [comp])
    assert json.loads(path.read_text())["steps"] == [s.to_dict() for s in comp.steps]
    tables = load_comparisons(path)
    assert len(tables.steps) == len(comp.steps) == 2  # fve, medical and broad, 20 → 40
    assert tables.steps.value.tolist() == pytest.approx([s.interval.value
                                                         for s in comp.steps])
    csv = pd.read_csv(path.with_suffix(".csv"))
    assert set(csv.row_type) == {"sae", "family", "gap", "step"}
    assert csv[csv.row_type == "step"].to_target.tolist() == [40.0, 40.0]


@pytest.mark.slow
def test_evaluate_paths_writes_results(model, cfg, saes, tmp_path):
    dirs = [saes["fit"].save(tmp_path / "saes" / "medical" / "l0_13",
                             metadata={"l0_target": 13.0}),
            saes["zero"].save(tmp_path / "saes" / "broad" / "l0_13",
                              metadata={"l0_target": 13.0})]
    run_cfg = small_cfg(cfg.cache_dir, f"output_dir={tmp_path / 'runs'}", "eval.ce_docs=2",
                        "eval.bootstrap=5")
    path = evaluate_paths(run_cfg, dirs, [CORPUS], model=model, progress=False)
    comp = load_comparisons(path)
    gap = comp.gaps.set_index("metric").loc["fve"]
    assert (gap.train_corpus, gap.versus, gap.basis, gap.l0_target) == (
        "medical", "broad", "l0_target", 13.0)
    fve = comp.families[comp.families.metric == "fve"].set_index("train_corpus").value
    assert gap.value == pytest.approx(fve["medical"] - fve["broad"])
    assert gap.low > 0 and bool(gap.excludes_zero)  # a fitted SAE against the zero SAE
    csv = pd.read_csv(path.with_suffix(".csv"))
    assert {"sae", "family", "gap"} == set(csv.row_type)
    assert path == run_cfg.run_path / "results.json" and path.with_suffix(".csv").exists()
    df = load_results(path)
    assert set(df.sae_id) == {"medical/l0_13", "broad/l0_13"}
    lr = df[df.metric == "loss_recovered"].set_index("sae_id")
    assert lr.loc["broad/l0_13", "value"] == pytest.approx(0.0, abs=1e-5)
    assert set(df.train_corpus) == {"medical", "broad"}
    assert df[df.sae_id == "medical/l0_13"].l0_target.iloc[0] == 13.0


@pytest.mark.slow
def test_evaluate_paths_reads_gemma_scope_and_sae_lens_formats(model, cfg, saes, tmp_path):
    """The same SAE saved as a sae-med folder, a Gemma Scope params.npz and a sae-lens
    folder gets the same scores; a bad spec or a d_model mismatch fails before any work."""
    import numpy as np

    from sae_med.sae.base import SAECheckpointError
    from sae_med.sae.io import sae_format

    sae = saes["fit"]
    ours = sae.save(tmp_path / "ours" / "fit")
    gs = tmp_path / "gemma_scope" / "params.npz"
    gs.parent.mkdir()
    np.savez(gs, **{k: getattr(sae, k).detach().numpy() for k in
                    ("W_enc", "W_dec", "b_enc", "b_dec")},
             threshold=sae.threshold.detach().numpy())
    lens_dir = tmp_path / "lens"
    to_sae_lens(sae).save_model(lens_dir)
    assert [sae_format(p) for p in (ours, gs, gs.parent, lens_dir)] == [
        "sae_med", "gemma_scope", "gemma_scope", "sae_lens_disk"]
    run_cfg = small_cfg(cfg.cache_dir, f"output_dir={tmp_path / 'runs'}", "eval.ce_docs=2",
                        "eval.bootstrap=5")
    path = evaluate_paths(run_cfg, [ours, gs, lens_dir], [CORPUS], model=model,
                          progress=False, sae_ids=["ours", "gemma_scope", "sae_lens"])
    df = load_results(path)
    wide = df.pivot(index="metric", columns="sae_id", values="value")
    for m in ("l0", "fve", "mse", "loss_recovered", "dark_matter.r2_error_mean"):
        assert wide.loc[m, "gemma_scope"] == pytest.approx(wide.loc[m, "ours"], rel=1e-5)
        assert wide.loc[m, "sae_lens"] == pytest.approx(wide.loc[m, "ours"], rel=1e-5)
    assert set(df.sae_format) == {"sae_med", "gemma_scope", "sae_lens_disk"}
    with pytest.raises(FileNotFoundError, match="Gemma Scope params.npz"):
        evaluate_paths(run_cfg, [tmp_path / "nowhere"], [CORPUS], model=model)
    with pytest.raises(SAECheckpointError, match="not a recognised SAE"):
        evaluate_paths(run_cfg, [tmp_path], [CORPUS], model=model)
    small = JumpReLUSAE(model.d_model // 2, 16).save(tmp_path / "other" / "half")
    with pytest.raises(ValueError, match="trained on another model"):
        evaluate_paths(run_cfg, [small], [CORPUS], model=model)


def test_ce_batches_token_budget(model, cfg):
    """ce_tokens takes documents in order until the budget is met; the documents and
    their order do not depend on how they are packed into forwards."""
    by_docs = ce_batches(model, cfg, CORPUS)
    budget = small_cfg(cfg.cache_dir, "eval.ce_tokens=60")
    packed = ce_batches(model, budget, CORPUS)
    scored = sum(int((b.keep[:, :-1] & b.attention_mask[:, 1:].bool()).sum()) for b in packed)
    assert scored >= 60
    n_docs = sum(b.tokens.shape[0] for b in packed)
    fewer = ce_batches(model, cfg, CORPUS, n_docs=n_docs - 1)
    assert sum(int((b.keep[:, :-1] & b.attention_mask[:, 1:].bool()).sum())
               for b in fewer) < 60  # the smallest prefix of documents that meets it
    assert sum(b.tokens.shape[0] for b in by_docs) == cfg.eval.ce_docs
    # max_tokens cuts either budget short at the same prefix of the documents
    assert ce_texts(model, budget, CORPUS, max_tokens=30) == ce_texts(
        model, small_cfg(cfg.cache_dir, "eval.ce_tokens=30"), CORPUS)
    assert ce_texts(model, cfg, CORPUS, max_tokens=30) == ce_texts(
        model, small_cfg(cfg.cache_dir, "eval.ce_tokens=30"), CORPUS)[:cfg.eval.ce_docs]
    assert ce_texts(model, budget, CORPUS, max_tokens=10**6) == ce_texts(model, budget, CORPUS)


# --------------------------------------------------------------------------------------
# Naive twin: the pipeline's spliced CE against full-logit single-pass TransformerLens
# --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_pipeline_ce_matches_naive_tl(model, cfg, saes, rows):
    from naive_lm import ce_losses_tl

    batches = ce_batches(model, cfg, CORPUS)
    # 5 short documents in one packed forward (budget batch_size x ctx_len positions)
    assert sum(b.tokens.shape[0] for b in batches) == 5
    sae = saes["fit"]

    def sae_fn(x):
        return sae(x).x_hat

    tl, parts = model.transformer_lens(), []
    for b in batches:
        ref = ce_losses_tl(tl, b.tokens, b.attention_mask, cfg.model.hook_layer, sae_fn, b.keep)
        assert not ref.mask[:, 0].any()
        parts.append(ref.doc_sums())
    naive = summarize_ce(DocCE(*(torch.cat(f) for f in zip(*parts, strict=True))))
    assert naive.n_tokens == rows["fit"]["ce_tokens"]
    assert naive.kl_spliced > 1e-3  # the splice really changes the output
    for name in CE_METRICS:
        assert val(rows["fit"], name) == pytest.approx(getattr(naive, name), abs=2e-4), name


# --------------------------------------------------------------------------------------
# Peer agreement with sae-lens's evaluation code
# --------------------------------------------------------------------------------------

class _FixedTokens:
    """The one method of an ActivationsStore that sae-lens's eval functions call."""

    def __init__(self, tokens):
        self.tokens = tokens

    def get_batch_tokens(self, n):
        assert n == self.tokens.shape[0]
        return self.tokens


def _lens_sae(sae, hook):
    lens = to_sae_lens(sae)
    lens.cfg.metadata.hook_name = hook
    return lens


@pytest.mark.slow
def test_l0_and_variance_agree_with_sae_lens(model, cfg, cache, saes, rows):
    """Matched tokens: sae-lens keeps every position it is given, ours drops BOS/EOS/pad.
    We rebuild the cache's exact token set (each document as BOS + its cached tokens,
    which are contiguous from position 1; the last one cut where the cache stopped, which
    by causality leaves earlier activations unchanged), right-pad, and pass BOS/EOS/pad as
    sae-lens's ``ignore_tokens``. Matched definitions: their ``explained_variance`` is
    1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², our ``fve_uncentered``; their l0 counts acts ≠ 0 (> 0 for
    JumpReLU). The tolerances cover TL (theirs) vs HF (the cache) activation round-off,
    which flips a few near-threshold latents (observed: |ΔFVE| ≈ 2e-4 to 8e-4); a
    definition mismatch is caught by requiring our uncentred FVE to be much closer to
    theirs than our centred one (observed gap to theirs ≈ 3e-3)."""
    from sae_lens.evals import get_sparsity_and_variance_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    tok = model.tokenizer
    info = cache.token_info()
    seqs = []
    for d in torch.unique_consecutive(info[:, 1]).tolist():
        r = info[info[:, 1] == d]
        assert torch.equal(r[:, 2], torch.arange(1, r.shape[0] + 1, dtype=r.dtype))
        seqs.append([tok.bos_token_id, *r[:, 0].tolist()])
    width = max(map(len, seqs))
    tokens = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in seqs])
    metrics, _ = get_sparsity_and_variance_metrics(
        _lens_sae(saes["fit"], cfg.model.hook_name), model.transformer_lens(), _FixedTokens(tokens),
        ActivationScaler(), n_batches=1, compute_l2_norms=False, compute_sparsity_metrics=True,
        compute_variance_metrics=True, compute_featurewise_density_statistics=False,
        eval_batch_size_prompts=tokens.shape[0], model_kwargs={},
        ignore_tokens=[tok.bos_token_id, tok.eos_token_id, tok.pad_token_id])
    ours = rows["fit"]["metrics"]
    assert ours["l0"]["value"] == pytest.approx(metrics["l0"], abs=0.05)
    assert ours["fve_uncentered"]["value"] == pytest.approx(metrics["explained_variance"],
                                                            abs=1e-3)
    theirs = metrics["explained_variance"]
    # the definition check: our uncentred form is much closer to theirs than our centred one
    assert abs(ours["fve_uncentered"]["value"] - theirs) < \
        0.5 * abs(ours["fve"]["value"] - theirs)


@pytest.mark.slow
def test_loss_recovered_agrees_with_sae_lens(model, cfg, saes):
    """Matched tokens and definitions: sae-lens's ``get_recons_loss`` splices the SAE and
    zero-ablates at *every* position (BOS included) and scores every next-token
    prediction, so we give both the same unpadded rows (CE documents cut to the shortest)
    and pass our path a loss mask of all positions. Their ``ce_loss_score`` is the
    token-mean (CE_zero − CE_sae) / (CE_zero − CE_clean) = our loss_recovered; their KL
    also scores the last position, which we drop to match ours."""
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    b = ce_batches(model, cfg, CORPUS)[0]
    t = int(b.attention_mask.sum(1).min())
    tokens = b.tokens[:, :t]
    ones = torch.ones_like(tokens)
    sae = saes["fit"]
    ours = spliced_losses(model, TokenBatch(tokens, ones, ones.bool()), cfg.model.hook_layer,
                                {"fit": lambda x: sae(x).x_hat})["fit"]
    assert ours.mask.all()
    s = ours.summary()
    theirs = get_recons_loss(_lens_sae(sae, cfg.model.hook_name), model.transformer_lens(),
                             ActivationScaler(), tokens, compute_kl=True,
                             compute_ce_loss=True)
    ce = {k: float(theirs[k].mean()) for k in
          ("ce_loss_without_sae", "ce_loss_with_sae", "ce_loss_with_ablation")}
    score = (ce["ce_loss_with_ablation"] - ce["ce_loss_with_sae"]) / \
        (ce["ce_loss_with_ablation"] - ce["ce_loss_without_sae"])
    kl_sae = float(theirs["kl_div_with_sae"][:, :-1].mean())
    kl_abl = float(theirs["kl_div_with_ablation"][:, :-1].mean())
    # sae-lens takes an fp32 log-softmax of TransformerLens's logits: over 262k tokens that
    # is itself up to ~2e-4 nat off where the edit moves the distribution far (KLs of
    # nats), where our log-sum-exp scoring is within 1e-5 of fp64 (tests/lm/test_model.py)
    assert s.ce_clean == pytest.approx(ce["ce_loss_without_sae"], abs=1e-4)
    assert s.ce_spliced == pytest.approx(ce["ce_loss_with_sae"], abs=1e-4)
    assert s.ce_zero == pytest.approx(ce["ce_loss_with_ablation"], abs=3e-4)
    assert s.loss_recovered == pytest.approx(score, abs=1e-5)
    assert s.kl_spliced == pytest.approx(kl_sae, abs=3e-4)
    assert s.kl_score == pytest.approx((kl_abl - kl_sae) / kl_abl, abs=1e-5)

