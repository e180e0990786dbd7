"""Coverage of the nominal 95% gap interval on simulated clustered documents with a known
gap (issue 31): group vs single-document resampling, and how many seeds it takes when
seeds vary. Prints a markdown table for RESULTS.md.

    .venv/bin/python benchmarks/interval_coverage.py [--runs 1000] [--n-boot 2000]
        [--only "seed sd 0.2"]

Every row draws its simulations from seed 0 on its own, so a row run alone (``--only``, a
substring of the row's label) prints what it prints in the whole table.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from sae_med.measure.coverage import CoverageSetup, coverage

SEED_SDS = (0.05, 0.2)
"""Seed effects as large as the documents' standard error of the gap at these sizes
(√(0.3/130 + 0.7/1950) ≈ 0.052), and four times it (seeds dominate)."""


SMALL_SET = 33
"""Documents in the broad side's spliced-CE set (``eval.ce_tokens`` 4,096 of ~124-token
documents), each its own group: the ΔCE of broad text, and so the difference-in-differences,
rests on them. At this size the documents' standard error of the gap is √(1/33) ≈ 0.17."""


def setups(n_boot: int) -> list[tuple[str, CoverageSetup]]:
    base = CoverageSetup(n_boot=n_boot)
    small = replace(base, n_groups=SMALL_SET, group_size=1)
    return [("document groups", base),
            ("single documents", replace(base, grouped=False)),
            *((f"document groups, seed sd {sd:g}", replace(base, n_seeds=n, seed_sd=sd))
              for sd in SEED_SDS for n in (3, 5, 10)),
            (f"{SMALL_SET} documents", small),
            (f"{SMALL_SET} documents, seed sd 0.17", replace(small, seed_sd=0.17))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--only", default="", help="run the rows whose label contains this")
    a = ap.parse_args()
    rows = [(label, s) for label, s in setups(a.n_boot) if a.only in label]
    if not rows:
        labels = ", ".join(label for label, _ in setups(a.n_boot))
        raise SystemExit(f"--only {a.only!r} matches no row; the rows: {labels}")
    torch.set_num_threads(1)  # small products: extra threads only spin
    print("| resampled | seeds | groups × docs | ρ | coverage (± se) | mean width |")
    print("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    for label, s in tqdm(rows, desc="setups"):
        c = coverage(s, a.runs, seed=0)
        print(f"| {label} | {s.n_seeds} | {s.n_groups} × {s.group_size} | {s.rho:g} | "
              f"{c.rate:.1%} (± {c.standard_error:.1%}) | {c.mean_width:.3f} |")
    print(f"\n{a.runs} simulations per row, {a.n_boot} replicates each, "
          f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
