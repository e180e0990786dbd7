"""The ``sae-med`` command line: one subcommand per pipeline stage, each taking a YAML
config plus ``section.field=value`` overrides.

    sae-med prepare [CONFIG]            fetch embedded corpora, cache the embedded model
    sae-med corpora [CONFIG]            list corpora with document and token counts
    sae-med cache CONFIG [k=v ...]      cache activations for the configured corpora
    sae-med train CONFIG [k=v ...]      train the SAE sweep on each training corpus
    sae-med evaluate CONFIG [k=v ...]   score every trained SAE on every eval corpus
        [--sae SPEC [--sae-id ID]] ...  ... or the given SAEs (Gemma Scope npz, sae-lens)
    sae-med experiment CONFIG [k=v ...] cache -> train -> evaluate (last line results=PATH)
    sae-med autointerp CONFIG [k=v ...] LLM explanations + detection scores (autointerp=DIR)
    sae-med book CONFIG [k=v ...]       execute the notebooks, build the book (book=PATH)
    sae-med run CONFIG [k=v ...]        the main job: experiment, then the book
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable

from sae_med.config import Config, ConfigError, load_config

log = logging.getLogger("sae_med")


def _load(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def cmd_corpora(args: argparse.Namespace) -> int:
    from sae_med.data import corpus_info, corpus_stats, list_corpora

    tokenizer = None
    if not args.no_tokens:
        from sae_med.models import EMBEDDED, embedded_model_dir

        cfg = _load(args)
        if cfg.model.name == EMBEDDED:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir(cfg.cache_path)[0]))
        else:
            from sae_med.models import load_model

            tokenizer = load_model(cfg.model.name, "cpu", cfg.cache_path).tokenizer
    print(f"{'corpus':<14} {'kind':<9} {'domain':<8} {'documents':>10} {'tokens':>12}  "
          "description")
    for name in list_corpora():
        info = corpus_info(name)
        docs = toks = "-"
        if info.kind == "embedded":
            stats = corpus_stats(name, tokenizer) if tokenizer is not None else None
            if stats:
                docs, toks = f"{stats['documents']:,}", f"{stats['tokens']:,}"
        print(f"{name:<14} {info.kind:<9} {info.domain:<8} {docs:>10} {toks:>12}  "
              f"{info.description}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """Fetch/parse the embedded corpora and cache the embedded model (idempotent)."""
    from sae_med.corpora_embedded import DEBIAN_PACKAGES, debian_dir
    from sae_med.data import prepare_embedded
    from sae_med.models import EMBEDDED, embedded_model_dir

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
    from sae_med.experiment import stage_cache

    cfg = _load(args)
    t0 = time.time()
    for (corpus, split), cache in stage_cache(cfg).items():
        print(f"cache {corpus}/{split}: {cache.n_tokens:,} tokens x d_model {cache.d_model} "
              f"at {cache.hook} -> {cache.root}")
    print(f"cache: done in {time.time() - t0:.0f} s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from sae_med.experiment import stage_train
    from sae_med.train import sae_id

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
    from sae_med.experiment import stage_evaluate

    cfg = _load(args)
    if not args.sae:
        print(f"results={stage_evaluate(cfg)}")
        return 0
    from sae_med.evaluate import evaluate_paths
    from sae_med.sae import SAECheckpointError

    if args.sae_id and len(args.sae_id) != len(args.sae):
        raise ConfigError(f"--sae-id: give one id per --sae ({len(args.sae)}), "
                          f"got {len(args.sae_id)}")
    out = args.out or cfg.run_path / "results_external.json"
    try:
        path = evaluate_paths(cfg, args.sae, out_path=out, sae_ids=args.sae_id or None)
    except (FileNotFoundError, SAECheckpointError) as err:
        print(f"sae-med: {err}", file=sys.stderr)
        return 2
    print(f"results={path}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from sae_med.experiment import run_experiment

    print(f"results={run_experiment(_load(args))}")
    return 0


def cmd_autointerp(args: argparse.Namespace) -> int:
    """Explain and score each SAE at the middle target L0 with the configured LLM
    (detection AUROC of p(yes), accuracy and F1 per latent; see :mod:`sae_med.autointerp`)."""
    from sae_med.autointerp import write_run_scores

    print(f"autointerp={write_run_scores(_load(args))}")
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    from sae_med.book import build_book

    print(f"book={build_book(args.config, list(args.overrides))}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: the experiment, then the book built from it (when present)."""
    cmd_experiment(args)
    try:
        import sae_med.book  # noqa: F401
    except ImportError:
        print("book: nothing to do yet (the book lands with its issue)")
        return 0
    return cmd_book(args)


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs=None if required else "?", default=None,
                   help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", help="section.field=value overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sae-med", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
        "prepare": (cmd_prepare, "fetch embedded corpora and cache the embedded model"),
        "corpora": (cmd_corpora, "list corpora with document and token counts"),
        "cache": (cmd_cache, "cache activations for the configured corpora"),
        "train": (cmd_train, "train the SAE sweep on each training corpus"),
        "evaluate": (cmd_evaluate, "score every trained SAE on every eval corpus"),
        "experiment": (cmd_experiment, "cache -> train -> evaluate; last line results=PATH"),
        "autointerp": (cmd_autointerp, "explain and score latents with an LLM; last line "
                       "autointerp=PATH"),
        "book": (cmd_book, "execute the notebooks and build the book; last line book=PATH"),
        "run": (cmd_run, "the main job: experiment, then the book"),
    }
    for name, (fn, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text)
        _add_config_args(p, required=name not in ("corpora", "prepare"))
        if name == "corpora":
            p.add_argument("--no-tokens", action="store_true",
                           help="skip token counts (no tokenizer needed)")
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
        p.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun: one process per rank
        from sae_med.distributed import init_from_env

        init_from_env()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("transformers", "urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"sae-med: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
