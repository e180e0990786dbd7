"""The ``sae-med`` command line: one subcommand per pipeline stage, each taking a YAML
config plus ``section.field=value`` overrides.

    sae-med prepare [CONFIG]            fetch embedded corpora, cache the embedded model
    sae-med corpora [CONFIG]            list corpora (and the config's own) with counts
        [--leakage]                     ... or eval documents duplicated in train, per corpus
    sae-med cache CONFIG [k=v ...]      cache activations for the configured corpora
    sae-med train CONFIG [k=v ...]      train the SAE sweep on each training corpus
    sae-med evaluate CONFIG [k=v ...]   score every trained SAE on every eval corpus
        [--sae SPEC [--sae-id ID]] ...  ... or the given SAEs (Gemma Scope npz, sae-lens)
    sae-med experiment CONFIG [k=v ...] cache -> train -> evaluate (last line results=PATH)
    sae-med autointerp CONFIG [k=v ...] LLM explanations + detection scores (autointerp=DIR)
    sae-med homefield CONFIG [k=v ...]  what the broad SAE lacks: mean shift, novel documents,
                                        token frequency (homefield=PATH)
    sae-med book CONFIG [k=v ...]       execute the notebooks, build the book (book=PATH)
    sae-med notebook NN CONFIG [k=v ...] execute one notebook (notebook=PATH.ipynb)
        [--out PATH] [-p NAME VALUE]    ... to PATH; -p sets its other parameters
    sae-med run CONFIG [k=v ...]        the main job: experiment, then the book
    sae-med config CONFIG [k=v ...]     print the resolved config (base: and overrides applied)
    sae-med prune CONFIG [k=v ...]      remove the checkpoints of finished sweeps (the SAEs,
                                        metrics and results stay; last line run=PATH)
    sae-med export RUN_OR_SAE OUT       sae-lens folders, Gemma Scope params.npz, SAEBench
                                        or Neuronpedia files + a card
        [--format F] [--push-to-hub REPO [--dry-run]]
    sae-med publish BUILD --remote URL  the built book's HTML onto the remote's gh-pages
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from sae_med import LOG_FORMAT, __version__
from sae_med.artifacts import storage_error
from sae_med.config import Config, ConfigError, load_config
from sae_med.layout import EXTERNAL_RESULTS_NAME, HOMEFIELD_NAME, sae_id

log = logging.getLogger("sae_med")

KNOWN_ERRORS = {
    "sae_med.config": ["ConfigError"],
    "sae_med.artifacts": ["StorageError", "ArtifactLockedError"],
    "sae_med.cache.activations": ["CorruptCacheError"],
    "sae_med.train.records": ["TrainingError"],
    "sae_med.lm.files": ["ModelUnavailableError"],
    "sae_med.sae.base": ["SAECheckpointError"],
    "sae_med.corpora.registry": ["UnknownCorpusError"],
    "sae_med.corpora.embedded": ["CorpusFetchError"],
    "sae_med.corpora.local": ["CorpusSourceError"],
    "sae_med.report.book": ["NotebookError", "BookBuildError"],
    "sae_med.report.parameters": ["NotebookParameterError"],
}
"""Errors whose message says what is wrong and what to do: the command line prints that
message as one line instead of a traceback (``--debug`` shows it)."""


def _known(err: BaseException) -> bool:
    """Whether ``err`` is one of :data:`KNOWN_ERRORS` (a module never imported cannot have
    raised one, so nothing is imported here) or a plain missing-file/storage error."""
    for module, names in KNOWN_ERRORS.items():
        mod = sys.modules.get(module)
        if mod is not None and isinstance(err, tuple(getattr(mod, n) for n in names)):
            return True
    return isinstance(err, FileNotFoundError | IsADirectoryError | NotADirectoryError) or (
        isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                                                   errno.EACCES))


def one_line(err: BaseException) -> str:
    """The error as a single line (a failing notebook: notebook, cell and the error)."""

    if hasattr(err, "notebook") and hasattr(err, "ename"):
        first = str(err.evalue).strip().splitlines()[:1]
        return (f"notebook {err.notebook} failed in cell {err.cell}: {err.ename}: "
                f"{first[0] if first else ''} (partially executed notebook: {err.output})")
    if isinstance(err, OSError) and err.filename is not None:
        err = storage_error(err, err.filename)
    text = " ".join(ln.strip() for ln in str(err).splitlines() if ln.strip())
    return text or type(err).__name__


def _load(args: argparse.Namespace) -> Config:
    """The config, its corpora handed to the registry (every corpus name checked)."""
    # deferred: the registry's corpus readers load only for the subcommands that read text
    from sae_med.corpora.registry import use_config

    cfg = load_config(args.config, args.overrides)
    use_config(cfg)
    return cfg


def cmd_corpora(args: argparse.Namespace) -> int:
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.corpora.registry import corpus_info, corpus_stats, list_corpora

    cfg = _load(args)
    names = args.corpus or list_corpora()
    for name in names:
        corpus_info(name)  # an unknown name: one clear error
    if args.leakage:
        return _print_leakage(args.corpus)
    tokenizer = None
    if not args.no_tokens:
        # deferred: only this subcommand needs it (torch and the model stack load slowly)
        from sae_med.lm.files import EMBEDDED, embedded_model_dir, load_tokenizer

        if cfg.model.name == EMBEDDED:
            tokenizer = load_tokenizer(embedded_model_dir(cfg.cache_path)[0])
        else:
            # deferred: only this subcommand needs it (torch and the model stack load slowly)
            from sae_med.lm.load import load_model

            tokenizer = load_model(cfg.model.name, "cpu", cfg.cache_path).tokenizer
    ctx_len = cfg.cache.ctx_len
    print(f"{'corpus':<14} {'kind':<9} {'domain':<8} {'documents':>10} {'tokens':>12} "
          f"{'cached':>12}  description")
    for name in names:
        info = corpus_info(name)
        docs = toks = cached = "-"
        if info.kind in ("embedded", "local") and tokenizer is not None:
            stats = corpus_stats(name, tokenizer, ctx_len=ctx_len)
            docs, toks, cached = (f"{n:,}" for n in stats)
        print(f"{name:<14} {info.kind:<9} {info.domain:<8} {docs:>10} {toks:>12} {cached:>12}  "
              f"{info.description}")
    if tokenizer is not None:
        print(f"cached: the tokens an activation cache keeps (each document cut to "
              f"cache.ctx_len={ctx_len}); size cache.n_tokens and eval.n_tokens from these")
    return 0


def _print_leakage(names: list[str]) -> int:
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.corpora.leakage import corpus_leakage, offline_leakage

    print(f"{'corpus':<10} {'train docs':>10} {'eval docs':>9} {'exact in train':>14} "
          f"{'near in train':>13} {'removed: exact':>14} {'near-dup eval':>13}")
    for r in [corpus_leakage(n) for n in names] if names else offline_leakage():
        exact, near = (f"{n:,}" for n in r.removed) if r.removed else ("-", "-")
        print(f"{r.corpus:<10} {r.train_documents:>10,} {r.eval_documents:>9,} "
              f"{r.exact:>14.2%} {r.near:>13.2%} {exact:>14} {near:>13}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Fetch/parse the embedded corpora and cache the embedded model (idempotent)."""
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.corpora.embedded import DEBIAN_PACKAGES, debian_dir
    from sae_med.corpora.registry import prepare_embedded
    from sae_med.lm.files import EMBEDDED, embedded_model_dir

    cfg = _load(args)
    if args.check:
        missing = [p for p in DEBIAN_PACKAGES.values()
                   if not (debian_dir() / p / ".complete").exists()]
        model_dir = cfg.cache_path / "models"
        if missing or not any(model_dir.glob("gemma-3-270m-*/sae_med_model.json")):
            print(f"not prepared: missing Debian packages {missing} or the model copy")
            return 1
        return 0
    prepare_embedded()
    if cfg.model.name == EMBEDDED:
        embedded_model_dir(cfg.cache_path)
    print("prepared: embedded corpora and model are cached")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.experiment import stage_cache

    cfg = _load(args)
    t0 = time.time()
    for (corpus, split), cache in stage_cache(cfg).items():
        counted = "" if cache.counted_tokens is None else (
            f" (its documents: {cache.counted_tokens:,} tokens counted, "
            f"{cache.cut_tokens:,} cut by cache.ctx_len={cache.spec['ctx_len']})")
        print(f"cache {corpus}/{split}: {cache.n_tokens:,} tokens{counted} x d_model "
              f"{cache.d_model} at {cache.hook} -> {cache.root}")
    print(f"cache: done in {time.time() - t0:.0f} s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.experiment import stage_train

    cfg = _load(args)
    for corpus, results in stage_train(cfg).items():
        for r in results:
            f = r.final
            print(f"sae {sae_id(corpus, r.replicate, r.l0_target)}: "
                  f"L0 {f.get('l0', float('nan')):.1f} "
                  f"FVE {f.get('fve', float('nan')):.3f} dead {f.get('dead_frac', 0):.3f} "
                  f"-> {r.path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """The run's own SAEs (stage_evaluate), or the SAEs given with --sae (any format)."""
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.experiment import stage_evaluate

    cfg = _load(args)
    if not args.sae:
        print(f"results={stage_evaluate(cfg)}")
        return 0
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.experiment import evaluate_paths
    from sae_med.sae.base import SAECheckpointError

    if args.sae_id and len(args.sae_id) != len(args.sae):
        raise ConfigError(f"--sae-id: give one id per --sae ({len(args.sae)}), "
                          f"got {len(args.sae_id)}")
    out = args.out or cfg.run_path / EXTERNAL_RESULTS_NAME
    try:
        path = evaluate_paths(cfg, args.sae, out_path=out, sae_ids=args.sae_id or None)
    except (FileNotFoundError, SAECheckpointError, ValueError) as err:  # e.g. wrong d_model
        print(f"sae-med: {err}", file=sys.stderr)
        return 2
    print(f"results={path}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.experiment import run_experiment

    print(f"results={run_experiment(_load(args))}")
    return 0


def cmd_learning_curve(args: argparse.Namespace) -> int:
    """The config's learning curve (its ``learning_curve`` section): the long runs with
    their snapshots, each budget scored; one line per budget, then the verdicts."""
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.experiment import stage_learning_curve
    from sae_med.report.learning_curve import claim_trends, curve_summary, curve_tables
    from sae_med.report.notebook import domain_pair

    cfg = _load(args)
    curve = cfg.learning_curve_config()
    if curve is None:
        print(f"sae-med: config {cfg.name!r} has no learning_curve section (see "
              "configs/default.yaml's)", file=sys.stderr)
        return 2
    points = stage_learning_curve(curve)
    for p in points:
        print(f"tokens {p.tokens:,}: {p.results}")
    trends = claim_trends(curve_tables(points), *domain_pair(curve))
    print(curve_summary(curve, points, trends))
    return 0


def cmd_autointerp(args: argparse.Namespace) -> int:
    """Explain and score each SAE at the middle target L0 with the configured LLM
    (detection AUROC of p(yes), accuracy and F1 per latent; see
    :mod:`sae_med.interpret.autointerp`)."""
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.experiment import stage_autointerp
    from sae_med.interpret.autointerp import write_run_scores

    cfg = _load(args)
    print(f"autointerp={write_run_scores(cfg, stage_autointerp(cfg))}")
    return 0


def cmd_homefield(args: argparse.Namespace) -> int:
    """The home-field diagnostics of the run's SAEs (:mod:`sae_med.measure.homefield`)."""
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.experiment import homefield_report

    cfg = _load(args)
    print(homefield_report(cfg).summary())
    print(f"homefield={cfg.run_path / HOMEFIELD_NAME}")
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.report.book import build_book

    print(f"book={build_book(args.config, list(args.overrides))}")
    return 0


def cmd_notebook(args: argparse.Namespace) -> int:
    """Execute one notebook through papermill with the config (and -p parameters)."""
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.report.rerun import parse_parameter, run_notebook

    extra = {name: parse_parameter(value) for name, value in args.param}
    out = run_notebook(args.notebook, args.config, args.overrides, args.out, args.run_name,
                       extra)
    print(f"notebook={out}")
    return 0


def _add_notebook_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("notebook", help="execute one notebook through papermill; last line "
                       "notebook=PATH")
    p.add_argument("notebook", metavar="NN", help="the notebook's number (03) or name")
    _add_config_args(p)
    p.add_argument("--out", type=Path, default=None,
                   help="executed .ipynb (default RUN/notebooks/NN_name.ipynb)")
    p.add_argument("--run-name", default="", help="replaces the config's name")
    p.add_argument("-p", "--param", nargs=2, action="append", default=[],
                   metavar=("NAME", "VALUE"), help="another parameter of the notebook "
                   "(VALUE read as YAML: 3, 0.5, [a, b]); repeatable")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback of an error instead of one line")
    p.set_defaults(func=cmd_notebook)


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: the experiment, then the book built from it."""
    cmd_experiment(args)
    return cmd_book(args)


def cmd_config(args: argparse.Namespace) -> int:
    """Print the resolved config (YAML, or JSON with --json): what a stage would run with."""
    cfg = _load(args)
    if args.json:
        print(cfg.to_json())
    else:

        print(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False), end="")
    # what the forwards will run in on this machine (model.dtype auto differs by machine);
    # torch is imported here, not at the top, so that --help stays fast
    from sae_med.runtime import pick_device, resolve_dtype

    choice = resolve_dtype(cfg.model.dtype, pick_device(cfg.model.device), cfg.cache_path)
    line = f"model.dtype {cfg.model.dtype} -> {choice.dtype} here: {choice.reason}"
    # with --json, stdout stays pure JSON
    print(line if args.json else f"# {line}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """Remove the checkpoints of the finished sweeps of the run, its replications and its
    learning curve (:mod:`sae_med.train.prune`)."""
    # deferred: only this subcommand needs it (torch loads slowly)
    from sae_med.train.prune import prune_checkpoints

    cfg = _load(args)
    print(prune_checkpoints(c.run_path for c in cfg.run_configs()).summary())
    print(f"run={cfg.run_path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Export a run's SAEs (or one SAE) with a model card; optionally push them to the hub."""
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.experiment import export_inputs
    from sae_med.report.export import export_saes, push_to_hub, stage_for_hub
    from sae_med.report.exported import ExportError

    try:
        inputs = export_inputs(args.source, args.format)
        if not args.push_to_hub:
            for e in export_saes(args.source, args.format, args.out, inputs):
                print(f"export {e.provenance.sae_id} -> {e.path}")
            print(f"export={args.out}")
            return 0
        files = stage_for_hub(args.source, args.format, args.out, args.push_to_hub, inputs)
        if args.dry_run:
            print(f"dry run: would upload {len(files)} files from {args.out} to "
                  f"{args.push_to_hub}:")
            print("\n".join(f"  {f}" for f in files))
            return 0
        print(f"hub={push_to_hub(args.out, args.push_to_hub, private=args.private)}")
    except ExportError as err:
        print(f"sae-med: {err}", file=sys.stderr)
        return 2
    return 0


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write SAEs as sae-lens folders, Gemma Scope "
                       "params.npz, SAEBench or Neuronpedia files, with a model card; "
                       "optionally push them to the hub")
    p.add_argument("source", metavar="RUN_OR_SAE",
                   help="a run folder (runs/NAME: every SAE goes to OUT/CORPUS/l0_TARGET) or "
                        "one SAE folder (goes to OUT)")
    p.add_argument("out", metavar="OUT", help="output folder (README.md model card inside)")
    p.add_argument("--format", default="sae_lens",
                   help="sae_lens (cfg.json + sae_weights.safetensors; the default; every "
                        "architecture: ReLU as standard, TopK as topk, JumpReLU, BatchTopK "
                        "and Matryoshka as jumprelu with their thresholds), gemma_scope "
                        "(params.npz + metadata.json; JumpReLU SAEs only), saebench "
                        "(sae-lens files, SAEBench's config and core results on the run's "
                        "eval tokens) or neuronpedia (sae-lens files and Neuronpedia upload "
                        "folders)")
    p.add_argument("--push-to-hub", metavar="REPO", default=None,
                   help="then upload OUT to this Hugging Face model repo (needs HF_TOKEN)")
    p.add_argument("--dry-run", action="store_true",
                   help="with --push-to-hub: build OUT and its card, list what would be "
                        "uploaded, upload nothing")
    p.add_argument("--private", action="store_true", help="create the hub repo as private")
    p.set_defaults(func=cmd_export)


def cmd_publish(args: argparse.Namespace) -> int:
    """Commit the built book's HTML to a branch of a git remote (GitHub Pages)."""
    # deferred: only this subcommand needs it (torch and the model stack load slowly)
    from sae_med.report.publish import PublishError, publish_html

    try:
        done = publish_html(args.build, args.remote, args.branch, args.message)
    except PublishError as err:
        print(f"sae-med: {err}", file=sys.stderr)
        return 2
    if not done.changed:
        print(f"publish: {args.remote} {done.branch} already holds this book")
    print(f"published={done.branch}@{done.commit}")
    return 0


def _add_publish_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="put the built book's HTML on a git remote's gh-pages "
                       "branch (GitHub Pages)")
    p.add_argument("build", metavar="BUILD",
                   help="the built book: its html folder, or the folder `sae-med book` "
                        "built into (e.g. _build)")
    p.add_argument("--remote", required=True,
                   help="git remote URL or path (e.g. git@github.com:you/sae-med.git)")
    p.add_argument("--branch", default="gh-pages", help="branch to publish to (gh-pages)")
    p.add_argument("--message", default="", help="commit message")
    p.set_defaults(func=cmd_publish)


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", default=None,
                   help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="section.field=value overrides")


def _add_command_options(name: str, p: argparse.ArgumentParser) -> None:
    """The options of subcommand ``name`` beyond its config and overrides."""
    if name == "corpora":
        p.add_argument("--no-tokens", action="store_true",
                       help="skip token counts (no tokenizer needed)")
        p.add_argument("--leakage", action="store_true",
                       help="instead, per corpus readable offline (embedded, and the "
                            "config's own): the share of eval documents "
                            "with an exact / near-duplicate in train, and what "
                            "de-duplication removed")
        p.add_argument("--corpus", action="append", default=[], metavar="NAME",
                       help="only this corpus (repeatable)")
    if name == "evaluate":
        p.add_argument("--sae", action="append", default=[], metavar="SPEC",
                       help="score this SAE instead of the run's own (repeatable): a "
                            "sae-med folder, a Gemma Scope params.npz, a sae-lens "
                            "folder, or sae_lens:RELEASE/SAE_ID")
        p.add_argument("--sae-id", action="append", default=[], metavar="ID",
                       help="row id for each --sae, in order (default: from the path)")
        p.add_argument("--out", default=None,
                       help="results JSON for --sae (default: RUN/results_external.json)")
    if name == "prepare":
        p.add_argument("--check", action="store_true",
                       help="only report whether everything is prepared (exit 1 if not)")
    if name == "config":
        p.add_argument("--json", action="store_true", help="JSON instead of YAML")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sae-med", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
        "prepare": (cmd_prepare, "fetch embedded corpora and cache the embedded model"),
        "corpora": (cmd_corpora, "list corpora with document and token counts"),
        "cache": (cmd_cache, "cache activations for the configured corpora"),
        "train": (cmd_train, "train the SAE sweep on each training corpus"),
        "evaluate": (cmd_evaluate, "score every trained SAE on every eval corpus"),
        "experiment": (cmd_experiment, "cache -> train -> evaluate; last line results=PATH"),
        "learning-curve": (cmd_learning_curve, "train each side long with snapshots and "
                           "score every budget (the config's learning_curve)"),
        "autointerp": (cmd_autointerp, "explain and score latents with an LLM; last line "
                       "autointerp=PATH"),
        "homefield": (cmd_homefield, "what the broad SAE lacks on domain text: mean shift, "
                      "novel documents, token frequency; last line homefield=PATH"),
        "book": (cmd_book, "execute the notebooks and build the book; last line book=PATH"),
        "run": (cmd_run, "the main job: experiment, then the book"),
        "config": (cmd_config, "print the resolved config (base: and overrides applied)"),
        "prune": (cmd_prune, "remove the checkpoints of finished sweeps (the SAEs, metrics "
                  "and results stay); last line run=PATH"),
    }
    for name, (fn, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error instead of one line")
        _add_config_args(p, required=name not in ("corpora", "prepare"))
        _add_command_options(name, p)
        p.set_defaults(func=fn)
    _add_notebook_parser(sub)
    _add_export_parser(sub)
    _add_publish_parser(sub)
    for p in sub.choices.values():  # -v after the subcommand too; SUPPRESS keeps one before it
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="debug logging")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; overrides may also follow options (``train CONFIG -v a=1 b=2``),
    which argparse alone would refuse."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all(
            "=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: one process per rank
        # deferred: only this subcommand needs it (torch and the model stack load slowly)
        from sae_med.runtime import init_from_env

        init_from_env()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format=LOG_FORMAT)
    for noisy in ("transformers", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except Exception as err:
        if args.debug or not _known(err):
            raise
        print(f"sae-med: {one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return 2 if isinstance(err, ConfigError) else 1


if __name__ == "__main__":
    sys.exit(main())
