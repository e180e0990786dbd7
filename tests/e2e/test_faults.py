"""Fault injection, for real: racing processes, kill -9 mid-write, bit flips, a full and a
read-only file system, a hostile HTTP client, and the one-line errors of the command line.

Caches here come from a 2-block, 16-wide random Llama reading characters as tokens (the
cache code path of the real model at a fraction of the cost); training runs on synthetic
activations. Each test adds its rows to the table ``fault, runs, survived, data lost``
printed at the end of the module (``-s``), and written to ``$SAE_MED_FAULT_TABLE`` if set.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from sae_med import cli
from sae_med.artifacts import ArtifactLockedError, write_json_atomic
from sae_med.cache.activations import ActivationCache, CorruptCacheError, build_cache, cache_spec
from sae_med.cache.batches import TensorBatchSource
from sae_med.config import ConfigError, config_from_dict
from sae_med.interpret.chat import Generation, GenerationStopped
from sae_med.interpret.chat_server import ServerLimits, make_server, serve
from sae_med.sae.base import SAECheckpointError
from sae_med.sae.io import from_gemma_scope_npz
from sae_med.sae.jumprelu import JumpReLUSAE
from sae_med.train.checkpoint import read_checkpoint
from sae_med.train.records import TrainingError
from sae_med.train.sweep import train_saes

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
TABLE: dict[str, list[int]] = {}
"""fault -> [runs, survived, data lost]."""

pytestmark = pytest.mark.usefixtures("one_thread")


def record(fault: str, runs: int, survived: int, lost: int = 0) -> None:
    row = TABLE.setdefault(fault, [0, 0, 0])
    row[0] += runs
    row[1] += survived
    row[2] += lost


@pytest.fixture(scope="module", autouse=True)
def _fault_table():
    yield
    lines = ["| fault | runs | survived | data lost |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {r} | {s} | {lost} |" for k, (r, s, lost) in TABLE.items()]
    print("\n" + "\n".join(lines))
    if out := os.environ.get("SAE_MED_FAULT_TABLE"):
        Path(out).write_text("\n".join(lines) + "\n")


def assert_one_line(err: BaseException, *needles: str) -> str:
    """The command line's rendering of ``err``: a known error, one line, naming ``needles``."""
    assert cli._known(err), f"{type(err).__name__} is not handled by the command line"
    line = cli.one_line(err)
    assert "\n" not in line and len(line) < 600, line
    for n in needles:
        assert n in line, (n, line)
    return line


# ------------------------------------------------------------------------ tiny model

TINY_MODEL = textwrap.dedent('''
    import torch
    from sae_med.config import load_config
    from sae_med.lm.model import LanguageModel

    def tiny_model():
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        # characters as tokens: the cache code path without loading a 262k vocabulary
        specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
        vocab = {t: i for i, t in enumerate(specials + [chr(c) for c in range(32, 127)])}
        chars = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        chars.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
        chars.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", 1)])
        tok = PreTrainedTokenizerFast(tokenizer_object=chars, bos_token="<bos>",
                                      eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
        torch.manual_seed(0)
        hf = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
            tie_word_embeddings=True)).eval()
        return LanguageModel(hf, tok, "tiny-llama", "tiny-llama-seed0")

    def cache_cfg(root, *extra):
        return load_config(None, [f"cache_dir={root}", "cache.n_tokens=400",
                                  "cache.shard_tokens=100", "cache.batch_size=1",
                                  "cache.ctx_len=16", "model.hook_layer=1", *extra])
''')
_ns: dict = {}
exec(TINY_MODEL, _ns)  # noqa: S102 - the same code the subprocesses run
cache_cfg = _ns["cache_cfg"]


@pytest.fixture(scope="module")
def tiny():
    return _ns["tiny_model"]()


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """The tiny cache built once, undisturbed: what every faulted build must equal."""
    return build_cache(tiny, cache_cfg(tmp_path_factory.mktemp("ref")), "medical", "train",
                       progress=False)


def same_cache(a: ActivationCache, b: ActivationCache) -> bool:
    return (a.key == b.key and a.n_tokens == b.n_tokens
            and torch.equal(a.token_info(), b.token_info())
            and torch.allclose(a.activations(), b.activations(), atol=1e-6))


def _run(script: str, *args: str, timeout: float = 120) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", TINY_MODEL + textwrap.dedent(script),
                             *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


# ------------------------------------------------------------------------ locks

RACE_BUILD = '''
    import logging, sys, time
    from pathlib import Path
    import sae_med.cache.activations as A
    logging.basicConfig(level=logging.INFO)
    root, me, other = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    model = tiny_model()
    slow_rows = A.chunk_rows
    def chunk_rows(*a, **k):  # slow enough that the two builds overlap for real
        time.sleep(0.1)
        return slow_rows(*a, **k)
    A.chunk_rows = chunk_rows
    me.touch()
    while not other.exists():  # start together
        time.sleep(0.01)
    cache = A.build_cache(model, cache_cfg(root), "medical", "train", progress=False)
    print(cache.key, cache.n_tokens)
'''


def test_two_processes_racing_on_one_cache_key(tmp_path, reference):
    root = tmp_path / "cache"
    a, b = tmp_path / "a", tmp_path / "b"
    procs = [_run(RACE_BUILD, str(root), str(a), str(b)),
             _run(RACE_BUILD, str(root), str(b), str(a))]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    keys = {out.split()[0] for out, _ in outs}
    assert keys == {reference.key}
    assert any("waiting for another process" in err for _, err in outs)  # serialised
    built = ActivationCache(root / "activations" / reference.key)  # verifies every sha256
    ok = same_cache(built, reference)
    record("two cache builds racing on one key", 1, int(ok), int(not ok))
    assert ok


RACE_TRAIN = '''
    import sys, time, torch
    from pathlib import Path
    from sae_med.cache.batches import TensorBatchSource
    from sae_med.config import config_from_dict
    from sae_med.train.sweep import train_saes
    import json
    out, started, cfg = sys.argv[1], Path(sys.argv[2]), config_from_dict(json.loads(sys.argv[3]))

    class Slow(TensorBatchSource):
        def iter_batches(self, batch_size, seed, start_batch=0):
            started.touch()
            for b in super().iter_batches(batch_size, seed, start_batch):
                time.sleep(0.05)
                yield b

    torch.manual_seed(1)
    train_saes(cfg, Slow(torch.randn(512, 16)), out, progress=False)
    print("done")
'''


def tiny_train_cfg(**train):
    return config_from_dict({"seed": 0, "sae": {"width": 64, "l0_targets": [4, 8]},
                             "train": {"n_tokens": 32 * 12, "batch_size": 32, "lr": 1e-3,
                                       "lr_warmup_steps": 2, "sparsity_warmup_steps": 4,
                                       "norm_batches": 2, "checkpoint_every": 4,
                                       "log_every": 2, "device": "cpu", **train}})


def test_a_second_training_run_into_one_folder_is_refused(tmp_path):
    out, started = tmp_path / "run", tmp_path / "started"
    cfg = tiny_train_cfg()
    p = _run(RACE_TRAIN, str(out), str(started), json.dumps(cfg.to_dict()))
    while not started.exists() and p.poll() is None:
        time.sleep(0.05)
    torch.manual_seed(1)
    with pytest.raises(ArtifactLockedError) as err:
        train_saes(cfg, TensorBatchSource(torch.randn(512, 16)), out, progress=False)
    assert_one_line(err.value, "another process is writing", str(out))
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0 and "done" in stdout, stderr[-2000:]
    state = read_checkpoint(out / "checkpoint.pt")  # the first run's work is intact
    ok = state["step"] == 12
    record("two training runs into one folder", 1, int(ok), int(not ok))
    assert ok


# ------------------------------------------------------------------------ kill -9

KILL_DURING_SHARD = '''
    import sys, time
    import numpy as np
    from sae_med.cache.activations import build_cache
    save = np.save
    def slow_save(f, arr, *a, **k):  # hold each temp file half-made for a while
        save(f, arr, *a, **k)
        f.flush()
        time.sleep(0.3)
    np.save = slow_save
    build_cache(tiny_model(), cache_cfg(sys.argv[1]), "medical", "train", progress=False)
'''


def _wait_for(pattern: str, where: Path, proc: subprocess.Popen, timeout: float = 120
              ) -> None:
    t0 = time.time()
    while not list(where.glob(pattern)):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() - t0 < timeout, f"no {pattern} in {where}"
        time.sleep(0.01)


def test_kill_during_shard_write_resumes_to_the_same_cache(tmp_path, tiny, reference):
    runs = survived = 0
    for shard in ("00001",):  # one shard complete, the next one half-written
        root = tmp_path / f"kill{shard}"
        p = _run(KILL_DURING_SHARD, str(root))
        _wait_for(f"activations/*/.shard_{shard}.npy.*.tmp", root, p)
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert not list(root.glob("activations/*/manifest.json"))  # incomplete: no manifest
        cache = build_cache(tiny, cache_cfg(root), "medical", "train", progress=False)
        assert not list(cache.root.glob(".*.tmp"))  # the killed writer's temp files are gone
        runs += 1
        survived += same_cache(cache, reference)
    record("kill -9 during a shard write", runs, survived, runs - survived)
    assert survived == runs


KILL_DURING_CHECKPOINT = '''
    import sys, time, json, torch
    from sae_med.cache.batches import TensorBatchSource
    from sae_med.config import config_from_dict
    import sae_med.train.checkpoint as C
    import sae_med.train.sweep as T
    write = C._HashingWriter.write
    def slow_write(self, data):  # each checkpoint takes a while to write
        time.sleep(0.05)
        return write(self, data)
    C._HashingWriter.write = slow_write
    torch.manual_seed(1)
    T.train_saes(config_from_dict(json.loads(sys.argv[2])),
                 TensorBatchSource(torch.randn(512, 16)), sys.argv[1], progress=False)
'''


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return {k: v for t in (4, 8) for k, v in
            JumpReLUSAE.load(out / f"l0_{t}").state_dict().items()}


def _metrics(out: Path) -> list[str]:
    return [ln for t in (4, 8) for ln in (out / f"l0_{t}" / "metrics.jsonl").read_text()
            .splitlines()]


def test_kill_during_checkpoint_write_and_half_a_metrics_line(tmp_path):
    cfg = tiny_train_cfg()
    torch.manual_seed(1)
    acts = torch.randn(512, 16)
    train_saes(cfg, TensorBatchSource(acts), tmp_path / "clean", progress=False)
    out = tmp_path / "killed"
    p = _run(KILL_DURING_CHECKPOINT, str(out), json.dumps(cfg.to_dict()))
    _wait_for("checkpoint.prev.pt", out, p)  # the second checkpoint is being written
    _wait_for(".checkpoint.pt.*.tmp", out, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    step = read_checkpoint(out / "checkpoint.pt")["step"]  # verified, complete
    with open(out / "l0_4" / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "loss": 0.1')  # a row cut short by the kill
    train_saes(cfg, TensorBatchSource(acts), out, resume=True, progress=False)
    same_weights = all(torch.equal(a, b) for a, b in zip(
        _final_weights(out).values(), _final_weights(tmp_path / "clean").values(),
        strict=True))
    same_metrics = _metrics(out) == _metrics(tmp_path / "clean")
    ok = step in (4, 8, 12) and same_weights and same_metrics
    record("kill -9 during a checkpoint write (+ half a metrics row)", 1, int(ok), int(not ok))
    assert ok


KILL_BEFORE_SAVING = '''
    import json, sys, time, torch
    from pathlib import Path
    from sae_med.cache.batches import TensorBatchSource
    from sae_med.config import config_from_dict
    import sae_med.train.sweep as T
    def stalled_save(*a, **k):  # killed after the final checkpoint, before any SAE is saved
        Path(sys.argv[3]).touch()
        time.sleep(600)
    T._save_saes = stalled_save
    torch.manual_seed(1)
    T.train_saes(config_from_dict(json.loads(sys.argv[2])),
                 TensorBatchSource(torch.randn(512, 16)), sys.argv[1], progress=False)
'''


def test_kill_after_the_final_checkpoint_before_the_saes_are_saved(tmp_path):
    cfg = tiny_train_cfg()
    torch.manual_seed(1)
    acts = torch.randn(512, 16)
    train_saes(cfg, TensorBatchSource(acts), tmp_path / "clean", progress=False)
    out, saving = tmp_path / "killed", tmp_path / "saving"
    p = _run(KILL_BEFORE_SAVING, str(out), json.dumps(cfg.to_dict()), str(saving))
    _wait_for(saving.name, tmp_path, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert read_checkpoint(out / "checkpoint.pt")["step"] == 12  # the final one
    assert not (out / "l0_4" / "cfg.json").exists()
    train_saes(cfg, TensorBatchSource(acts), out, resume=True, progress=False)
    ok = (out / "l0_4" / "cfg.json").exists() and all(torch.equal(a, b) for a, b in zip(
        _final_weights(out).values(), _final_weights(tmp_path / "clean").values(),
        strict=True))
    record("kill -9 after the final checkpoint, before the SAEs are saved", 1, int(ok),
           int(not ok))
    assert ok


# ------------------------------------------------------------------------ bit flips

def flip_bit(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def test_bit_flips_in_a_checkpoint_are_refused_naming_the_previous_one(tmp_path):
    cfg = tiny_train_cfg(n_tokens=32 * 10)  # checkpoints at 4, 8 and the final 10
    torch.manual_seed(1)
    acts = torch.randn(512, 16)
    clean = tmp_path / "clean"
    train_saes(cfg, TensorBatchSource(acts), clean, progress=False)
    rng, runs, refused = random.Random(0), 8, 0
    for i in range(runs):
        run = tmp_path / f"flip{i}"
        shutil.copytree(clean, run)
        for saved in run.glob("l0_*/cfg.json"):  # unfinished: resuming reads the checkpoint
            saved.unlink()
        flip_bit(run / "checkpoint.pt", rng)
        with pytest.raises(TrainingError) as err:
            train_saes(cfg, TensorBatchSource(acts), run, resume=True, progress=False)
        assert_one_line(err.value, f"{run / 'checkpoint.pt'} fails its sha256 check",
                        f"{run / 'checkpoint.prev.pt'} (step 8)")
        refused += 1
    # following the message: the previous checkpoint resumes to the same weights
    os.replace(run / "checkpoint.prev.pt", run / "checkpoint.pt")
    train_saes(cfg, TensorBatchSource(acts), run, resume=True, progress=False)
    same = all(torch.equal(a, b) for a, b in zip(_final_weights(run).values(),
                                                 _final_weights(clean).values(), strict=True))
    record("bit flip in checkpoint.pt", runs, refused, 0 if same else 1)
    assert same


def test_nan_at_step_0_claims_no_checkpoint(tmp_path):
    cfg = tiny_train_cfg()
    acts = torch.randn(512, 16)
    acts[:, 3] = float("nan")
    with pytest.raises(TrainingError) as err:
        train_saes(cfg, TensorBatchSource(acts), tmp_path / "nan", progress=False)
    line = assert_one_line(err.value, "NaN")
    assert "no checkpoint was written yet" in line or "normalisation" in line, line
    assert "last good checkpoint" not in line


def test_bit_flips_in_shards_and_manifests_are_named(tmp_path, reference):
    rng, shard_runs, manifest_runs, survived, lost = random.Random(1), 6, 12, 0, 0
    for i in range(shard_runs + manifest_runs):
        root = tmp_path / f"c{i}" / reference.key
        shutil.copytree(reference.root, root)
        if i < shard_runs:
            target = root / rng.choice([f"shard_{j:05d}{s}" for j in range(4)
                                        for s in (".npy", ".tokens.npy")])
        else:
            target = root / "manifest.json"
        flip_bit(target, rng)
        try:
            loaded = ActivationCache(root)
        except CorruptCacheError as err:
            assert_one_line(err, target.name, str(root))
            survived += 1
            continue
        # a flip the checks cannot see must not have changed the data
        ok = same_cache(loaded, reference) and loaded.doc_ids() == reference.doc_ids()
        survived += ok
        lost += not ok
    record("bit flip in a shard (.npy)", shard_runs, min(survived, shard_runs), 0)
    record("bit flip in manifest.json", manifest_runs, survived - min(survived, shard_runs),
           lost)
    assert survived == shard_runs + manifest_runs and lost == 0


def test_damaged_shard_record_is_recomputed(tmp_path, tiny, reference):
    root = tmp_path / "cache"
    cache = build_cache(tiny, cache_cfg(root), "medical", "train", progress=False)
    (cache.root / "manifest.json").unlink()  # as if killed before the manifest
    (cache.root / "shard_00001.json").write_text('{"index": 1, "rows"')
    again = build_cache(tiny, cache_cfg(root), "medical", "train", progress=False)
    ok = same_cache(again, reference)
    record("damaged shard record", 1, int(ok), int(not ok))
    assert ok


# ------------------------------------------------------------------------ full / read-only

FULL_DISK = '''
    import json, shutil, sys, torch
    from pathlib import Path
    from sae_med import cli
    from sae_med.cache.activations import build_cache
    from sae_med.artifacts import write_json_atomic
    from sae_med.cache.batches import TensorBatchSource
    from sae_med.config import config_from_dict
    from sae_med.train.sweep import train_saes
    full, ro = Path(sys.argv[1]), Path(sys.argv[2])
    cfg = config_from_dict(json.loads(sys.argv[3]))
    lines = {}
    def attempt(name, fn):
        try:
            fn()
            lines[name] = None
        except Exception as err:
            lines[name] = [type(err).__name__, cli._known(err), cli.one_line(err)]
    attempt("train", lambda: train_saes(cfg, TensorBatchSource(torch.randn(256, 16)),
                                        full / "run", progress=False))
    free = shutil.disk_usage(full).free  # leave the cache two pages
    (full / "filler").write_bytes(bytes(max(0, free - 8192)))
    attempt("cache", lambda: build_cache(tiny_model(), cache_cfg(full / "cache"), "medical",
                                         "train", progress=False))
    attempt("read_only", lambda: write_json_atomic(ro / "x.json", {"a": 1}))
    attempt("read_only_lock", lambda: build_cache(tiny_model(), cache_cfg(ro), "medical",
                                                  "train", progress=False))
    print(json.dumps(lines))
'''


def _unshare_ok() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _unshare_ok(), reason="needs `unshare -rm` (user + mount namespaces) "
                                              "to mount a small private tmpfs")
def test_full_and_read_only_file_systems_give_one_line(tmp_path):
    full, ro = tmp_path / "full", tmp_path / "ro"
    full.mkdir()
    ro.mkdir()
    cfg = tiny_train_cfg(checkpoint_every=2)
    cfg = config_from_dict({**cfg.to_dict(), "sae": {"width": 4096, "l0_targets": [4, 8]}})
    script = TINY_MODEL + textwrap.dedent(FULL_DISK)
    shell = (f"mount -t tmpfs -o size=256k tmpfs {full} && mount -t tmpfs -o ro tmpfs {ro} "
             f'&& exec "$0" -c "$1" {full} {ro} "$2"')
    out = subprocess.run(["unshare", "-rm", "sh", "-c", shell, sys.executable, script,
                          json.dumps(cfg.to_dict())], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("train", "cache"):
        kind, known, line = lines[name]
        assert kind == "StorageError" and known and line.startswith(f"no space left on {full}"), \
            lines[name]
    for name in ("read_only", "read_only_lock"):
        kind, known, line = lines[name]
        assert kind == "StorageError" and known and line.startswith(f"cannot write to {ro}"), \
            lines[name]
    record("full file system (256 KiB tmpfs)", 2, 2)
    record("read-only file system", 2, 2)
    assert not (tmp_path / "full" / "run").exists()  # it lived in the private mount only


# ------------------------------------------------------------------------ one line, not a traceback

@pytest.mark.parametrize(("content", "overrides", "needle"), [
    ("model: [unclosed\n", [], "is not valid YAML at line"),
    (None, [], "is a directory"),
    ("train_corpora: [medical, nope]\n", [], "unknown corpus 'nope'; valid corpora: medical"),
    ("", ["train.lr=inf"], "'train.lr': inf is not a finite number"),
    ("", ["model.device=gpu0"], "'model.device': 'gpu0' is not a device"),
])
def test_config_mistakes_exit_with_one_line(tmp_path, capsys, content, overrides, needle):
    path = tmp_path / "cfg.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    assert cli.main(["train", str(path), *overrides]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    record("config mistakes (YAML, directory, corpus, inf, device)", 1, 1)


def test_the_command_line_prints_one_line_and_debug_the_traceback(tmp_path):
    """For real, in a process of its own: exit status 2, one line on stderr, no traceback;
    ``--debug`` shows the traceback."""
    path = tmp_path / "cfg.yaml"
    path.write_text("train_corpora: [nope]\n")
    out = subprocess.run([sys.executable, "-m", "sae_med.cli", "train", str(path)], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "unknown corpus 'nope'" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(ConfigError, match="unknown corpus 'nope'"):
        cli.main(["train", str(path), "--debug"])


def test_known_failures_are_one_clear_line(tmp_path, tiny, reference):
    cases = 0
    with pytest.raises(ConfigError) as err:  # hook layer out of range
        cache_spec(tiny, cache_cfg(tmp_path, "model.hook_layer=5"), "medical", "train")
    assert_one_line(err.value, "'model.hook_layer': 5 is out of range")
    cases += 1
    from sae_med.lm.files import ModelUnavailableError
    from sae_med.lm.load import load_model
    with pytest.raises(ModelUnavailableError) as err:
        load_model("embedded:nope", "cpu", tmp_path)
    assert_one_line(err.value, "unknown embedded model 'embedded:nope'")
    cases += 1
    sae_dir = JumpReLUSAE(16, 32).save(tmp_path / "sae")  # cfg.json without its hash
    cfg_json = json.loads((sae_dir / "cfg.json").read_text())
    del cfg_json["weights_sha256"]
    write_json_atomic(sae_dir / "cfg.json", cfg_json)
    with pytest.raises(SAECheckpointError) as err:
        JumpReLUSAE.load(sae_dir)
    assert_one_line(err.value, "lacks weights_sha256", str(sae_dir / "cfg.json"))
    cases += 1
    garbage = tmp_path / "params.npz"
    garbage.write_bytes(b"\x93NUMPY garbage" * 20)
    with pytest.raises(SAECheckpointError) as err:
        from_gemma_scope_npz(garbage)
    assert_one_line(err.value, str(garbage))
    cases += 1
    import numpy as np
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SAECheckpointError) as err:
        from_gemma_scope_npz(tmp_path / "pickled.npy")
    assert_one_line(err.value, "pickled.npy")
    cases += 1
    run = tmp_path / "run"  # a truncated checkpoint
    train_saes(tiny_train_cfg(n_tokens=32 * 4), TensorBatchSource(torch.randn(256, 16)), run,
               progress=False)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(TrainingError) as err:
        read_checkpoint(run / "checkpoint.pt")
    assert_one_line(err.value, str(run / "checkpoint.pt"))
    (run / "checkpoint.json").unlink()  # no record (an older run): still one line
    with pytest.raises(TrainingError) as err:
        read_checkpoint(run / "checkpoint.pt")
    assert_one_line(err.value, "is unreadable")
    cases += 1
    root = tmp_path / "cache" / reference.key  # a manifest that is not JSON at all
    shutil.copytree(reference.root, root)
    (root / "manifest.json").write_text('{"spec": ')
    with pytest.raises(CorruptCacheError) as err:
        ActivationCache(root)
    assert_one_line(err.value, str(root / "manifest.json"))
    cases += 1
    from sae_med.report.book import NotebookError
    line = assert_one_line(NotebookError("03_fidelity.py", 7, "x = 1 / 0\ny = 2",
                                         "ZeroDivisionError", "division by zero",
                                         tmp_path / "03.ipynb"),
                           "03_fidelity.py", "cell 7", "ZeroDivisionError")
    assert "y = 2" not in line
    cases += 1
    from sae_med.runtime import check_device_available
    if torch.cuda.device_count() < 8:
        with pytest.raises(ConfigError) as err:
            check_device_available("cuda:7")
        assert_one_line(err.value, "'cuda:7' is not available")
        cases += 1
    record("known failures -> one line (hook, model, cfg.json, npz, truncated checkpoint, "
           "manifest, notebook, device)", cases, cases)


# ------------------------------------------------------------------------ the LLM server

class FakeLocal:
    """A LocalChat stand-in: ``prefill_s`` per prompt token (``stop()`` asked every 16),
    then one token per 10 ms, one generation at a time."""

    max_new_tokens = 8

    def __init__(self, context_length: int = 600, prefill_s: float = 0.0):
        self.context_length, self.prefill_s = context_length, prefill_s
        self.lock, self.tokens, self.counted = threading.Lock(), 0, 0

    def prompt_tokens(self, messages):
        self.counted += 1
        return 4 + sum(len(m["content"].split()) for m in messages)

    def _prefill(self, messages, stop):
        n = 4 + sum(len(m["content"].split()) for m in messages)
        for start in range(0, n, 16):
            if stop is not None and stop():
                raise GenerationStopped(f"stopped after {start} of {n} prompt tokens")
            time.sleep(16 * self.prefill_s)

    def generate(self, messages, max_new_tokens=None, logprobs=False, stop=None):
        budget, n = max_new_tokens or self.max_new_tokens, 0
        with self.lock:
            self._prefill(messages, stop)
            while n < budget and not (stop is not None and stop()):
                time.sleep(0.01)
                n += 1
                self.tokens += 1
        return Generation(" ".join(["ok"] * n), [0] * n, [], False)


class Reply(NamedTuple):
    status: int
    """0: the connection closed without an answer."""
    headers: str
    body: dict
    seconds: float
    """From sending to the end of the answer."""


def ask(port: int, raw: bytes, timeout: float = 10) -> Reply:
    """Send ``raw`` as is and read the answer."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        buf = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    return Reply(int(head.split()[1]) if buf else 0, head.decode(),
                 json.loads(body) if body else {}, time.monotonic() - t0)


def http(port: int, raw: bytes, timeout: float = 10) -> tuple[int, dict]:
    """Send ``raw`` as is; (status, JSON body) of the answer (0, {} if none came)."""
    reply = ask(port, raw, timeout)
    return reply.status, reply.body


def post(body: bytes | str, length: str | None = None, headers: str = "") -> bytes:
    body = body.encode() if isinstance(body, str) else body
    n = str(len(body)) if length is None else length
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Length: {n}\r\n{headers}\r\n").encode() + body


def chat(content: object = "hi", **extra) -> str:
    return json.dumps({"messages": [{"role": "user", "content": content}], **extra})


@contextlib.contextmanager
def running(backend: FakeLocal, **limits):
    """A server around ``backend`` on loopback with small limits (``limits`` override)."""
    small = {"max_tokens_cap": 10_000, "request_timeout_s": 2.0, "max_pending": 3,
             "socket_timeout_s": 2.0, "max_body_bytes": 4096}
    srv = serve(backend, limits=ServerLimits(**{**small, **limits}))
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def server():
    backend = FakeLocal()
    with running(backend) as srv:
        yield srv, backend


def test_server_answers_every_invalid_request_with_a_400(server):
    srv, _ = server
    port = srv.server_port
    cases = [
        (post(chat(5)), 400, "content must be a string"),
        (post('{"messages": []}'), 400, "non-empty list"),
        (post(chat(max_tokens=-3)), 400, "positive integer"),
        (post(chat(max_tokens=1e9)), 400, "positive integer"),
        (post(chat(max_tokens=10**9)), 400, "exceeds this server's cap"),
        (post(chat("word " * 700)), 400, "context of 600 tokens"),
        (post("{not json"), 400, "not valid JSON"),
        (post("[1, 2]"), 400, "JSON object"),
        (post(chat(), length="-1"), 400, "bad Content-Length"),
        (post(chat(), length="abc"), 400, "bad Content-Length"),
        (post(chat(), length=str(10**12)), 413, "exceeds the limit"),
        (post("x" * 5000), 413, "exceeds the limit"),
        (post(chat(logprobs=True, top_logprobs=99)), 400, "top_logprobs"),
        (b"POST /v1/nope HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 404, "no route"),
    ]
    t0 = time.time()
    for raw, status, needle in cases:
        got, body = http(port, raw)
        assert got == status and needle in body["error"]["message"], (raw[:80], got, body)
        assert body["error"]["type"] == "invalid_request_error"
    got, body = http(port, post(chat(max_tokens=3)))  # still serving, normally
    assert got == 200 and body["choices"][0]["message"]["content"] == "ok ok ok"
    assert time.time() - t0 < 10
    record("server: invalid requests (400/404/413, none reset)", len(cases), len(cases))


def test_server_stops_generating_for_a_client_that_left_and_at_its_deadline(server):
    srv, backend = server
    port = srv.server_port
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(post(chat(max_tokens=500)))
    time.sleep(0.3)
    s.close()  # the client leaves
    time.sleep(0.3)
    before = backend.tokens
    time.sleep(0.5)
    left_ok = backend.tokens == before and 0 < before < 100  # generation stopped
    t0 = time.time()
    got, body = http(port, post(chat(max_tokens=500)), timeout=20)  # deadline 2 s
    deadline_ok = got == 200 and time.time() - t0 < 5 and \
        body["choices"][0]["finish_reason"] == "length"
    record("server: client disconnects mid-generation", 1, int(left_ok))
    record("server: generation past the request time limit", 1, int(deadline_ok))
    assert left_ok and deadline_ok


def test_server_burst_gets_answers_not_resets(server):
    """Beyond 3 pending, the refusal (503) comes at once, not after a wait for the model."""
    srv, _ = server
    port = srv.server_port
    results: list[Reply] = []

    def one() -> None:
        try:
            results.append(ask(port, post(chat(max_tokens=20)), timeout=30))
        except OSError:
            results.append(Reply(-1, "", {}, 30.0))

    threads = [threading.Thread(target=one) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    answered = sum(r.status in (200, 503) for r in results)
    record("server: burst of 30 requests (3 pending max)", len(threads), answered)
    assert answered == len(threads), results
    assert {r.status for r in results} == {200, 503}, results
    assert max(r.seconds for r in results if r.status == 503) < 1.0, results


def test_server_bearer_token():
    srv = serve(FakeLocal(), limits=ServerLimits(api_key="s3cret"))
    try:
        port = srv.server_port
        assert http(port, post(chat()))[0] == 401
        assert http(port, post(chat(), headers="Authorization: Bearer nope\r\n"))[0] == 401
        assert http(port, post(chat(), headers="Authorization: Bearer s3cret\r\n"))[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(ValueError, match="needs an API key"):
        serve(FakeLocal(), host="0.0.0.0")
    record("server: missing/wrong bearer token", 2, 2)


def _in_background(fn, *args) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    return t, out


def _busy_or_served(r: Reply, bound_s: float) -> bool:
    """Answered, or refused with a ``Retry-After``, within ``bound_s``."""
    refused = r.status == 503 and "Retry-After:" in r.headers
    return (r.status == 200 or refused) and r.seconds < bound_s


def test_server_answers_a_normal_request_beside_a_long_prompt():
    """The long prompt reads 2 ms a token: 4,000 tokens outrun its 2 s budget (refused
    when it runs out, not after 8 s), 300 fit; the normal request sent behind it waits at
    most 0.5 s, then is refused with Retry-After, or is served once the long one is done."""
    runs = survived = 0
    for words, wait_s, want in ((4000, 0.5, 503), (300, 1.5, 200)):
        backend = FakeLocal(context_length=100_000, prefill_s=0.002)
        with running(backend, max_prompt_tokens=5000, max_body_bytes=1 << 16,
                     max_queue_wait_s=wait_s) as srv:
            t, out = _in_background(ask, srv.server_port, post(chat("word " * words)))
            while not backend.lock.locked() and t.is_alive():
                time.sleep(0.005)
            normal = ask(srv.server_port, post(chat(max_tokens=3)))
            t.join(10)
        [long] = out
        long_ok = long.status == want and long.seconds < 3.5 and (
            want == 200 or "while reading its prompt" in long.body["error"]["message"])
        runs += 1
        survived += long_ok and _busy_or_served(normal, wait_s + 1.0)
        assert long_ok, long
        assert _busy_or_served(normal, wait_s + 1.0), normal
    record("server: a long prompt beside a normal request", runs, survived)


def test_server_bounds_a_prompt_before_tokenising_it():
    backend = FakeLocal(context_length=100_000)
    with running(backend, max_body_bytes=1 << 20, max_prompt_chars=10_000,
                 max_prompt_tokens=500) as srv:
        chars = ask(srv.server_port, post(chat("x" * 200_000)))
        counted = backend.counted
        tokens = ask(srv.server_port, post(chat("word " * 1000)))  # 5,000 characters
    chars_ok = chars.status == 400 and "at most 10000" in chars.body["error"]["message"]
    tokens_ok = tokens.status == 400 and "limit of 500" in tokens.body["error"]["message"]
    ok = chars_ok and counted == 0 and tokens_ok and backend.tokens == 0
    record("server: prompts over the character / token caps", 2, 2 * ok)
    assert chars_ok and counted == 0, (chars, counted)  # refused before tokenising
    assert tokens_ok and backend.tokens == 0, tokens  # refused before the model ran


def _trickle(port: int, first: bytes, raw: bytes, every_s: float, give_up_s: float
             ) -> Reply:
    """Send ``first``, then ``raw`` one byte every ``every_s``; the answer once the server
    ends it."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(first)
        buf = b""
        for i in range(len(raw)):
            if select.select([s], [], [], 0)[0] or time.monotonic() - t0 > give_up_s:
                break  # the server answered or closed
            with contextlib.suppress(OSError):
                s.send(raw[i:i + 1])
            time.sleep(every_s)
        s.settimeout(give_up_s)
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                buf += chunk
    head = buf.partition(b"\r\n\r\n")[0]
    return Reply(int(head.split()[1]) if buf else 0, head.decode(), {},
                 time.monotonic() - t0)


def test_server_drops_slow_clients_at_the_read_deadline():
    """One byte every 0.2 s, in the headers and in the body: each is cut off at the 1 s
    read deadline (no answer, or 408) while a normal request is served meanwhile."""
    with running(FakeLocal(), read_timeout_s=1.0) as srv:
        port = srv.server_port
        whole = post(chat())
        slow = [_in_background(_trickle, port, first, raw, 0.2, 6.0) for first, raw in
                ((b"", whole), (whole[:-len(chat())], whole[-len(chat()):]))]
        normal = ask(port, post(chat(max_tokens=2)))
        for t, _ in slow:
            t.join(10)
        heads, body = (out[0] for _, out in slow)
    ok = [heads.status == 0 and heads.seconds < 2.5, body.status == 408 and
          body.seconds < 2.5, normal.status == 200 and normal.seconds < 1.0]
    record("server: slow clients (one byte every 0.2 s)", 2, sum(ok[:2]),
           int(not ok[2]))
    assert all(ok), (heads, body, normal)


def test_server_caps_open_connections():
    """Four idle connections fill the cap: a fifth is refused at once; once they are
    dropped at the read deadline, requests are served again."""
    with running(FakeLocal(), read_timeout_s=1.0, socket_timeout_s=5.0,
                 max_connections=4) as srv:
        port = srv.server_port
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        time.sleep(0.2)  # every one accepted
        refused = ask(port, post(chat()))
        time.sleep(2.0)  # twice the read deadline: room for a loaded CPU
        served = ask(port, post(chat(max_tokens=2)))
        for s in idle:
            s.close()
    refused_ok = refused.status == 503 and "too many connections" in json.dumps(
        refused.body) and refused.seconds < 0.5
    record("server: connections beyond the cap (4)", 1, int(refused_ok and
                                                         served.status == 200))
    assert refused_ok, refused
    assert served.status == 200, served


def test_server_backlog_holds_a_burst_before_the_first_accept():
    """64 clients connect before the server accepts anyone: the listen backlog holds every
    handshake (a short one drops SYNs, and the clients' retries wait 1 s or more)."""
    srv = make_server(FakeLocal(), limits=ServerLimits(max_pending=64, max_connections=128))
    socks = [socket.socket() for _ in range(64)]
    try:
        for s in socks:
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", srv.server_port))
        _, done, _ = select.select([], socks, [], 0.5)
        connected = sum(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for s in done)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        for s in socks:
            s.setblocking(True)
            s.settimeout(10)
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answered = sum(s.recv(12).startswith(b"HTTP/1.1 200") for s in socks)
    finally:
        for s in socks:
            s.close()
        srv.shutdown()
        srv.server_close()
    record("server: 64 connections before the first accept (listen backlog)", 64, connected)
    assert connected == answered == 64, (connected, answered)


HEAVY_SERVER = '''
    import json, socket, sys, threading, torch
    from pathlib import Path
    from sae_med.interpret.chat import Generation
    from sae_med.interpret.chat_server import serve

    def rss_mb():
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    class Heavy:
        """Frees large tensors around small kept ones, as a model reading a prompt does."""
        max_new_tokens, kept = 1, []

        def generate(self, messages, max_new_tokens=None, logprobs=False, stop=None):
            for _ in range(6):
                big = torch.ones(2_000_000)
                self.kept.append(torch.ones(100))
                del big
            for _ in range(20):
                batch = [torch.ones(1_000_000) for _ in range(4)]
                del batch
            return Generation("ok", [0], [], True)

    srv = serve(Heavy())
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    raw = (b"POST /v1/chat/completions HTTP/1.1\\r\\nConnection: close\\r\\n"
           b"Content-Length: %d\\r\\n\\r\\n%s" % (len(body), body))

    answered = []

    def one():
        with socket.create_connection(("127.0.0.1", srv.server_port)) as s:
            s.sendall(raw)
            answered.append(s.recv(12) == b"HTTP/1.1 200")
            while s.recv(65536):
                pass

    one()
    before = rss_mb()
    for _ in range(2):  # each connection has a thread of its own, and so a malloc arena
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(json.dumps([before, rss_mb(), sum(answered)]))
'''


def test_server_returns_the_heap_after_large_requests():
    """16 requests each freeing ~100 MB of tensors: the server's RSS stays near where it
    was (without handing freed pages back, each thread's arena keeps them: ~+0.5 GB)."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(HEAVY_SERVER)], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    before, after, answered = json.loads(out.stdout.strip().splitlines()[-1])
    ok = after - before < 100 and answered == 17
    record("server: 16 requests freeing ~100 MB each (heap handed back)", 16, 16 * ok)
    assert ok, (before, after)


def test_artefacts_respect_the_umask(tmp_path):
    from sae_med.artifacts import atomic_path, chmod_like_new

    old = os.umask(0o002)  # a group-shared cache
    try:
        write_json_atomic(tmp_path / "a.json", {"a": 1})
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"x")
        folder = Path(__import__("tempfile").mkdtemp(dir=tmp_path))  # 0700 as made
        chmod_like_new(folder)
        modes = [(tmp_path / "a.json").stat().st_mode & 0o777,
                 (tmp_path / "b.bin").stat().st_mode & 0o777, folder.stat().st_mode & 0o777]
    finally:
        os.umask(old)
    want = [0o664, 0o664, 0o775]
    record("artefacts under a group-shared umask (002)", 3,
           sum(m == w for m, w in zip(modes, want, strict=True)))
    assert modes == want
