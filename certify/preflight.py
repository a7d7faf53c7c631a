"""Before a run loads anything: every missing weight, dataset and package at once, each with what fixes it.

``dsmooth check`` prints the list; ``certify``, ``predict``, ``attack`` and ``compare`` run the same check
first and stop in seconds with the whole list instead of failing on the first model after minutes. Each
plugin family says what it needs (``check=`` in :meth:`certify.registry.Registry.register`); nothing is
downloaded or built. The hub is probed once per process (:func:`certify.libraries.reachable`); when it cannot
be reached, the process works offline from the caches, without retry loops.
"""

from __future__ import annotations

from typing import Sequence

from .settings import RunSettings

#: The parts of a run that a registry builds: settings field -> the options field that goes with it.
PARTS = {"classifier": "classifier_kwargs", "denoiser": "denoiser_kwargs", "dataset": "dataset_kwargs"}


class NotReady(ValueError):
    """What a run lacks, one line each (a ``ValueError``: the CLI prints it as the command's error)."""


def registry_of(part: str):
    """The registry that builds a run's classifier, denoiser or dataset."""
    if part == "classifier":
        from classifiers import CLASSIFIERS
        return CLASSIFIERS
    if part == "denoiser":
        from denoisers import DENOISERS
        return DENOISERS
    from .data import DATASETS
    return DATASETS


def run_problems(runs: Sequence[tuple[int | None, RunSettings]]) -> list[str]:
    """The problems of several runs, each once: ``(i, settings)`` pairs, ``i`` the index of a compare config's
    pipeline (its dataset is shared), or None for a single run from command-line flags.

    >>> run_problems([(None, RunSettings(classifier="small-cnn.mnist5k", dataset="mnist5k:test", sigma=0.25))])
    []
    >>> print(*run_problems([(0, RunSettings(classifier="small-cnn:/no/dir", dataset="digits", sigma=0.25))]))
    pipelines[0] classifier small-cnn:/no/dir: no such folder (a checkpoint is a folder with config.json and ...)
    """
    found: dict[tuple[str, str, str], list[int]] = {}  # (part, spec, problem) -> the pipelines that have it
    for i, settings in runs:
        for part, options in PARTS.items():
            spec = getattr(settings, part)
            for problem in registry_of(part).check(spec, **getattr(settings.options, options)):
                places = found.setdefault((part, spec, problem), [])
                if i is not None and part != "dataset" and i not in places:
                    places.append(i)
    lines = []
    for (part, spec, problem), places in found.items():
        where = f"pipelines[{','.join(map(str, places))}] {part}" if places else \
            part if runs[0][0] is not None else f"--{part}"  # a config's dataset key, or the flag
        lines.append(f"{where} {spec}: {problem}")
    return lines


def require_ready(runs: Sequence[tuple[int | None, RunSettings]]) -> None:
    """Raise :class:`NotReady` listing every problem of ``runs`` (see :func:`run_problems`), if any."""
    problems = run_problems(runs)
    if len(problems) == 1:
        raise NotReady(problems[0])
    if problems:
        raise NotReady(describe(problems, from_config=runs[0][0] is not None))


def describe(problems: Sequence[str], from_config: bool) -> str:
    """The list of problems as the CLI prints it: a count, one line each, and where options go."""
    how = ("options go in a pipeline's classifier_kwargs / denoiser_kwargs or the config's dataset_kwargs"
           if from_config else "options go in --classifier-arg / --denoiser-arg / --dataset-arg KEY=VALUE")
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    return "\n".join([f"{count}, nothing loaded:", *(f"  {p}" for p in problems), f"  ({how})"])


def report(runs: Sequence[tuple[int | None, RunSettings]]) -> int:
    """``dsmooth check``: print the problems of ``runs`` (or ``ok``); the exit code, 1 if anything is missing."""
    problems = run_problems(runs)
    print(describe(problems, from_config=runs[0][0] is not None) if problems else "ok")
    return 1 if problems else 0
