"""The paper's run rehearsed offline, end to end through the CLI a user runs: writes the
stand-ins of tests/rehearsal.py (a tiny random Gemma-2 with 26 blocks, local files in the
hub datasets' schemas, a Gemma Scope params.npz) under WORK, then ``sae-med run`` (cache
→ streamed training → evaluate → every notebook → the book) and ``sae-med evaluate --sae``
on configs/paper_gemma2_2b.yaml with only those swaps and CPU-sized token counts.

    .venv/bin/python scripts/rehearse_paper.py [WORK]   (default: runs/rehearse_paper)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    from rehearsal import (
        GEMMA2_2B_BLOCKS,
        PAPER_CONFIG,
        rehearsal_overrides,
        write_gemma_scope_npz,
        write_hub_files,
    )
    from tiny_lms import save_tiny_lm

    from sae_med import cli
    from sae_med.corpora.hub import LOCAL_FILES_ENV

    work = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "runs" / "rehearse_paper")
    work = work.resolve()
    model_dir = work / "gemma-2-tiny"
    if not (model_dir / "config.json").exists():
        save_tiny_lm(model_dir, "gemma2", layers=GEMMA2_2B_BLOCKS)
    os.environ[LOCAL_FILES_ENV] = str(write_hub_files(work / "hub"))
    overrides = rehearsal_overrides(model_dir, work)
    npz = write_gemma_scope_npz(work / "gemma_scope" / "params.npz", 32, 16384)
    os.chdir(REPO)  # the notebooks resolve configs/ from here
    t0 = time.time()
    rc = cli.main(["run", PAPER_CONFIG, *overrides])
    print(f"rehearse-paper: sae-med run took {time.time() - t0:.0f} s")
    if rc:
        return rc
    return cli.main(["evaluate", PAPER_CONFIG, *overrides, "--sae", str(npz),
                     "--sae-id", "gemma_scope/l0_71"])


if __name__ == "__main__":
    sys.exit(main())
