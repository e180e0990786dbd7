"""A module of this repository as it was at an older revision, for same-process A/B
benchmarks (``bench_step.py``, ``bench_score.py``)."""

from __future__ import annotations

import importlib.util
import subprocess
import tempfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def module_at(rev: str, path: str) -> ModuleType:
    """``path`` (e.g. ``sae_med/lm/model.py``) as it was at ``rev``, imported under the name
    ``<stem>_baseline`` so that it lives beside this checkout's module."""
    src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"],
                         check=True, capture_output=True, text=True).stdout
    name = f"{Path(path).stem}_baseline"
    file = Path(tempfile.mkdtemp()) / f"{name}.py"
    file.write_text(src)
    spec = importlib.util.spec_from_file_location(name, file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
