"""Print the architecture matrix (issue 32 item 4): per SAE architecture x model, the
medical SAE's gaps on medical text against the broad and the mixed_10 SAE in typical-token
FVE, ΔCE and R²(e) at every target L0, and a verdict per architecture
(:mod:`sae_med.report.matrix`; the rule is in book/method.md). Run from the folder holding
``runs/`` after ``sae-med experiment configs/matrix.yaml``:

    .venv/bin/python benchmarks/matrix_table.py configs/matrix.yaml [--present] [a.b=value ...]

``--present`` leaves out of the gap table the cells whose run has no results yet (what
RESULTS.md quotes while the matrix is being made); the verdict table keeps every row.
"""

from __future__ import annotations

import sys

from sae_med.config import load_config
from sae_med.report.matrix import (
    NO_RESULTS,
    gap_table,
    matrix_cells,
    read_matrix,
    verdict_table,
)


def main(config: str = "configs/matrix.yaml", *args: str) -> None:
    present = "--present" in args
    runs = read_matrix(load_config(config, [a for a in args if a != "--present"]))
    if missing := [r.run for r in runs if r.comparisons is None]:
        print(f"runs without results yet: {', '.join(missing)}\n")
    cells = matrix_cells(runs)
    shown = [c for c in cells if c.verdict != NO_RESULTS] if present else cells
    print(gap_table(shown).to_markdown(index=False))
    print()
    print(verdict_table(cells).to_markdown(index=False))


if __name__ == "__main__":
    main(*sys.argv[1:])
