"""Print the random-weights control (issue 32 item 6): each side's home advantage at the
same target L0 on the trained model and on the same architecture with redrawn weights, and
their ratio with its (conservative) interval and verdict
(:mod:`sae_med.report.random_weights`; the loss-based rows are judged only where the random
model has loss to lose, :data:`sae_med.measure.controls.LOSS_RULE`, which needs the model's
vocabulary size: read from its config, or given as a third argument). Run from the folder
holding ``runs/``:

    .venv/bin/python benchmarks/random_weights_table.py runs/random_weights/results.json \
        runs/domains/results.json [VOCAB_SIZE]
"""

from __future__ import annotations

import sys

from sae_med.config import config_from_dict
from sae_med.measure.results import comparison_tables, load_comparisons, read_results
from sae_med.report.random_weights import control_rows, control_table, model_vocab_size


def main(random_path: str, trained_path: str, vocab: str | None = None) -> None:
    doc = read_results(random_path)
    vocab_size = int(vocab) if vocab else model_vocab_size(config_from_dict(doc["config"]))
    rows = control_rows(comparison_tables(doc), load_comparisons(trained_path), "medical",
                        "broad", vocab_size=vocab_size)
    print(control_table(rows).to_markdown(index=False))


if __name__ == "__main__":
    main(*sys.argv[1:4])
