"""The paper's run (configs/paper_gemma2_2b.yaml) with only what needs the internet
swapped for local stand-ins, and its cost scaled to a CPU: a tiny random Gemma-2 with the
real model's 26 blocks (so the hook stays at block 20), a few dozen records of each hub
dataset in its own schema (read by the real ``datasets`` loaders through
``$SAE_MED_HUB_FILES``), and a Gemma Scope ``params.npz`` baseline of the run's shape."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from sae_med.corpora.hub import CLINICAL_QA_PARTS, WEB_DATASET

PAPER_CONFIG = "configs/paper_gemma2_2b.yaml"
GEMMA2_2B_BLOCKS = 26
COST_OVERRIDES = [
    # what a CPU can afford; everything else is the paper config's
    "train.n_tokens=8192", "train.norm_batches=2", "train.stream_buffer_tokens=4096",
    "eval.n_tokens=1024", "eval.ce_docs=8", "eval.bootstrap=20",
]
WORDS = ("patient fever cough rash dose renal hepatic cardiac nerve artery insulin "
         "glucose infection antibiotic chronic acute pain biopsy tumour lesion therapy "
         "the a of and with after before during which most likely city river market "
         "music garden history weather travel recipe school football bridge").split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _records(dataset: str, config: str | None, rng: random.Random) -> list[dict]:
    """A few dozen records in the hub dataset's schema (field names and types)."""
    def q(i: int) -> str:
        return f"{sentence(rng, 12)} Case {i}: which is the best next step?"

    if dataset == "GBaker/MedQA-USMLE-4-options":
        return [{"question": q(i), "answer": "Biopsy", "answer_idx": "C",
                 "options": {"A": "Observe", "B": "Insulin", "C": "Biopsy", "D": "Surgery"},
                 "meta_info": "step1", "metamap_phrases": ["fever", "rash"]}
                for i in range(40)]
    if dataset == "openlifescienceai/medmcqa":
        return [{"id": f"mm{i:04d}", "question": q(i), "opa": "Liver", "opb": "Kidney",
                 "opc": "Heart", "opd": "Lung", "cop": i % 4, "choice_type": "single",
                 "exp": sentence(rng, 20) if i % 3 else None,
                 "subject_name": "Medicine", "topic_name": "Renal"} for i in range(40)]
    if dataset == "qiaojin/PubMedQA":
        return [{"pubid": 10_000 + i, "question": q(i),
                 "context": {"contexts": [sentence(rng, 30), sentence(rng, 30)],
                             "labels": ["BACKGROUND", "RESULTS"], "meshes": ["Humans"],
                             "reasoning_required_pred": ["yes"],
                             "reasoning_free_pred": ["yes"]},
                 "long_answer": sentence(rng, 20),
                 "final_decision": ("yes", "no", "maybe")[i % 3]} for i in range(24)]
    if dataset == "cais/mmlu":
        return [{"question": q(i), "subject": config,
                 "choices": ["Aspirin", "Heparin", "Warfarin", "Insulin"], "answer": i % 4}
                for i in range(16)]
    if dataset == WEB_DATASET[0]:
        return [{"text": " ".join(sentence(rng, 15) for _ in range(12)),
                 "id": f"<urn:uuid:{i:08d}>", "dump": "CC-MAIN-2024-10",
                 "url": f"https://example.org/{i}", "date": "2024-02-21T00:00:00Z",
                 "file_path": "s3://commoncrawl/x.warc.gz", "language": "en",
                 "language_score": 0.95, "token_count": 180} for i in range(48)]
    raise KeyError(dataset)


def write_hub_files(root: Path) -> Path:
    """Every dataset of ``clinical_qa`` and ``web`` as JSON Lines under ``root``, laid out
    as :func:`sae_med.corpora.hub.local_data_file` reads them; returns ``root``."""
    rng = random.Random(0)
    parts = [p[1:4] for p in CLINICAL_QA_PARTS] + [WEB_DATASET]
    for dataset, config, split in parts:
        f = root / dataset / (config or "default") / f"{split}.jsonl"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("".join(json.dumps(r) + "\n" for r in _records(dataset, config, rng)))
    return root


def write_gemma_scope_npz(path: Path, d_model: int, width: int, seed: int = 0) -> Path:
    """A random JumpReLU SAE in Gemma Scope's ``params.npz`` layout and names."""
    rng = np.random.default_rng(seed)
    w_dec = rng.standard_normal((width, d_model)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, W_enc=w_dec.T.copy(), W_dec=w_dec, b_enc=np.zeros(width, np.float32),
             b_dec=np.zeros(d_model, np.float32),
             threshold=np.full(width, 0.5, np.float32))
    return path


def rehearsal_overrides(model_dir: Path, work: Path) -> list[str]:
    """The paper config's overrides: the local model, local folders, CPU-sized costs."""
    return [f"model.name={model_dir}", f"cache_dir={work / 'cache'}",
            f"output_dir={work / 'runs'}", *COST_OVERRIDES]

