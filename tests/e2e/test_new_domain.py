"""book/new_domain.md as written: a small law corpus the test writes, declared by the
page's own config, through its commands (corpora, leakage, experiment, notebook 03)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from doc_commands import checkout, commands, doc_blocks, run_command

from sae_med.measure.results import load_results
from sae_med.report.book import PROJECT_ROOT

PAGE = PROJECT_ROOT / "book" / "new_domain.md"


def write_law_corpus(folder: Path, n_cases: int = 300, seed: int = 0) -> int:
    """Two JSON-lines files of appellate cases (a headnote and a holding per case, grouped
    by ``case``, tagged with the area of law); returns the number of records."""
    rng = random.Random(seed)
    parties = ["the tenant", "the landlord", "the employer", "the contractor", "the insurer",
               "the purchaser", "the vendor", "the lessee", "the trustee", "the guarantor"]
    acts = ["breached the covenant of quiet enjoyment", "failed to give adequate notice",
            "repudiated the contract", "acted in bad faith", "waived the limitation clause",
            "misrepresented a material fact", "exceeded the scope of the licence",
            "failed to mitigate its loss", "relied on an unenforceable penalty clause"]
    remedies = ["damages were awarded", "the claim was dismissed",
                "specific performance was ordered", "the injunction was discharged",
                "rescission was granted", "costs followed the event"]
    areas = ["contract", "tort", "property", "employment", "insurance", "trusts"]
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for part in range(2):
        with open(folder / f"cases-{part}.jsonl", "w") as f:
            for c in range(part, n_cases, 2):
                a, b = rng.sample(parties, 2)
                area = rng.choice(areas)
                texts = {
                    "head": f"Headnote. On appeal, the court considered whether {a} "
                            f"{rng.choice(acts)} and whether {b} {rng.choice(acts)}. The court "
                            f"held that {rng.choice(remedies)} and that {rng.choice(remedies)}.",
                    "held": f"Holding. Applying the {area} principles settled in earlier "
                            f"authority, {rng.choice(remedies)}; {b} {rng.choice(acts)}, so "
                            f"{rng.choice(remedies)}."}
                for kind, text in texts.items():
                    f.write(json.dumps({"id": f"case-{c}-{kind}", "case": f"case-{c}",
                                        "tags": [area], "text": text}) + "\n")
                    n += 1
    return n


def test_new_domain_page_runs_as_written(tmp_path):
    where = checkout(PROJECT_ROOT, tmp_path / "checkout")
    n_records = write_law_corpus(where / "data" / "law")
    blocks = doc_blocks(PAGE)
    for b in blocks:
        if b.action == "file":
            (where / b.detail).write_text(b.body + "\n")
    outputs = [run_command(cmd, where, PROJECT_ROOT)
               for b in blocks if b.action == "run" for cmd in commands(b)]
    listing, leakage, experiment, notebook = outputs
    row = next(ln.split() for ln in listing.splitlines() if ln.startswith("law "))
    assert row[1:3] == ["local", "law"] and 0.8 * n_records < int(row[3].replace(",", ""))
    leak = next(ln.split() for ln in leakage.splitlines() if ln.startswith("law "))
    assert leak[3:5] == ["0.00%", "0.00%"]
    results = load_results(where / "runs" / "law_smoke" / "results.json")
    assert "results=" in experiment
    assert set(results.train_corpus) == set(results.eval_corpus) == {"law", "broad"}
    executed = where / "runs" / "law_smoke" / "notebooks" / "03_fidelity.ipynb"
    assert f"notebook={executed.relative_to(where)}" in notebook
    text = executed.read_text()
    assert "law vs broad SAEs" in text and '"ename"' not in text
