"""A notebook's parameters as papermill passes them, checked, and the config they name."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from sae_med.config import Config, ConfigError, load_config
from sae_med.corpora.registry import use_config


class NotebookParameterError(ConfigError):
    """A notebook parameter that the notebook does not declare, or of the wrong type."""


COMMON = ("config", "overrides", "run_name")
"""The parameters every notebook declares; :func:`notebook_parameters` reads their
papermill forms, so the type check by default value skips them."""
INJECTED_MARK = "# Parameters\n"
"""How papermill's injected-parameters cell (Python) begins."""


class NotebookParameters(NamedTuple):
    """The three parameters every notebook takes, checked."""

    config: str
    overrides: list[str]
    run_name: str


def notebook_parameters(config: Any, overrides: Any = (), run_name: Any = ""
                        ) -> NotebookParameters:
    """Check (and normalise) the common parameters as papermill may pass them: ``config``
    a path, ``overrides`` a list of ``section.field=value`` strings or one string holding
    a YAML list or space-separated overrides, ``run_name`` a string (a number is taken as
    its text)."""
    if not isinstance(config, str | Path) or not str(config):
        raise NotebookParameterError(f"notebook parameter 'config' must be the path of a "
                                     f"YAML config, got {type(config).__name__} {config!r}")
    if isinstance(overrides, str):
        parsed = yaml.safe_load(overrides) if overrides.strip() else []
        overrides = parsed if isinstance(parsed, list) else overrides.split()
    if not isinstance(overrides, list | tuple) or not all(
            isinstance(o, str) and "=" in o for o in overrides):
        raise NotebookParameterError(
            "notebook parameter 'overrides' must be a list of 'section.field=value' strings "
            f"(papermill: -p overrides '[\"train.lr=2e-3\"]'), got {overrides!r}")
    if isinstance(run_name, int | float) and not isinstance(run_name, bool):
        run_name = str(run_name)
    if not isinstance(run_name, str):
        raise NotebookParameterError(f"notebook parameter 'run_name' must be a string, got "
                                     f"{type(run_name).__name__} {run_name!r}")
    return NotebookParameters(str(config), list(overrides), run_name)


def notebook_config(config: str, overrides: Iterable[str] = (), run_name: str = "") -> Config:
    """The notebooks' config: ``config`` + ``overrides``, renamed to ``run_name`` if given
    (parameters as papermill may pass them: :func:`sae_med.report.parameters.notebook_parameters`).
    A bad one raises :class:`~sae_med.report.parameters.NotebookParameterError` naming the
    parameter, shown in a kernel as that one line (:func:`one_line_config_errors`)."""

    one_line_config_errors()
    check_injected_parameters(kernel_history())
    config, overrides, run_name = notebook_parameters(config, overrides, run_name)
    extra = [f"name={run_name}"] if run_name else []
    try:
        return checked_config(config, [*overrides, *extra])
    except ConfigError as err:
        raise NotebookParameterError(
            f"notebook parameter {bad_parameter(config, overrides)!r}: {err}") from None


def checked_config(config: str, overrides: Sequence[str]) -> Config:
    """The config loaded and its corpora handed to the registry (names checked)."""
    cfg = load_config(config, overrides)
    use_config(cfg)
    return cfg


def bad_parameter(config: str, overrides: Sequence[str]) -> str:
    """Which parameter makes the config fail to load: ``config`` alone, else
    ``overrides``, else ``run_name`` (the name it sets)."""
    for name, tries in (("config", []), ("overrides", overrides)):
        try:
            checked_config(config, tries)
        except ConfigError:
            return name
    return "run_name"


def one_line_config_errors() -> None:
    """In a Jupyter kernel, show a :class:`~sae_med.config.ConfigError` as its one line
    (``ConfigError: config field 'train.lr': ...``) instead of IPython's traceback through
    the config loader, which papermill prints whole (60-100 lines); the message names the
    parameter or field, so the frames add nothing. Elsewhere, nothing."""
    try:
        # deferred: IPython exists only in a notebook kernel
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return

    def show(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None
             ) -> list[str]:
        stb = [f"{etype.__name__}: {value}"]
        # IPython leaves showing to a custom handler; _showtraceback is the step its own
        # showtraceback ends with (the kernel's error message, ename and evalue included)
        shell._showtraceback(etype, value, stb)
        return stb

    shell.set_custom_exc((ConfigError,), show)


def literal_assignments(source: str, literals_only: bool = True) -> dict[str, Any]:
    """Name -> value of every ``name = literal`` statement of a cell's source; a value that
    is not a literal raises, or with ``literals_only=False`` is left out (papermill writes
    ``float('nan')`` for a NaN)."""
    out: dict[str, Any] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign):
            continue
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            if literals_only:
                raise
            continue
        out |= {t.id: value for t in node.targets if isinstance(t, ast.Name)}
    return out


def papermill_hint(name: str, default: Any) -> str:
    """How to pass ``name`` to plain papermill as the type of ``default``."""
    if isinstance(default, str):
        return f"papermill: -r {name} TEXT passes text as it is"
    if isinstance(default, list | tuple | dict):
        return f"papermill: -y '{name}: {list(default)!r}' passes a list"
    return f"papermill: -p {name} {default!r}"


def check_values(declared: Mapping[str, Any], given: Mapping[str, Any], notebook: str = "",
                 hint: bool = False) -> dict[str, Any]:
    """``given`` checked against the ``declared`` parameters (name -> default): every name
    must be declared and every value of its default's type (ints pass as floats); a wrong
    one raises :class:`NotebookParameterError` naming the parameter (with ``hint``, how to
    pass it through plain papermill)."""
    where = f"notebook {notebook}" if notebook else "notebook"
    out: dict[str, Any] = {}
    for name, value in given.items():
        if name not in declared:
            raise NotebookParameterError(
                f"{where} has no parameter {name!r}; its parameters: {', '.join(declared)}")
        default = declared[name]
        if isinstance(default, float) and isinstance(value, int) and not isinstance(
                value, bool):
            value = float(value)
        if type(value) is not type(default) and not (
                isinstance(default, list | tuple) and isinstance(value, list | tuple)):
            raise NotebookParameterError(
                f"{where} parameter {name!r} must be {type(default).__name__} "
                f"(default {default!r}), got {type(value).__name__} {value!r}"
                + (f" ({papermill_hint(name, default)})" if hint else ""))
        out[name] = value
    return out


def check_injected_parameters(history: Sequence[str]) -> dict[str, Any]:
    """The values papermill injected, checked against the notebook's parameters cell.

    ``history`` is the kernel's executed cells in order (:func:`kernel_history`). Papermill
    runs its injected cell (``# Parameters`` then one assignment per value) right after the
    cell tagged ``parameters``, so the cell before it holds the declared defaults. Values
    other than :data:`COMMON` are checked by :func:`check_values` before any of them is
    used, so a bad one is one line naming it, not a traceback from deep in the notebook.
    No injected cell (an interactive kernel, or no parameters passed): nothing to check."""
    marks = [i for i, cell in enumerate(history) if cell.startswith(INJECTED_MARK)]
    if not marks or marks[-1] == 0:
        return {}
    declared = literal_assignments(history[marks[-1] - 1])
    given = {k: v for k, v in literal_assignments(history[marks[-1]], False).items()
             if k not in COMMON and not k.startswith("PAPERMILL_")}
    return check_values(declared, given, hint=True)


def kernel_history() -> list[str]:
    """The cells this IPython kernel has executed, in order; empty outside a kernel."""
    try:
        # deferred: IPython exists only in a notebook kernel
        from IPython import get_ipython
    except ImportError:
        return []
    shell = get_ipython()
    return list(shell.history_manager.input_hist_raw) if shell is not None else []
