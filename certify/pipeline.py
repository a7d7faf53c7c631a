"""The pipeline a run's settings name, assembled: devices, processes, plugins, dataset, then the run.

`certify_dataset` is the one entry point behind ``dsmooth certify``/``predict``, the recipes and
``compare``; under ``accelerate launch`` the images are split across the processes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from .launch import warn_if_launch_ran_one_process
from .registry import split_spec
from .runs import run_certification
from .settings import RunSettings
from .rules import PRECISIONS
from .smoothing import Smoothed



def default_device(device: str | None = None) -> torch.device:
    """The torch device to run on: the one named (checked), else cuda when there is one, else cpu."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device; expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu "
                         f"(or leave --device out to pick the GPU when there is one)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def build_smoothed(settings: RunSettings, device: str | None = None,
                   runtime_kwargs: dict[str, Any] | None = None) -> Smoothed:
    """The smoothed pipeline a run's settings name, built through the plugin registries.

    ``runtime_kwargs`` go to the classifier without being part of the run's identity (a remote API's
    cache folder, query budget, concurrency).

    >>> s = RunSettings(classifier="small-cnn", dataset="digits", sigma=0.5)
    >>> build_smoothed(s).sigma
    0.5
    """
    from classifiers import create_classifier
    from denoisers import create_denoiser

    dev = default_device(device)
    kwargs = {**settings.options.classifier_kwargs, **(runtime_kwargs or {})}
    classifier = create_classifier(settings.classifier, **kwargs).eval().to(dev)
    denoiser = create_denoiser(settings.denoiser, **settings.options.denoiser_kwargs).eval().to(dev)
    return Smoothed(classifier, denoiser, sigma=settings.sigma, autocast_dtype=PRECISIONS.get(settings.options.autocast),
                    channels_last=settings.options.channels_last, compile=settings.options.compile,
                    votes=settings.options.votes or 1)


def distributed_context(device: str | None = None) -> tuple[int, int, Callable[[], None], torch.device]:
    """(rank, world size, barrier, device): Accelerate's view when launched with ``accelerate launch``.

    A plain ``python`` run is rank 0 of 1 on ``device`` (default cuda if available, else cpu).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        # Under torchrun (`accelerate launch --multi_gpu`) without CUDA, Accelerate must be told to use
        # CPU processes (gloo); otherwise every process would believe it runs alone.
        use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
        state = PartialState(cpu=use_cpu)
        return state.process_index, state.num_processes, state.wait_for_everyone, state.device
    warn_if_launch_ran_one_process(1)
    return 0, 1, lambda: None, default_device(device)


def certify_dataset(settings: RunSettings, out: str | os.PathLike, device: str | None = None,
                    quiet: bool = False, runtime_kwargs: dict[str, Any] | None = None) -> Path:
    """Build the pipeline and dataset a run's settings name and certify it into ``out``.

    The one entry point behind ``dsmooth certify``/``predict``, ``recipes/certify_dataset.py`` and ``compare``:
    under ``accelerate launch`` the images are split across the processes and merged at the end. What the
    run lacks is listed first (:func:`certify.preflight.require_ready`); ``quiet`` also silences the
    libraries' logs and progress bars.
    """
    from .data import create_dataset, map_folder_labels
    from .libraries import quiet_libraries
    from .preflight import require_ready

    settings.validate()
    if quiet:
        quiet_libraries()
    require_ready([(None, settings)])  # every missing file, dataset or package at once, before loading any
    rank, world_size, barrier, dev = distributed_context(device)
    runtime_kwargs = dict(runtime_kwargs or {})
    from classifiers import CLASSIFIERS

    folder = getattr(CLASSIFIERS.entry(split_spec(settings.classifier)[0]).factory, "run_folder", None)
    if folder is not None and world_size > 1:  # its label ids are given as answers come, by one process
        raise ValueError(f"{settings.classifier} keeps its answers and label ids in one folder beside the results; "
                         f"several processes would number the labels each their own way. Run it in one process "
                         f"(without accelerate launch): its requests already run concurrently "
                         f"(--classifier-arg concurrency=N)")
    if folder is not None:  # e.g. a remote API's answer cache beside the results: a resumed run re-sends nothing
        option, suffix = folder
        runtime_kwargs.setdefault(option, str(Path(out).with_suffix(suffix)))
    smoothed = build_smoothed(settings, device=str(dev), runtime_kwargs=runtime_kwargs)
    if settings.options.label_from_api and not hasattr(smoothed.classifier, "clean_label"):
        raise ValueError(f"label_from_api needs a classifier that labels clean images itself (a remote API), got "
                         f"{settings.classifier!r}")
    try:
        dataset = create_dataset(settings.dataset, **settings.options.dataset_kwargs)
        if not settings.options.label_from_api:
            if not getattr(smoothed.classifier, "differentiable", True) and hasattr(smoothed.classifier, "clean_label"):
                raise ValueError(f"{settings.classifier} answers with its own label strings, which are not the class ids "
                                 f"of {settings.dataset}: every image would count as wrong. Pass --label-from-api "
                                 f"(ground truth = the API's top label on the clean image, as Salman et al.)")
            labels = getattr(smoothed.classifier, "labels", [str(i) for i in range(smoothed.num_classes)])
            map_folder_labels(dataset, labels)
        describe = getattr(smoothed.classifier, "describe", None)
        return run_certification(smoothed, dataset, settings, out, quiet=quiet, rank=rank, world_size=world_size,
                                 barrier=barrier, extra_manifest={"classifier_details": describe()} if describe else None)
    finally:  # a remote classifier's threads and answer cache; anything else with close() too
        close = getattr(smoothed.classifier, "close", None)
        if callable(close):
            close()
