"""SAEBench outputs: the loader computes the exported SAE's function with unit decoder rows
for every architecture,
the metrics follow SAEBench's formulas on known answers and batch as their naive twins do,
and `sae-med export --format saebench` writes files in its core schema (SAEBench 0.6.0)."""

from __future__ import annotations

import json
import math
from dataclasses import fields

import jsonschema
import pytest
import torch
from tiny_saes import ARCHITECTURES, sae_folder, tiny_sae

from sae_med.config import load_config
from sae_med.experiment import export_inputs
from sae_med.report.export import export_saes, write_saebench
from sae_med.report.exported import SAEBENCH_DIR, ExportError, read_provenance
from sae_med.report.saebench import (
    CacheRows,
    CustomSAEConfig,
    SAEBenchSAE,
    activation_stats,
    results_filename,
)
from sae_med.sae.jumprelu import JumpReLUSAE

D_MODEL, D_SAE, SCALE = 32, 64, 0.05
SAEBENCH_CFG_FIELDS = {
    "model_name", "d_in", "d_sae", "hook_layer", "hook_name", "context_size",
    "hook_head_index", "architecture", "apply_b_dec_to_input", "finetuning_scaling_factor",
    "activation_fn_str", "activation_fn_kwargs", "prepend_bos", "normalize_activations",
    "dtype", "device", "model_from_pretrained_kwargs", "dataset_path",
    "dataset_trust_remote_code", "seqpos_slice", "training_tokens",
    "sae_lens_training_version", "neuronpedia_id"}
"""SAEBench 0.6.0's ``CustomSAEConfig`` fields (sae_bench/custom_saes/custom_sae_config.py)."""


def _numbers(*names: str) -> dict:
    return {"type": "object", "required": list(names),
            "properties": {n: {"type": "number"} for n in names}}


CORE_SCHEMA = {
    "type": "object",
    "required": ["eval_config", "eval_id", "datetime_epoch_millis", "eval_result_metrics",
                 "sae_bench_commit_hash", "sae_lens_id", "sae_lens_release_id",
                 "sae_lens_version", "sae_cfg_dict"],
    "properties": {
        "eval_type_id": {"const": "core"},
        "eval_config": {"type": "object"},
        "eval_id": {"type": "string"},
        "datetime_epoch_millis": {"type": "integer"},
        "eval_result_metrics": {
            "type": "object",
            "required": ["model_behavior_preservation", "model_performance_preservation",
                         "reconstruction_quality", "shrinkage", "sparsity", "token_stats",
                         "misc_metrics"],
            "properties": {
                "model_behavior_preservation": _numbers(
                    "kl_div_score", "kl_div_with_ablation", "kl_div_with_sae"),
                "model_performance_preservation": _numbers(
                    "ce_loss_score", "ce_loss_with_ablation", "ce_loss_with_sae",
                    "ce_loss_without_sae"),
                "reconstruction_quality": _numbers(
                    "explained_variance", "explained_variance_legacy", "mse", "cossim"),
                "shrinkage": _numbers("l2_norm_in", "l2_norm_out", "l2_ratio",
                                      "relative_reconstruction_bias"),
                "sparsity": _numbers("l0", "l1"),
                "token_stats": {"type": "object",
                                "required": ["total_tokens_eval_reconstruction",
                                             "total_tokens_eval_sparsity_variance"],
                                "additionalProperties": {"type": "integer"}},
                "misc_metrics": _numbers(
                    "freq_over_1_percent", "freq_over_10_percent",
                    "normalized_freq_over_1_percent", "normalized_freq_over_10_percent",
                    "average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim",
                    "frac_alive")}},
        "eval_result_details": {"type": "array", "items": _numbers(
            "index", "feature_density", "consistent_activation_heuristic", "encoder_bias",
            "encoder_norm", "encoder_decoder_cosine_sim", "max_decoder_cosine_sim",
            "max_encoder_cosine_sim")},
        "sae_bench_commit_hash": {"type": "string"},
        "sae_lens_id": {"type": ["string", "null"]},
        "sae_lens_release_id": {"type": ["string", "null"]},
        "sae_lens_version": {"type": ["string", "null"]},
        "sae_cfg_dict": {"type": ["object", "null"]}}}
"""The requirements of SAEBench 0.6.0's eval_output_schema_core.json, transcribed."""


def _trained_like_sae(seed: int = 0) -> JumpReLUSAE:
    gen = torch.Generator().manual_seed(seed)
    sae = JumpReLUSAE(D_MODEL, D_SAE, input_scale=SCALE, generator=gen)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(D_SAE, generator=gen))
        sae.b_dec.copy_(0.1 * torch.randn(D_MODEL, generator=gen))
        sae.W_dec.mul_(1 + torch.rand(D_SAE, 1, generator=gen))  # rows of other norms
        sae.log_threshold.copy_((0.2 + 0.3 * torch.rand(D_SAE, generator=gen)).log())
    return sae


def _cfg() -> CustomSAEConfig:
    return CustomSAEConfig("embedded:gemma-3-270m", D_MODEL, D_SAE, 1, "blocks.1.hook_resid_post")


def _identity() -> SAEBenchSAE:
    """x ↦ [x, −x] ↦ relu(x) − relu(−x) = x: every nonzero coordinate fires one latent."""
    sae = JumpReLUSAE(D_MODEL, 2 * D_MODEL)
    eye = torch.eye(D_MODEL)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.log_threshold.fill_(-60.0)
    cfg = _cfg()
    cfg.d_sae = 2 * D_MODEL
    return SAEBenchSAE(sae, cfg)


def _acts(n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, D_MODEL, generator=gen) / SCALE, torch.arange(n) // 16


def test_loader_is_the_same_function_with_unit_decoder_rows():
    sae = _trained_like_sae()
    bench = SAEBenchSAE(sae, _cfg())
    x, _ = _acts(64)
    out = sae(x * SCALE)  # the trained SAE works on scaled inputs
    with torch.no_grad():
        torch.testing.assert_close(bench(x), out.x_hat / SCALE, rtol=1e-5, atol=1e-4)
        fires = bench.encode(x) > 0
        assert fires.any() and not fires.all()
        assert torch.equal(fires, out.acts > 0)
    # what SAEBench's loader checks and reads
    torch.testing.assert_close(bench.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-5, rtol=0)
    assert bench.W_enc.shape == (D_MODEL, D_SAE) and bench.W_dec.shape == (D_SAE, D_MODEL)
    assert {f.name for f in fields(CustomSAEConfig)} == SAEBENCH_CFG_FIELDS
    bench.to(dtype=torch.float64)
    assert bench.dtype == torch.float64 and bench.cfg.dtype == "float64"
    bench.cfg.architecture_str = "jumprelu"  # SAEBench's _standardize_sae_cfg sets fields


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_wrapper_is_our_encoding_for_every_architecture(arch, tmp_path):
    """Latent i reads f_i ||W_dec_i|| (unit decoder rows), the reconstruction is ours, on
    (batch, d_in) and SAEBench's (batch, pos, d_in); and so from a saebench export."""
    sae = tiny_sae(arch, D_MODEL, D_SAE, SCALE)  # decoder rows of norms in [1, 2)
    ours = sae.folded()
    bench = SAEBenchSAE(sae, _cfg())
    x, _ = _acts(64)
    with torch.no_grad():
        f = ours.encode(x)
        assert (f > 0).any() and (f == 0).any()
        want = f * ours.W_dec.norm(dim=1)
        torch.testing.assert_close(bench.encode(x), want, rtol=1e-5, atol=1e-5)
        assert torch.equal(bench.encode(x) > 0, f > 0)
        torch.testing.assert_close(bench(x), ours.decode(f), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(bench.encode(x.reshape(4, 16, D_MODEL)),
                                   bench.encode(x).reshape(4, 16, D_SAE))
    torch.testing.assert_close(bench.W_dec.norm(dim=1), torch.ones(D_SAE), atol=1e-5, rtol=0)
    sae_dir = sae_folder(sae, tmp_path / "runs" / "demo")
    (tmp_path / "out").mkdir()
    folder = write_saebench(ours, read_provenance(sae_dir, "medical/seed_0/l0_4"),
                            tmp_path / "out")
    loaded = SAEBenchSAE.load(folder)
    assert loaded.cfg.architecture == arch
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), bench(x), rtol=1e-5, atol=1e-4)


def test_activation_stats_known_answers_on_the_identity():
    x, doc = _acts()
    s = activation_stats(_identity(), x, doc)
    for value in (s.explained_variance, s.explained_variance_legacy, s.cossim, s.l2_ratio,
                  s.relative_reconstruction_bias):
        assert value == pytest.approx(1.0, abs=1e-5)
    assert s.mse == pytest.approx(0.0, abs=1e-6)
    assert s.l0 == D_MODEL and s.l1 == pytest.approx(x.abs().sum(-1).mean().item(), rel=1e-5)
    assert s.l2_norm_in == pytest.approx(x.norm(dim=-1).mean().item(), rel=1e-5)
    # each latent fires on the tokens where its coordinate has its sign: about half
    assert s.feature_density.sum().item() == pytest.approx(D_MODEL, rel=1e-6)


def test_activation_stats_batch_like_their_naive_twins():
    """Per-token means do not depend on the batch; firings per document counted by hand."""
    sae = SAEBenchSAE(_trained_like_sae(), _cfg())
    x, doc = _acts()
    small, whole = activation_stats(sae, x, doc, 128), activation_stats(sae, x, doc, len(x))
    for name in ("l0", "l1", "cossim", "l2_norm_in", "l2_norm_out", "l2_ratio",
                 "explained_variance"):
        assert getattr(small, name) == pytest.approx(getattr(whole, name), rel=1e-5)
    with torch.no_grad():
        f = sae.encode(x) > 0
    for latent in range(D_SAE):
        docs = doc[f[:, latent]].unique()
        want = f[:, latent].sum().item() / len(docs) if len(docs) else -1.0
        assert small.consistent_activation_heuristic[latent].item() == pytest.approx(want)


def test_stats_read_from_a_cache_batch_by_batch_equal_those_of_the_whole_tensor():
    class Cache:  # the two members CacheRows reads
        def __init__(self, x):
            self.x, self.n_tokens = x, len(x)

        def activations(self, start, stop):
            return self.x[start:stop]

    sae = SAEBenchSAE(_trained_like_sae(), _cfg())
    x, doc = _acts(500)  # not a multiple of the batch: the last one is short
    lazy = activation_stats(sae, CacheRows(Cache(x)), doc, 128)
    whole = activation_stats(sae, x, doc, 128)
    for name, value in whole._asdict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(getattr(lazy, name), value), name
        else:
            assert getattr(lazy, name) == value, name


def _reject_nan(name: str) -> float:
    raise AssertionError(f"{name} in a SAEBench file")


def test_export_saebench_writes_its_core_schema_and_loads_back(tmp_path, cache_root,
                                                                tiny_lm_dirs):
    from sae_lens import SAE

    from sae_med.experiment import evaluate_paths

    run = tmp_path / "runs" / "demo"
    cfg = load_config(None, [
        "name=demo", f"cache_dir={cache_root}", f"output_dir={tmp_path / 'runs'}",
        f"model.name={tiny_lm_dirs['llama']}", "model.hook_layer=1", "cache.ctx_len=32",
        "eval.n_tokens=200", "eval.ce_docs=2", "eval.bootstrap=5", "eval_corpora=[medical]"])
    sae_id = "medical/seed_0/l0_4"  # laid out and scored as `sae-med experiment` does
    sae_dir = run / "saes" / sae_id
    sae = _trained_like_sae()
    with torch.no_grad():  # thresholds low enough to fire on the tiny model's activations
        sae.log_threshold.fill_(-20.0)
    sae.save(sae_dir, metadata={"train_corpus": "medical", "l0_target": 4.0,
                                                "replicate": 0, "tokens": 640,
                                                "input_scale": SCALE})
    (sae_dir / "config.json").write_text(cfg.to_json())
    evaluate_paths(cfg, [sae_dir], progress=False, sae_ids=[sae_id])
    with pytest.raises(ExportError, match="export_inputs"):  # reports build no cache
        export_saes(run, "saebench", tmp_path / "out")
    exported = export_saes(run, "saebench", tmp_path / "out", export_inputs(run, "saebench"))

    folder = exported[0].path
    bench = SAEBenchSAE.load(folder)
    x, _ = _acts(16)
    with torch.no_grad():  # the same function from SAEBench's class and from sae-lens
        torch.testing.assert_close(bench(x), sae(x * SCALE).x_hat / SCALE,
                                   rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(SAE.load_from_disk(str(folder))(x), bench(x),
                                   rtol=1e-5, atol=1e-4)
    path = (tmp_path / "out" / SAEBENCH_DIR / "medical" / "core"
            / results_filename("sae-med-demo", sae_id))
    doc = json.loads(path.read_text(), parse_constant=_reject_nan)
    jsonschema.validate(doc, CORE_SCHEMA)
    row = json.loads((run / "results.json").read_text())["rows"][0]
    perf = doc["eval_result_metrics"]["model_performance_preservation"]
    assert perf["ce_loss_score"] == row["metrics"]["loss_recovered"]["value"]
    assert perf["ce_loss_without_sae"] == row["metrics"]["ce_clean"]["value"]
    assert len(doc["eval_result_details"]) == D_SAE
    assert doc["sae_cfg_dict"]["model_name"] == str(tiny_lm_dirs["llama"])
    assert doc["eval_result_unstructured"]["sae_med"]["weights"]["sha256"]
    metrics = doc["eval_result_metrics"]
    assert metrics["sparsity"]["l0"] > 0 and metrics["misc_metrics"]["frac_alive"] > 0
    assert all(math.isfinite(v) for group in metrics.values() for v in group.values())
