"""Compare denoiser/classifier pipelines on the same images with the same seeds, from one YAML config.

A config names one dataset and the certification settings, and lists pipelines::

    dataset: mnist5k:test
    n0: 100
    n: 1000
    alpha: 0.001
    batch: 500
    skip: 10          # every 10th image ...
    images: 50        # ... 50 of them
    seed: 0
    radii: [0, 0.25, 0.5, 0.75, 1.0]
    pipelines:
      - {name: cnn-alone-s025, classifier: small-cnn.mnist5k, denoiser: none, sigma: 0.25}
      - {name: ddpm-10step-s025, classifier: small-cnn.mnist5k, denoiser: ddpm.mnist5k, sigma: 0.25,
         denoiser_kwargs: {num_steps: 10}}

The output folder gets one TSV + JSON per pipeline, ``table.md``/``table.csv``/``table.tex`` (certified
accuracy at the radius grid, clean accuracy, ACR, abstain rate, seconds per image), ``curves.png``,
``samples.png`` (a few images clean, noisy and denoised per pipeline) and a ``README.md`` saying what was
run. A pipeline whose TSV is complete is skipped on a re-run. Without ``radii`` the grid follows what the
pipelines can certify (`certify.tables.default_radii`).
``mode: sequential`` decides each positive radius of ``radii`` with the anytime-valid test (``n`` is
then the most samples an image may use; optional ``step``, ``growth``, ``boundary``, ``mixture``,
``futility``: a level, default 0.3, or ``off``; ``selection``); ``mode: anytime`` too (``step``, ``growth``).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


from .analysis import ATTACK_LEGEND, analyze, load_result, markdown_table, refuse_report_links
from .config import read_config
from .pipeline import certify_dataset, distributed_context
from .preflight import require_ready
from .redact import redact
from .results import write_atomic
from .samples import SAMPLE_IMAGES, SAMPLE_SEED, image_captions, sources, spread, write_samples
from .settings import ATTACK_OPTIONS, RUN_DEFAULTS, RunOptions, RunSettings

# The config's keys follow the run settings (certify.settings): what differs per pipeline, the rest shared.
_PER_PIPELINE = {"classifier", "denoiser", "sigma", "classifier_kwargs", "denoiser_kwargs"}
_NOT_HERE = {"options", "max", "label_from_api", *ATTACK_OPTIONS}  # max is `images` here, the attack's under `attack:`
_TOP_KEYS = ({f.name for f in fields(RunSettings)} | {f.name for f in fields(RunOptions)}) - _PER_PIPELINE - _NOT_HERE \
    | {"name", "description", "pipelines", "device", "images", "attack"}
# `attack:` (off unless given): SmoothAdv on some or all pipelines after their certification, into NAME.attack.tsv
_ATTACK_KEYS = {"eps", "steps", "step_size", "m", "restarts", "n", "pipelines"}
_FAST_KEYS = ("autocast", "channels_last", "compile")  # top level: every pipeline's default
_PIPE_KEYS = {"name", *_PER_PIPELINE, *_FAST_KEYS}


@dataclass
class Pipeline:
    name: str
    classifier: str
    sigma: float
    denoiser: str = "none"
    classifier_kwargs: dict[str, Any] = field(default_factory=dict)
    denoiser_kwargs: dict[str, Any] = field(default_factory=dict)
    autocast: str | None = None
    channels_last: bool | None = None
    compile: bool | None = None


def load_compare_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a compare config; every problem names the key and what was expected.

    >>> import tempfile
    >>> p = tempfile.mktemp(suffix=".yaml")
    >>> _ = open(p, "w").write("dataset: digits\\nn: 10\\npipelines:\\n  - {name: a, classifier: small-cnn, sigma: 0.5}\\n")
    >>> load_compare_config(p)["pipelines"][0].denoiser
    'none'
    """
    path = Path(path)
    config = read_config(path, known=_TOP_KEYS, what="compare config")
    for key in ("dataset", "pipelines"):
        if key not in config:
            raise ValueError(f"{path}: missing required key {key!r}")
    pipes = config["pipelines"]
    if not isinstance(pipes, list) or not pipes:
        raise ValueError(f"{path}: 'pipelines' must be a non-empty list")
    parsed, names = [], set()
    for i, p in enumerate(pipes):
        bad = sorted(set(p) - _PIPE_KEYS) if isinstance(p, dict) else ["<not a mapping>"]
        if bad or not {"name", "classifier", "sigma"} <= set(p):
            raise ValueError(f"{path}: pipeline {i} needs name, classifier, sigma (and optionally "
                             f"{sorted(_PIPE_KEYS - {'name', 'classifier', 'sigma'})}); got {p!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", str(p["name"])) or p["name"] in names:
            raise ValueError(f"{path}: pipeline name {p['name']!r} must be unique and use letters, digits, '_.+-'")
        names.add(p["name"])
        parsed.append(Pipeline(**p))
    config["pipelines"] = parsed
    radii = config.get("radii")
    if radii is not None and not (isinstance(radii, list) and radii and all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and r >= 0 for r in radii)):
        raise ValueError(f"{path}: radii must be a list of numbers >= 0, e.g. [0, 0.25, 0.5], got {radii!r}")
    for key in ("n0", "n", "skip", "images", "seed"):
        if key in config:
            config[key] = _whole(config[key], f"{path}: {key}")
    if config.get("attack") is not None:
        config["attack"] = _attack_config(config["attack"], names, path)
    return config


def _attack_config(attack: Any, names: set[str], path: Path) -> dict[str, Any]:
    """The `attack:` mapping, checked: eps is required, pipelines (default all) must name pipelines."""
    if not isinstance(attack, dict) or "eps" not in attack or set(attack) - _ATTACK_KEYS:
        raise ValueError(f"{path}: attack must be a mapping with eps (a list of radii) and optionally "
                         f"{sorted(_ATTACK_KEYS - {'eps'})}; got {attack!r}")
    unknown = sorted(set(attack.get("pipelines") or []) - names)
    if unknown or not isinstance(attack.get("pipelines", []), list):
        raise ValueError(f"{path}: attack pipelines {attack.get('pipelines')!r} must be a list of pipeline names "
                         f"({sorted(names)}); unknown: {unknown}")
    if "n" in attack:
        attack["n"] = _whole(attack["n"], f"{path}: attack n")
    return attack


def _whole(value: Any, what: str) -> int:
    """An int from a config value: 100 or 100.0, never 20.9 silently cut to 20 (nor true, nor '7')."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def _batch(value: Any) -> int | str:
    return value if value == "auto" else _whole(value, "batch")


def settings_for(config: dict[str, Any], pipe: Pipeline, n: int | None = None, limit: int | None = None,
                 attack: bool = False) -> RunSettings:
    """The run settings of one pipeline: shared dataset, counts and seed; its own models and sigma.
    ``attack``: the settings of its attack run instead (`attack:` in the config)."""
    D = RUN_DEFAULTS  # noqa: N806
    skip = int(config.get("skip", D["skip"]))
    images = limit if limit is not None else config.get("images")
    options: dict[str, Any] = {}
    for key in ("classifier_kwargs", "denoiser_kwargs"):
        if getattr(pipe, key):
            options[key] = getattr(pipe, key)
    for key in _FAST_KEYS:
        value = getattr(pipe, key) if getattr(pipe, key) is not None else config.get(key)
        if value:
            options[key] = value
    if config.get("dataset_kwargs"):
        options["dataset_kwargs"] = dict(config["dataset_kwargs"])
    mode, count = config.get("mode", D["mode"]), int(n or config.get("n", D["n"]))
    if attack:
        a = config["attack"]
        mode, count = "attack", int(n or a.get("n", count))
        options["eps"] = a["eps"]
        options.update({f"attack_{k}": a[k] for k in ("steps", "step_size", "m", "restarts") if k in a})
    elif mode == "sequential":
        options["radii"] = [float(r) for r in config.get("radii") or [] if float(r) > 0]
    for key in ("step", "growth", "boundary", "mixture", "bound", "futility", "selection"):
        if config.get(key) is not None and not attack:
            options[key] = config[key]
    return RunSettings(
        classifier=pipe.classifier, denoiser=pipe.denoiser, dataset=config["dataset"], sigma=pipe.sigma,
        mode=mode, n0=int(config.get("n0", D["n0"])), n=count,
        alpha=float(config.get("alpha", D["alpha"])), batch=_batch(config.get("batch", D["batch"])), skip=skip,
        max=skip * int(images) if images is not None else None, seed=int(config.get("seed", D["seed"])), options=options,
    ).validate()


def compare_runs(config: dict[str, Any], n: int | None = None,
                 limit: int | None = None) -> list[tuple[str, RunSettings, Pipeline]]:
    """``(name, settings, pipeline)`` of each run of a config, in order: every pipeline's certification,
    then the attacks (``NAME.attack``)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    pipes = config["pipelines"]
    attacked = [p for p in pipes if config.get("attack") is not None
                and p.name in (config["attack"].get("pipelines") or [q.name for q in pipes])]
    return [(p.name, settings_for(config, p, n=n, limit=limit), p) for p in pipes] + \
        [(f"{p.name}.attack", settings_for(config, p, n=n, limit=limit, attack=True), p) for p in attacked]


def compare(config_path: str | os.PathLike, out_dir: str | os.PathLike, n: int | None = None,
            limit: int | None = None, quiet: bool = False, device: str | None = None) -> dict[str, Any]:
    """Certify every pipeline of a config into ``out_dir`` and write the comparison report."""
    config = load_compare_config(config_path)
    runs = compare_runs(config, n=n, limit=limit)  # every setting checked before the first run
    require_ready([(config["pipelines"].index(pipe), settings) for _, settings, pipe in runs])
    all_settings = [settings for _, settings, _ in runs[:len(config["pipelines"])]]
    out_dir = Path(out_dir)
    rank = distributed_context(device)[0]
    if rank == 0:
        refuse_report_links(out_dir)  # before hours of certification, not after
    files, started = [], time.time()
    for name, settings, pipe in runs:
        if not quiet and rank == 0:
            print(f"[compare] {name}: {pipe.classifier} + {pipe.denoiser} at sigma={pipe.sigma}", flush=True)
        files.append(certify_dataset(settings, out_dir / f"{name}.tsv", device=device or config.get("device"),
                                     quiet=quiet))
    if rank != 0:
        return {}
    radii = config.get("radii")
    summary = analyze(files, out_dir, radii=radii, names=[name for name, _, _ in runs])
    first = load_result(files[0])
    shown = spread(first.idx)
    summary["samples"] = write_samples(
        out_dir / "samples.png", [(p.name, s, shown, image_captions(shown, sources(first, shown)))
                                  for p, s in zip(config["pipelines"], all_settings)], device=device or config.get("device"))
    _write_readme(out_dir, config, all_settings, summary, time.time() - started, config_path)
    return summary


def _write_readme(out_dir: Path, config: dict, all_settings: list[RunSettings], summary: dict, seconds: float,
                  config_path) -> None:
    s = all_settings[0]
    images = len(Path(out_dir / f"{config['pipelines'][0].name}.tsv").read_text().splitlines()) - 1
    lines = [
        f"# Comparison: {config.get('name', Path(config_path).stem)}", "",
        config.get("description", "").strip(), "",
        f"- config: `{config_path}`",
        f"- dataset: `{s.dataset}`, {images} images (indices {s.skip} apart, from 0), seed {s.seed}",
        f"- {'every class tested (no n0)' if s.options.selection == 'all' else f'n0 = {s.n0}'}, n = {s.n}, "
        f"alpha = {s.alpha}, batch = {s.batch}; every pipeline saw the same images "
        f"and the same noise streams",
        f"- wall time of this invocation: {seconds:.0f} s (finished pipelines are skipped on a re-run)", "",
        "## Pipelines", "",
        "| name | classifier | denoiser | sigma | options |", "|---|---|---|---|---|",
    ]
    for p in config["pipelines"]:
        opts = json.dumps(redact({k: v for k, v in (("classifier", p.classifier_kwargs),
                                                    ("denoiser", p.denoiser_kwargs)) if v}))
        lines.append(f"| {p.name} | `{p.classifier}` | `{p.denoiser}` | {p.sigma} | {opts if opts != '{}' else ''} |")
    lines += ["", "## Certified accuracy (%) at L2 radius", "",
              markdown_table(summary["header"], summary["rows"]),
              "r=0 is the smoothed classifier's clean accuracy; ACR = mean(radius x correct); "
              "the envelope takes the best pipeline per radius." + (f" {summary['note']}" if summary.get("note") else ""), "",
              "Files: one `NAME.tsv` + `NAME.json` per pipeline, `table.md`, `table.csv`, `table.tex` (LaTeX), "
              "`high_probability.md`, `curves.png`" + (", `samples.png`" if summary.get("samples") else "") + ".", "",
              "![curves](curves.png)", ""]
    if summary.get("samples"):
        lines += [f"What the denoisers do: up to {SAMPLE_IMAGES} of the images (spread over the run), clean, with "
                  f"noise at the pipeline's sigma (seed {SAMPLE_SEED}, clipped to [0, 1] for display) and denoised.", "",
                  "![samples](samples.png)", ""]
    if summary.get("attacks"):
        a = config["attack"]
        lines += ["## Under attack (SmoothAdv): empirical robust accuracy (%) beside the certified", "",
                  f"PGD on the soft smoothed classifier through the denoiser: {a.get('steps', 'default')} steps, "
                  f"m = {a.get('m', 'default')} noise draws per step, {a.get('restarts', 1)} start(s); then PREDICT "
                  f"(n = {a.get('n', s.n)}, alpha = {s.alpha}) at each adversarial point. " + ATTACK_LEGEND, "",
                  markdown_table(summary["attacks"]["header"], summary["attacks"]["rows"]),
                  *([f"- VIOLATION {v}" for v in summary["attacks"]["violations"]] or
                    ["No image certified at radius r was broken by an attack with eps < r."]), ""]
    write_atomic(out_dir / "README.md", "\n".join(lines))
