"""How large each gap's seed effect is against its documents' standard error, on a real
run (issue 31: how many seeds the coverage table says a gap needs). For every gap at a
target L0 on the claims' metrics: the two families' seed sds, their number of seeds and
:func:`sae_med.measure.coverage.seed_ratio`
(:func:`~sae_med.measure.coverage.seed_shares`). Read it against the coverage table in
RESULTS.md (ratio about 1: three seeds cover 92.5–94.4%; about 4: three seeds 84%, five
90%, ten 93%). Run from the folder holding ``runs/``:

    .venv/bin/python benchmarks/seed_share.py runs/default/results.json
"""

from __future__ import annotations

import sys

from sae_med.measure.coverage import seed_shares
from sae_med.measure.results import read_results


def main(path: str) -> None:
    print("| eval text | gap | target L0 | metric | seeds | seed sd per SAE "
          "| seed sd / document se |")
    print("|---|---|---|---|---|---|---|")
    for s in seed_shares(read_results(path)):
        print(f"| {s.eval_corpus} | {s.pair} | {s.l0_target:g} | {s.metric} | {s.n_seeds} | "
              f"{s.seed_sd:.4f} | {s.ratio:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
