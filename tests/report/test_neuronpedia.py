"""Neuronpedia upload files: the one-pass latent summaries and chunked logit lens agree with
their naive twins, feature records follow every architecture's encoding, and `sae-med
export --format neuronpedia` writes a source folder whose records carry Neuronpedia's
field names and read back to what the SAE does."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_saes import ARCHITECTURES, raw_activations, tiny_sae

from sae_med.cache.activations import TokenInfo
from sae_med.config import load_config
from sae_med.experiment import export_inputs
from sae_med.interpret.features import LatentActs
from sae_med.report.export import export_saes
from sae_med.report.exported import NEURONPEDIA_DIR, ExportError
from sae_med.report.neuronpedia import (
    Activation,
    Explanation,
    Feature,
    Model,
    Release,
    Source,
    SourceInfo,
    SourceSet,
    latent_data,
    logit_lens_tokens,
    read_batches,
    source_features,
    window_rows,
)
from sae_med.sae.jumprelu import JumpReLUSAE

NEURONPEDIA_FIELDS = {
    Release: {"name", "description", "creatorName", "creatorId", "visibility", "isNewUi",
              "featured", "descriptionShort", "urls", "creatorEmail", "creatorNameShort",
              "defaultSourceSetName", "defaultSourceId", "defaultUmapSourceIds", "createdAt"},
    Model: {"id", "instruct", "creatorId", "displayNameShort", "displayName", "tlensId",
            "dimension", "visibility", "defaultSourceSetName", "defaultSourceId",
            "inferenceEnabled", "layers", "neuronsPerLayer", "createdAt", "owner",
            "updatedAt", "website"},
    SourceSet: {"modelId", "name", "creatorId", "hasDashboards", "visibility", "description",
                "type", "creatorName", "urls", "creatorEmail", "releaseName",
                "defaultOfModelId", "defaultRange", "defaultShowBreaks", "showDfa",
                "showCorrelated", "showHeadAttribution", "showUmap", "createdAt"},
    Source: {"id", "modelId", "setName", "creatorId", "hasDashboards", "inferenceEnabled",
             "inferenceHosts", "saelensConfig", "saelensRelease", "saelensSaeId", "hfRepoId",
             "hfFolderId", "visibility", "defaultOfModelId", "hasUmap", "hasUmapLogSparsity",
             "hasUmapClusters", "num_prompts", "num_tokens_in_prompt", "dataset", "notes",
             "createdAt"},
    Feature: {"modelId", "layer", "index", "creatorId", "createdAt", "maxActApprox",
              "hasVector", "vector", "vectorLabel", "vectorDefaultSteerStrength", "hookName",
              "topkCosSimIndices", "topkCosSimValues", "neuron_alignment_indices",
              "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_indices",
              "correlated_neurons_pearson", "correlated_neurons_l1",
              "correlated_features_indices", "correlated_features_pearson",
              "correlated_features_l1", "neg_str", "neg_values", "pos_str", "pos_values",
              "frac_nonzero", "freq_hist_data_bar_heights", "freq_hist_data_bar_values",
              "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
              "decoder_weights_dist"},
    Activation: {"id", "tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex",
                 "minValue", "values", "creatorId", "dataSource", "dataIndex", "dfaValues",
                 "dfaTargetIndex", "dfaMaxValue", "createdAt", "lossValues",
                 "logitContributions", "binMin", "binMax", "binContains",
                 "qualifyingTokenIndex"},
    Explanation: {"id", "modelId", "layer", "index", "description", "authorId", "embedding",
                  "triggeredById", "typeName", "explanationModelName", "notes", "createdAt"},
}
"""The fields of Neuronpedia's neuronpedia_utils/db_models dataclasses (upload format)."""
REQUIRED = {Release: {"name", "description", "creatorName", "creatorId"},
            Model: {"id", "instruct", "creatorId"},
            SourceSet: {"modelId", "name", "creatorId"},
            Source: {"id", "modelId", "setName", "creatorId"},
            Feature: {"modelId", "layer", "index"},
            Activation: {"id", "tokens", "index", "layer", "modelId", "maxValue",
                         "maxValueTokenIndex", "minValue", "values", "creatorId"},
            Explanation: {"id", "modelId", "layer", "index", "description", "authorId"}}
"""Those without a default there."""


def test_records_use_neuronpedias_field_names():
    for record, theirs in NEURONPEDIA_FIELDS.items():
        ours = {f.name for f in fields(record)}
        assert ours <= theirs, f"{record.__name__}: not Neuronpedia's {ours - theirs}"
        assert REQUIRED[record] <= ours, f"{record.__name__} lacks {REQUIRED[record] - ours}"


def _sparse(n_rows: int = 200, d_sae: int = 12) -> tuple[LatentActs, np.ndarray]:
    gen = torch.Generator().manual_seed(0)
    dense = torch.rand(n_rows, d_sae, generator=gen)
    dense[dense < 0.8] = 0
    dense[:, -1] = 0  # a dead latent
    r, c = dense.nonzero(as_tuple=True)
    return LatentActs(r, c, dense[r, c], n_rows, d_sae), (np.arange(n_rows) // 7)


def test_latent_data_matches_a_latent_by_latent_scan():
    acts, doc_index = _sparse()
    data = latent_data(acts, doc_index, k=3)
    for latent, d in enumerate(data):
        rows, values = acts.of_latent(latent)  # the naive twin: one scan per latent
        assert d.density == pytest.approx(len(rows) / acts.n_rows)
        if not len(rows):
            assert d.top_rows == [] and d.max_value == 0.0
            continue
        best = {}
        for r, v in zip(rows.tolist(), values.tolist(), strict=True):
            doc = doc_index[r]
            if doc not in best or v > best[doc][1]:
                best[doc] = (r, v)
        want = sorted(best.values(), key=lambda rv: -rv[1])[:3]
        assert d.top_rows == [r for r, _ in want]
        assert d.max_value == pytest.approx(values.max().item())
        assert sum(d.hist_heights) == len(rows)


def test_windows_stay_in_their_document():
    doc_index = np.array([0, 0, 0, 1, 1, 1, 1, 2])
    assert window_rows(doc_index, 4, left=5, right=1) == range(3, 6)
    assert window_rows(doc_index, 2, left=1, right=5) == range(1, 3)
    assert window_rows(doc_index, 7, left=3, right=3) == range(7, 8)


def test_chunked_logit_lens_matches_the_whole_product():
    gen = torch.Generator().manual_seed(0)
    W_dec, W_U = torch.randn(10, 8, generator=gen), torch.randn(8, 50, generator=gen)
    top_ids, top_vals, bot_ids, bot_vals = logit_lens_tokens(W_dec, W_U, k=4, chunk=3)
    logits = W_dec @ W_U
    assert torch.equal(top_ids, logits.topk(4).indices)
    assert torch.equal(bot_ids, (-logits).topk(4).indices)
    torch.testing.assert_close(bot_vals, -(-logits).topk(4).values)
    torch.testing.assert_close(top_vals, logits.topk(4).values)


class _Cache:
    """The members of an ActivationCache that :func:`source_features` reads."""

    def __init__(self, x: torch.Tensor, doc_index: torch.Tensor):
        self.x, self.doc_index, self.n_tokens = x, doc_index, len(x)

    def iter_ordered(self, batch_size):
        for start in range(0, self.n_tokens, batch_size):
            yield self.x[start:start + batch_size]

    def tokens(self) -> TokenInfo:
        rows = torch.arange(self.n_tokens)
        return TokenInfo(rows % 50, self.doc_index, rows)

    def doc_ids(self) -> list[str]:
        return [f"doc-{d}" for d in range(int(self.doc_index.max()) + 1)]


class _Tokenizer:
    def decode(self, ids: list[int]) -> str:
        return f"t{ids[0]}"


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_feature_records_follow_each_architectures_encoding(arch):
    sae = tiny_sae(arch)
    x, doc_index = raw_activations(n=96), torch.arange(96) // 8
    src = SourceInfo("m", 1, "s", "blocks.1.hook_resid_post", "sae-med:medical", "now")
    unembed = torch.randn(16, 50, generator=torch.Generator().manual_seed(2))
    features, windows = source_features(sae, _Cache(x, doc_index), _Tokenizer(), unembed,
                                        src, k_windows=3, k_tokens=4)
    folded = sae.folded()
    with torch.no_grad():
        f = folded.encode(x)
    assert [ft.index for ft in features] == [str(i) for i in range(sae.d_sae)]
    assert any(ft.frac_nonzero > 0 for ft in features)
    for i, ft in enumerate(features):
        assert ft.frac_nonzero == pytest.approx((f[:, i] != 0).float().mean().item())
        assert ft.maxActApprox == pytest.approx(max(f[:, i].max().item(), 0.0))
        torch.testing.assert_close(torch.tensor(ft.vector), folded.W_dec[i].detach())
        peaks = [w.maxValue for w in windows if w.index == str(i)]
        assert max(peaks, default=0.0) == pytest.approx(ft.maxActApprox)


def test_export_neuronpedia_writes_a_source_that_reads_back(tmp_path, cache_root,
                                                             tiny_lm_dirs):
    from sae_lens import SAE

    from sae_med.cache.activations import build_cache
    from sae_med.interpret.features import encode_cache
    from sae_med.lm.load import load_model

    run = tmp_path / "runs" / "demo"
    cfg = load_config(None, [
        "name=demo", f"cache_dir={cache_root}", f"output_dir={tmp_path / 'runs'}",
        f"model.name={tiny_lm_dirs['llama']}", "model.hook_layer=1", "cache.ctx_len=32",
        "eval.n_tokens=200", "eval_corpora=[medical]"])
    sae_dir = run / "saes" / "medical" / "seed_0" / "l0_4"
    sae = JumpReLUSAE(32, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        sae.log_threshold.fill_(-20.0)  # fires on the tiny model's small activations
    sae.save(sae_dir, metadata={"train_corpus": "medical", "l0_target": 4.0, "replicate": 0})
    (sae_dir / "config.json").write_text(cfg.to_json())
    explained = run / "autointerp" / "l0_4" / "latents.csv"
    explained.parent.mkdir(parents=True)
    # autointerp spreads a family's latents over its seeds: seed 1's row is not seed 0's;
    # latent 9 was explained but had no held-out windows to score on (an empty cell)
    pd.DataFrame({"latent": [3, 5, 7, 9],
                  "explanation": ["anatomy terms", "", "seed 1's", "drug names"],
                  "detection_auroc": [0.75, float("nan"), 0.8, float("nan")],
                  "sae": "medical", "replicate": [0, 0, 1, 0]}).to_csv(explained, index=False)

    with pytest.raises(ExportError, match="export_inputs"):  # reports build no cache
        export_saes(run, "neuronpedia", tmp_path / "out")
    exported = export_saes(run, "neuronpedia", tmp_path / "out", export_inputs(run, "neuronpedia"))
    SAE.load_from_disk(str(exported[0].path))  # the weights a source points at
    model_dir = tmp_path / "out" / NEURONPEDIA_DIR / "llama"
    (folder,) = model_dir.iterdir()
    assert folder.name == "1-sae-med-demo-medical-seed-0-l0-4"
    one = {k: json.loads((folder / f"{k}.jsonl").read_text())
           for k in ("release", "model", "sourceset", "source")}
    assert one["source"]["id"] == folder.name and not one["source"]["inferenceEnabled"]
    assert "sha256" in one["source"]["notes"]
    features = read_batches(folder, "features")
    assert [f["index"] for f in features] == [str(i) for i in range(16)]
    for kind, record in (("features", Feature), ("activations", Activation),
                         ("explanations", Explanation)):
        assert {f.name for f in fields(record)} == set(read_batches(folder, kind)[0])

    model = load_model(str(tiny_lm_dirs["llama"]), "cpu")
    acts = encode_cache(sae, build_cache(model, cfg, "medical", "eval", n_tokens=200,
                                         progress=False), progress=False)
    rate = acts.firing_rate()
    for f in features:
        latent = int(f["index"])
        assert f["frac_nonzero"] == pytest.approx(rate[latent].item())
        torch.testing.assert_close(torch.tensor(f["vector"]), sae.W_dec[latent].detach())
    windows = [a for a in read_batches(folder, "activations") if a["index"] == "0"]
    assert windows and windows[0]["maxValue"] == pytest.approx(features[0]["maxActApprox"])
    assert all(len(w["tokens"]) == len(w["values"]) for w in windows)
    explanations = read_batches(folder, "explanations")
    assert [(e["index"], e["description"], e["notes"]) for e in explanations] == [
        ("3", "anatomy terms", "detection AUROC 0.750"),
        ("9", "drug names", "detection AUROC: not scored")]
