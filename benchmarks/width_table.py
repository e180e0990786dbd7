"""Print the width axis (issue 32 item 5): each training corpus's typical-token FVE and ΔCE
on medical text against SAE width at target L0 40, the medical SAE's gaps against the broad
and the mixed_10 SAE per width with the crossover, where the gap reaches 0 (with its 95%
interval) and the slope test, and the capacity prediction per architecture
(:mod:`sae_med.report.width`; the rule is in book/method.md).
Run from the folder holding ``runs/`` after ``sae-med experiment configs/width.yaml``:

    .venv/bin/python benchmarks/width_table.py configs/width.yaml [a.b=value ...]
"""

from __future__ import annotations

import sys

from sae_med.config import load_config
from sae_med.report.width import (
    capacity_verdict,
    crossover_sentence,
    family_table,
    read_widths,
    width_families,
    width_gap_table,
    width_series,
)


def main(config: str = "configs/width.yaml", *overrides: str) -> None:
    runs = read_widths(load_config(config, list(overrides)))
    if missing := [r.run for r in runs if r.comparisons is None]:
        print(f"runs without results yet: {', '.join(missing)}\n")
    table = family_table(width_families(runs))
    if not table.empty:
        print(table.to_markdown())
        print()
    series = width_series(runs)
    print(width_gap_table(series).to_markdown(index=False))
    print()
    print(crossover_sentence(series))
    print()
    for arch, verdict in capacity_verdict(series).items():
        print(f"{arch}: the medical − mixed_10 advantage shrinks with width: {verdict}")


if __name__ == "__main__":
    main(*sys.argv[1:])
