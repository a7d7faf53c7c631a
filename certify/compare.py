"""Compare denoiser/classifier pipelines on the same images with the same seeds, from one YAML config.

A config is a set of overrides on the run schema (`certify.settings`: every key is a run setting's name, as the
manifest records it), shared by its pipelines; each pipeline entry is a further set, with its ``name``::

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

Besides the schema's keys a config has ``name``, ``description``, ``pipelines``, ``device``, ``images`` (how
many images, ``skip`` apart: the run's ``max``), ``radii`` (the report's grid; in ``mode: sequential`` its
positive radii are also the ones decided) and ``attack:``, overrides for an attack run of some or all
pipelines (``pipelines: [names]``; ``steps`` may be written for ``attack_steps``, and so on).

The output folder gets one TSV + JSON per pipeline, ``table.md``/``table.csv``/``table.tex`` (certified
accuracy at the radius grid, clean accuracy, ACR, abstain rate, seconds per image), ``curves.png``,
``samples.png`` (a few images clean, noisy and denoised per pipeline) and a ``README.md`` saying what was
run. A pipeline whose TSV is complete is skipped on a re-run. Without ``radii`` the grid follows what the
pipelines can certify (`certify.tables.default_radii`).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .analysis import ATTACK_LEGEND, analyze, load_result, markdown_table, refuse_report_links
from .config import read_config
from .pipeline import certify_dataset, distributed_context
from .preflight import require_ready
from .redact import redact
from .registry import close_matches
from .results import write_atomic
from .samples import SAMPLE_IMAGES, SAMPLE_SEED, image_captions, sources, spread, write_samples
from .settings import RunSettings, schema, settings_from

#: a config's own keys (everything else is a run setting)
COMPARE_KEYS = ("name", "description", "pipelines", "device", "images", "radii", "attack")


@dataclass
class Pipeline:
    """One pipeline of a config: its name and its overrides of the shared settings."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


def _keys(values: dict[str, Any], where: str, allowed: set[str]) -> dict[str, Any]:
    """``values`` when every key is allowed; else one line naming the key and its close matches."""
    for key in values:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {key!r}{close_matches(key, allowed)}; expected run settings "
                             f"(dsmooth certify --help names them: the flag --x-y is the key x_y) or {', '.join(COMPARE_KEYS)}")
    return values


def load_compare_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a compare config; every problem names the key and what was expected.

    >>> import tempfile
    >>> p = tempfile.mktemp(suffix=".yaml")
    >>> _ = open(p, "w").write("dataset: digits\\nn: 10\\npipelines:\\n  - {name: a, classifier: small-cnn, sigma: 0.5}\\n")
    >>> load_compare_config(p)["pipelines"][0].overrides
    {'classifier': 'small-cnn', 'sigma': 0.5}
    """
    path = Path(path)
    settings_keys = set(schema()) - {"max"}  # `images` here
    config = _keys(read_config(path, what="compare config"), str(path), settings_keys | set(COMPARE_KEYS))
    for key in ("dataset", "pipelines"):
        if key not in config:
            raise ValueError(f"{path}: missing required key {key!r}")
    pipes = config["pipelines"]
    if not isinstance(pipes, list) or not pipes:
        raise ValueError(f"{path}: 'pipelines' must be a non-empty list")
    parsed, names = [], set()
    for i, p in enumerate(pipes):
        if not isinstance(p, dict) or "name" not in p:
            raise ValueError(f"{path}: pipeline {i} must be a mapping with a name and its settings, got {p!r}")
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", str(p["name"])) or p["name"] in names:
            raise ValueError(f"{path}: pipeline name {p['name']!r} must be unique and use letters, digits, '_.+-'")
        names.add(p["name"])
        overrides = _keys({k: v for k, v in p.items() if k != "name"}, f"{path}: pipeline {p['name']}", settings_keys)
        parsed.append(Pipeline(str(p["name"]), overrides))
    config["pipelines"] = parsed
    radii = config.get("radii")
    if radii is not None and not (isinstance(radii, list) and radii and all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and r >= 0 for r in radii)):
        raise ValueError(f"{path}: radii must be a list of numbers >= 0, e.g. [0, 0.25, 0.5], got {radii!r}")
    if "images" in config:
        config["images"] = _whole(config["images"], f"{path}: images")
    if config.get("attack") is not None:
        config["attack"] = _attack_config(config["attack"], names, path, settings_keys)
    return config


def _attack_config(attack: Any, names: set[str], path: Path, settings_keys: set[str]) -> dict[str, Any]:
    """The `attack:` overrides, checked: eps is required, pipelines (default all) must name pipelines; a key
    of the attack mode may drop its ``attack_`` prefix here (``steps`` for ``attack_steps``)."""
    if not isinstance(attack, dict) or "eps" not in attack:
        raise ValueError(f"{path}: attack must be a mapping with eps (a list of radii) and optionally other run "
                         f"settings and pipelines (names); got {attack!r}")
    pipelines = attack.get("pipelines", [])
    unknown = sorted(set(pipelines or []) - names) if isinstance(pipelines, list) else pipelines
    if unknown:
        raise ValueError(f"{path}: attack pipelines {pipelines!r} must be a list of pipeline names "
                         f"({sorted(names)}); unknown: {unknown}")
    overrides = {f"attack_{k}" if k not in settings_keys and f"attack_{k}" in settings_keys else k: v
                 for k, v in attack.items() if k != "pipelines"}
    return {"pipelines": pipelines, "overrides": _keys(overrides, f"{path}: attack", settings_keys)}


def _whole(value: Any, what: str) -> int:
    """An int from a config value: 100 or 100.0, never 20.9 silently cut to 20 (nor true, nor '7')."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def settings_for(config: dict[str, Any], pipe: Pipeline, n: int | None = None, limit: int | None = None,
                 attack: bool = False) -> RunSettings:
    """The run settings of one pipeline: the config's shared settings, then the pipeline's overrides (then, for
    its attack run, the ``attack:`` overrides); ``n`` and ``limit`` (images) override the config's."""
    values = {k: v for k, v in config.items() if k not in COMPARE_KEYS}
    values.update(pipe.overrides)
    if attack:
        values.update(config["attack"]["overrides"], mode="attack")
    elif values.get("mode") == "sequential" and config.get("radii") and "radii" not in pipe.overrides:
        values["radii"] = [float(r) for r in config["radii"] if float(r) > 0]
    if n is not None:
        values["n"] = n
    images = limit if limit is not None else config.get("images")
    if images is not None:
        values["max"] = int(values.get("skip", 1)) * int(images)
    try:
        return settings_from(values)
    except TypeError:  # a required setting given nowhere
        missing = [k for k in ("classifier", "dataset", "sigma") if k not in values]
        raise ValueError(f"pipeline {pipe.name} needs {', '.join(missing)} (in the pipeline or at the top level)") from None


def compare_runs(config: dict[str, Any], n: int | None = None,
                 limit: int | None = None) -> list[tuple[str, RunSettings, Pipeline]]:
    """``(name, settings, pipeline)`` of each run of a config, in order: every pipeline's certification,
    then the attacks (``NAME.attack``)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    pipes = config["pipelines"]
    attacked = [p for p in pipes if config.get("attack") is not None
                and p.name in (config["attack"]["pipelines"] or [q.name for q in pipes])]
    return [(p.name, settings_for(config, p, n=n, limit=limit), p) for p in pipes] + \
        [(f"{p.name}.attack", settings_for(config, p, n=n, limit=limit, attack=True), p) for p in attacked]


def config_runs(path: str | os.PathLike) -> list[tuple[int, RunSettings]]:
    """``(pipeline index, settings)`` of every run a compare config names, as ``dsmooth compare`` runs them
    (what ``dsmooth check --config`` checks)."""
    config = load_compare_config(path)
    return [(config["pipelines"].index(pipe), settings) for _, settings, pipe in compare_runs(config)]


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
            print(f"[compare] {name}: {settings.classifier} + {settings.denoiser} at sigma={settings.sigma}", flush=True)
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
    attack = next((settings for name, settings, _ in runs if name.endswith(".attack")), None)
    _write_readme(out_dir, config, all_settings, attack, summary, time.time() - started, config_path)
    return summary


def _write_readme(out_dir: Path, config: dict, all_settings: list[RunSettings], attack_settings: RunSettings | None,
                  summary: dict, seconds: float, config_path) -> None:
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
    for p, ps in zip(config["pipelines"], all_settings):
        opts = json.dumps(redact({k: v for k, v in (("classifier", ps.options.classifier_kwargs),
                                                    ("denoiser", ps.options.denoiser_kwargs)) if v}))
        lines.append(f"| {p.name} | `{ps.classifier}` | `{ps.denoiser}` | {ps.sigma} | {opts if opts != '{}' else ''} |")
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
        a = attack_settings.options
        lines += ["## Under attack (SmoothAdv): empirical robust accuracy (%) beside the certified", "",
                  f"PGD on the soft smoothed classifier through the denoiser: {a.attack_steps} steps, "
                  f"m = {a.attack_m} noise draws per step, {a.attack_restarts} start(s); then PREDICT "
                  f"(n = {attack_settings.n}, alpha = {attack_settings.alpha}) at each adversarial point. "
                  + ATTACK_LEGEND, "",
                  markdown_table(summary["attacks"]["header"], summary["attacks"]["rows"]),
                  *([f"- VIOLATION {v}" for v in summary["attacks"]["violations"]] or
                    ["No image certified at radius r was broken by an attack with eps < r."]), ""]
    write_atomic(out_dir / "README.md", "\n".join(lines))
