"""The home-field diagnostics: known answers on their parts, and one tiny trained run
(a random 3-block Llama, two seeds per side) whose report must agree with its evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sae_med import experiment
from sae_med.config import ConfigError, load_config
from sae_med.layout import HOMEFIELD_NAME
from sae_med.measure import homefield as hf
from sae_med.measure.bootstrap import DocResample, Draws, Interval
from sae_med.measure.homefield import (
    UNSEEN,
    EvalTokens,
    HomeFieldReport,
    TwinIndex,
    bin_labels,
    log_frequency_ratio,
    novel_documents,
    ratio_bins,
    recentred,
    recentring_row,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------
# Novel documents
# --------------------------------------------------------------------------------------

TRAIN = ["Fracture of the left femur, initial encounter",
         "Acute pain of the lower back",
         "Chronic kidney disease stage three"]


@pytest.mark.parametrize("text", [
    "fracture of the LEFT femur; initial encounter",     # the same words
    "Fracture of the right femur, initial encounter",    # one substituted
    "Fracture of the femur, initial encounter",          # one deleted
    "Fracture of the left upper femur, initial encounter",  # one inserted
])
def test_a_one_word_twin_is_found(text):
    assert TwinIndex(TRAIN).has_twin(text)


@pytest.mark.parametrize("text", [
    "Fracture of the right tibia, initial encounter",    # two substituted
    "of Fracture the left femur, initial encounter",     # two words swapped
    "Fracture of the femur initial",                     # two deleted
])
def test_two_words_apart_is_no_twin(text):
    assert not TwinIndex(TRAIN).has_twin(text)


def _word_distance(a: list[str], b: list[str]) -> int:
    """Levenshtein distance over words (the naive twin of TwinIndex.has_twin)."""
    row = list(range(len(b) + 1))
    for i, wa in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, wb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (wa != wb))
    return row[-1]


def test_twin_index_matches_the_naive_word_edit_distance():
    import random

    rng = random.Random(0)
    vocab = ["a", "b", "c", "d"]

    def text() -> list[str]:
        return [rng.choice(vocab) for _ in range(rng.randint(0, 5))]

    train = [text() for _ in range(30)]
    index = TwinIndex(" ".join(w) for w in train)
    queries = [text() for _ in range(400)]
    got = [index.has_twin(" ".join(q)) for q in queries]
    want = [min(_word_distance(q, t) for t in train) <= 1 for q in queries]
    assert got == want and 0 < sum(got) < len(got)


def test_trigram_overlap_known_answers():
    index = TwinIndex(TRAIN)
    # padded: <s> acute pain | acute pain of | ... | lower back </s>: all six in train
    assert index.overlap("Acute pain of the lower back") == 1.0
    assert index.overlap("Measles without complication") == 0.0
    # "<s> acute pain", "acute pain of" known; "pain of mild", "of mild </s>" new
    assert index.overlap("Acute pain of mild") == 0.5


def test_novel_documents_excludes_twins_and_overlapping_text():
    texts = [TRAIN[1],                                   # exact twin
             "Acute pain of the lower leg",              # one word off
             "Acute pain of the lower back and the neck",  # no twin, overlap 5/9
             "Measles without complication"]             # novel
    assert novel_documents(texts, TwinIndex(TRAIN), max_overlap=0.5).tolist() == \
        [False, False, False, True]
    assert novel_documents(texts[2:3], TwinIndex(TRAIN), max_overlap=0.6).tolist() == [True]


# --------------------------------------------------------------------------------------
# Frequency-ratio bins
# --------------------------------------------------------------------------------------

def test_log_frequency_ratio_known_answer():
    domain = torch.tensor([0, 0, 0, 1])                  # N = 4
    broad = torch.tensor([1, 1, 2, 2, 2, 2, 2, 2])       # N = 8
    ratio, seen = log_frequency_ratio(domain, broad, vocab=4)
    expect = [math.log((3 + 1) / 4) - math.log(1 / 8), math.log(2 / 4) - math.log(3 / 8),
              math.log(1 / 4) - math.log(7 / 8), math.log(1 / 4) - math.log(1 / 8)]
    assert ratio.tolist() == pytest.approx(expect)
    assert seen.tolist() == [True, True, True, False]


def test_ratio_bins_partition_the_tokens():
    g = torch.Generator().manual_seed(0)
    vocab = 50
    ratio, seen = log_frequency_ratio(torch.randint(40, (500,), generator=g),
                                      torch.randint(10, 45, (700,), generator=g), vocab)
    tokens = torch.randint(vocab, (2000,), generator=g)
    bins = ratio_bins(tokens, ratio, seen)
    labels = bin_labels()
    assert bins.min() >= 0 and bins.max() < len(labels)
    counts = torch.bincount(bins, minlength=len(labels))
    assert int(counts.sum()) == len(tokens)
    assert counts[-1] == int((tokens >= 45).sum())       # in neither sample
    assert labels[-1][0] == UNSEEN
    for i, (_, lo, hi) in enumerate(labels[:-1]):       # each bin holds its ratios only
        r = ratio[tokens[bins == i]]
        assert bool((r >= (-math.inf if lo is None else lo)).all())
        assert bool((r < (math.inf if hi is None else hi)).all())


# --------------------------------------------------------------------------------------
# Recentring
# --------------------------------------------------------------------------------------

def _sae_for(x: torch.Tensor, d_sae: int = 96):
    """A random encoder thresholded at its 90% quantile, least-squares decoder."""
    from sae_med.sae.jumprelu import JumpReLUSAE

    sae = JumpReLUSAE(x.shape[1], d_sae, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = (x - x.mean(0)) @ sae.W_enc
        sae.b_enc.copy_(-x.mean(0) @ sae.W_enc)
        sae.log_threshold.copy_(torch.quantile(z, 0.9, dim=0).clamp_min(1e-3).log())
        f = sae.encode(x).double()
        sol = torch.linalg.lstsq(f, (x - x.mean(0)).double()).solution
        sae.W_dec.copy_(sol.float())
        sae.b_dec.copy_(x.mean(0))
    return sae


def _draws(point, reps):
    return Draws(point, np.asarray(reps, dtype=float))


def test_closed_share_known_answers():
    d, b = _draws(1.0, [1.0, 1.2]), _draws(3.0, [2.8, 3.4])
    fam = {"domain": {("m", "all"): hf.Measured(d, 1, 1)},
           "broad": {("m", "all"): hf.Measured(b, 1, 1)}}
    for r, closed in ((b, 0.0), (d, 1.0), (_draws(2.0, [1.9, 2.3]), 0.5)):
        row = recentring_row({**fam, "recentred": {("m", "all"): hf.Measured(r, 1, 1)}}, "m")
        assert row.closed.value == pytest.approx(closed)
        assert row.closed.low == pytest.approx(closed) and row.closed.high == pytest.approx(
            closed)
        assert row.gap.value == pytest.approx(-2.0)


def _eval_tokens(x: torch.Tensor, n_docs: int = 20) -> EvalTokens:
    doc = torch.arange(len(x)) % n_docs
    labels = bin_labels((0.0,))
    return EvalTokens(x, doc, doc % len(labels), torch.ones(len(x), dtype=torch.bool),
                      x.double().mean(0), labels)


def _resample(n_docs: int, n_boot: int = 30) -> DocResample:
    from sae_med.measure.bootstrap import doc_resample

    return doc_resample([torch.arange(n_docs)], n_boot, 0)


def test_recentring_on_identical_means_changes_nothing():
    x = torch.randn(400, 16, generator=torch.Generator().manual_seed(1)) + 3.0
    sae = _sae_for(x)
    same = recentred(sae, torch.zeros(16))
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "log_threshold"):
        assert torch.equal(getattr(sae, name), getattr(same, name)), name
    ev, rs = _eval_tokens(x), _resample(20)
    novel = torch.zeros(20, dtype=torch.bool)
    a, b = hf.recon_stats(sae, ev, novel, rs), hf.recon_stats(same, ev, novel, rs)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].draws.point == b[k].draws.point or math.isnan(a[k].draws.point), k
        np.testing.assert_array_equal(a[k].draws.reps, b[k].draws.reps)


def test_a_mean_shift_equal_to_a_constant_offset_closes_the_gap():
    """Domain activations = broad ones + c. The broad SAE fits the broad cache; the domain
    SAE is what a trainer that centres its inputs makes of the shifted cache (the broad SAE
    around the shifted mean). Recentring the broad SAE by E_domain − E_broad (= c) is
    then the domain SAE, and closes the whole typical-FVE gap on domain text."""
    g = torch.Generator().manual_seed(2)
    broad_x = torch.randn(600, 16, generator=g) * torch.linspace(0.5, 3.0, 16) + 1.0
    c = 4.0 * torch.randn(16, generator=g)
    domain_x = broad_x + c
    broad = _sae_for(broad_x)
    domain = recentred(broad, c)
    shift = domain_x.double().mean(0).float() - broad_x.double().mean(0).float()
    ev, rs = _eval_tokens(domain_x), _resample(20)
    novel = torch.zeros(20, dtype=torch.bool)
    stats = {(side, 0): hf.recon_stats(sae, ev, novel, rs, full=False) for side, sae in (
        ("domain", domain), ("broad", broad), ("recentred", recentred(broad, shift)))}
    fam = hf.families(stats, {"domain": "d", "broad": "b", "recentred": "b"}, 30, 0)
    row = recentring_row(fam, "fve_typical")
    assert row.gap.value > 0.05                    # the unshifted broad SAE loses
    assert row.closed.value == pytest.approx(1.0, abs=1e-3)
    assert row.closed.low == pytest.approx(1.0, abs=1e-3)
    assert row.closed.high == pytest.approx(1.0, abs=1e-3)


def test_an_empty_subset_is_nan_not_an_error():
    from sae_med.measure.metrics import DocCE, summarize_ce

    empty = DocCE(*(torch.zeros(0, dtype=torch.float64) for _ in DocCE._fields))
    m = hf.measure(empty, lambda c: summarize_ce(c).delta_ce, torch.zeros(0, dtype=torch.long),
                   _resample(5))
    assert math.isnan(m.draws.point) and np.isnan(m.draws.reps).all()
    assert (m.n_documents, m.n_tokens) == (0, 0)


# --------------------------------------------------------------------------------------
# A tiny trained run, end to end
# --------------------------------------------------------------------------------------

SMOKE = "configs/smoke.yaml"


def run_overrides(lm, root) -> list[str]:
    return [f"model.name={lm}", "model.hook_layer=1", f"cache_dir={root / 'cache'}",
            f"output_dir={root / 'runs'}", "replications={}", "learning_curve={}",
            "train_corpora=[medical, broad]", "eval_corpora=[medical, broad]",
            "cache.n_tokens=1024", "cache.shard_tokens=512", "sae.width=64",
            "sae.l0_targets=[4]", "sae.seeds=2", "train.n_tokens=4096",
            "train.batch_size=256", "train.workers=1", "eval.n_tokens=512",
            "eval.ce_docs=12", "eval.bootstrap=40"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A random Llama (d_model 32) and the embedded tokenizer; two SAEs per side."""
    from tiny_lms import save_tiny_lm

    root = tmp_path_factory.mktemp("homefield")
    lm = save_tiny_lm(root / "llama", "llama")
    cfg = load_config(SMOKE, run_overrides(lm, root))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only spins on a busy CPU
    try:
        results = json.loads(experiment.run_experiment(cfg, progress=False).read_text())
        return cfg, results, experiment.homefield_report(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)


def test_the_whole_documents_are_the_evaluations_families(run):
    """On all documents, each side's across-seed mean and interval are the evaluation's
    family rows: same splices, documents, resample and seed draws."""
    _, results, report = run
    fam = {(f["train_corpus"], f["metric"]): f for f in results["families"]
           if f["eval_corpus"] == "medical" and f["basis"] == "l0_target"}
    for row in (r for r in report.novelty if r.subset == "all"):
        for side, corpus in (("domain", "medical"), ("broad", "broad")):
            want, got = fam[(corpus, row.metric)], getattr(row, side)
            assert got.value == pytest.approx(want["value"], rel=1e-9), (side, row.metric)
            assert (got.low, got.high) == pytest.approx((want["low"], want["high"]),
                                                        rel=1e-9)
    rec = {r.metric: r for r in report.recentring}
    all_rows = {r.metric: r for r in report.novelty if r.subset == "all"}
    for m, r in rec.items():
        assert r.domain == all_rows[m].domain and r.gap == all_rows[m].gap
    assert report.n_seeds == 2 and report.l0_target == 4


def test_subsets_and_bins_partition_the_documents_and_tokens(run):
    cfg, _, report = run
    by = {(r.metric, r.subset): r for r in report.novelty}
    for m in ("delta_ce", "fve_typical"):
        assert by[(m, "novel")].n_tokens + by[(m, "rest")].n_tokens == by[(m, "all")].n_tokens
        assert by[(m, "novel")].n_documents + by[(m, "rest")].n_documents == \
            by[(m, "all")].n_documents
    mse = [r for r in report.frequency if r.metric == "mse"]
    fvu = [r for r in report.frequency if r.metric == "fvu_typical"]
    assert [r.subset for r in mse] == [label for label, _, _ in bin_labels()]
    assert sum(r.n_tokens for r in mse) == cfg.eval.n_tokens
    assert sum(r.n_tokens for r in fvu) == by[("fve_typical", "all")].n_tokens


def test_the_report_is_reused_and_read_back(run, monkeypatch):
    cfg, _, report = run
    path = cfg.run_path / HOMEFIELD_NAME
    assert json.loads(path.read_text())["inputs_key"] == report.inputs_key

    def no_compute(*_a, **_k):
        raise AssertionError("recomputed with unchanged inputs")

    monkeypatch.setattr(experiment, "compute_homefield", no_compute)
    again = experiment.homefield_report(cfg, progress=False)
    assert again.to_dict() == report.to_dict()
    assert again.summary() == report.summary()
    inp = experiment.home_inputs(cfg, progress=False)
    assert hf.inputs_key(cfg, inp, 0.3, hf.RATIO_EDGES) != report.inputs_key


def test_frames_and_summary_come_from_the_numbers(run):
    _, _, report = run
    frames = report.frames()
    assert list(frames.recentring.metric) == ["delta_ce", "fve_typical"]
    assert {"closed", "closed_low", "closed_high"} <= set(frames.recentring.columns)
    assert len(frames.frequency) == 2 * len(bin_labels())
    long = report.frame()
    assert len(long) == 5 * 2 + 3 * 6 + 2 * 2 + 3 * 2 * len(bin_labels())
    closed = long.query("part == 'recentring' and metric == 'delta_ce' "
                        "and quantity == 'closed'").value.item()
    assert closed == report.recentring[0].closed.value
    text = report.summary()
    assert text.endswith(".") and "\n" not in text
    novel = next(r for r in report.novelty if r.metric == "delta_ce" and r.subset == "novel")
    assert f"{novel.gap.value:+.3f}" in text and f"{report.recentring[0].gap.value:+.3f}" in text


def _iv(value, low, high):
    return Interval(value, low, high)


def _report(gap: Interval, closed: Interval, rest_gap: Interval) -> HomeFieldReport:
    """A report holding chosen numbers, for the sentence's known answers."""
    z = _iv(0.0, -0.1, 0.1)
    novelty = tuple(hf.GapRow("novelty", s, m, n, 10 * n, z, z, g)
                    for m in ("delta_ce", "fve_typical")
                    for s, n, g in (("novel", 30, _iv(-0.4, -0.5, -0.3)), ("rest", 70, rest_gap),
                                    ("all", 100, gap)))
    freq = tuple(hf.GapRow("frequency", label, "fvu_typical", 5, 50, z, z,
                           _iv(-0.01 * i, -0.01 * i - 0.005, -0.01 * i + 0.005), lo, hi)
                 for i, (label, lo, hi) in enumerate(bin_labels()))
    rec = tuple(hf.Recentring(m, z, z, z, gap, closed) for m in ("delta_ce", "fve_typical"))
    surv = tuple(hf.Survival(m, z, _iv(0.8, 0.6, 1.0)) for m in ("delta_ce", "fve_typical"))
    return HomeFieldReport("medical", "broad", 40.0, 3, 100, 80, 12.5, 0.5, rec, novelty,
                           surv, freq, "key")


def test_the_summary_sentence_known_answers():
    text = _report(_iv(-0.5, -0.6, -0.4), _iv(0.25, 0.1, 0.4), _iv(-0.5, -0.6, -0.4)).summary()
    assert text == (
        "At target L0 40, the ΔCE gap (medical SAE − broad SAE) on medical text is -0.500 "
        "[-0.600, -0.400] nats, and recentring the broad SAE on the medical mean closes 25% "
        "[10%, 40%] of it; on the 30 of 100 CE documents with no one-word twin and ≤ 50% of "
        "their word 3-grams among its training documents the ΔCE gap is -0.400 [-0.500, "
        "-0.300] against -0.500 [-0.600, -0.400] on the rest (80% [60%, 100%] of it); the "
        "typical-token FVU gap is -0.070 [-0.075, -0.065] on tokens with ln(frequency ratio) "
        "≥ 4 against -0.030 [-0.035, -0.025] on tokens [-0.5, 0.5).")
    unresolved = _report(_iv(-0.05, -0.2, 0.1), _iv(3.0, -9.0, 9.0), _iv(0.0, -0.1, 0.1))
    text = unresolved.summary()
    assert "not resolved from 0, so no share of it is explained" in text
    assert "300%" not in text and "of it)" not in text


def test_the_report_survives_its_json():
    report = _report(_iv(-0.5, -0.6, -0.4), _iv(math.nan, None, None), _iv(-0.5, None, None))
    doc = json.loads(json.dumps(report.to_dict()))
    back = HomeFieldReport.from_dict(doc)
    assert back.to_dict() == doc and back.summary() == report.summary()
    assert math.isnan(back.recentring[0].closed.value)


def test_the_command_line_prints_the_summary_and_the_file(run, capsys):
    from sae_med import cli

    cfg, _, report = run
    lm = cfg.model.name
    root = cfg.run_path.parents[1]
    assert cli.main(["homefield", SMOKE, *run_overrides(lm, root)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2:] == [report.summary(), f"homefield={cfg.run_path / HOMEFIELD_NAME}"]
    bad = [*run_overrides(lm, root), f"output_dir={root / 'nowhere'}"]
    assert cli.main(["homefield", SMOKE, *bad]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no trained SAE" in err and "sae-med train" in err


def test_bad_inputs_are_one_clear_error(run, tmp_path):
    import dataclasses

    cfg, _, _ = run
    with pytest.raises(ConfigError, match="train_corpora"):
        hf.home_corpora(dataclasses.replace(cfg, eval_corpora=("medical",)))
    elsewhere = dataclasses.replace(cfg, output_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="sae-med train"):
        experiment.home_inputs(elsewhere, progress=False)
