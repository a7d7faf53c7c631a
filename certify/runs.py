"""A certification run over a dataset: one TSV line per image, flushed as written, resumable.

The TSV starts with Cohen et al.'s columns ``idx label predict radius correct time`` (radius at full
precision, correct as 0/1) so their analysis scripts read it unchanged; extra columns follow. A JSON
manifest beside it records the settings, package versions and times. A run started again with the
same settings skips the images already in the file (or in the per-process shards of a distributed
run); with different settings it refuses and names the setting that differs.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from .launch import warn_if_launch_ran_one_process
from .redact import redact
from .results import (COLUMNS, OutputLock, format_rows, manifest_path, open_append, read_manifest, read_results,
                      refuse_links, repair, shard_paths, write_atomic, write_manifest)
from .smoothing import ABSTAIN, Smoothed
from .stats import check_alpha

log = logging.getLogger(__name__)

@dataclass
class RunSettings:
    """Everything that determines a run's results (and so must match to resume it).

    ``mode``: ``certify`` (Cohen's fixed n), ``predict``, ``sequential`` (decide each radius of
    ``options["radii"]`` with an anytime-valid test, stopping early; ``n`` is the most samples it may
    use) or ``anytime`` (the confidence-sequence radius, stopping when it stops growing).
    ``max`` follows Cohen's code: images are dataset indices 0, skip, 2 skip, ... below ``max``.
    The batch size is part of it: the noise of one image is drawn batch by batch from its own
    stream, so another batch size draws other (equally valid) noise. ``batch="auto"`` probes the
    largest batch that fits once per run (:meth:`Smoothed.find_batch_size`) and keeps it in the
    manifest, so a resumed run reuses it.

    >>> RunSettings(classifier="small-cnn", dataset="digits", sigma=0.25, n=100).validate().mode
    'certify'
    """

    classifier: str
    dataset: str
    sigma: float
    denoiser: str = "none"
    mode: str = "certify"
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    batch: int | str = 1000
    skip: int = 1
    max: int | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # autocast, channels_last, compile, batch ("auto"),
    # {classifier,denoiser,dataset}_kwargs, label_from_api, radii, step, mixture

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "RunSettings":
        """Settings from a config mapping; an unknown key is an error that names it."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown run setting(s) {unknown}; expected some of {sorted(known)}")
        return cls(**config).validate()

    def validate(self) -> "RunSettings":
        if self.mode not in COLUMNS:
            raise ValueError(f"mode must be one of {', '.join(COLUMNS)}, got {self.mode!r}")
        if not (isinstance(self.sigma, (int, float)) and self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"sigma must be a positive number (noise std in [0,1] pixel units), got {self.sigma!r}")
        check_alpha(self.alpha)
        for name in ("n0", "n", "batch", "skip"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1) and not (name == "batch" and value == "auto"):
                expected = "an int >= 1 or 'auto'" if name == "batch" else "an int >= 1"
                raise ValueError(f"{name} must be {expected}, got {value!r}")
        if self.max is not None and not (isinstance(self.max, int) and self.max >= 1):
            raise ValueError(f"max must be an int >= 1 (a dataset index bound), got {self.max!r}")
        if self.mode == "sequential":
            radii = self.options.get("radii")
            if not radii or not all(isinstance(r, (int, float)) and r > 0 for r in radii):
                raise ValueError(f"sequential mode needs positive radii (options['radii'] / --radii), got {radii!r}")
            from .sequential import MIXTURES

            mixture = self.options.get("mixture", MIXTURES[0])
            if mixture not in MIXTURES:
                raise ValueError(f"mixture must be {' or '.join(map(repr, MIXTURES))}, got {mixture!r}")
        return self

    def indices(self, dataset_len: int) -> list[int]:
        stop = dataset_len if self.max is None else min(self.max, dataset_len)
        return list(range(0, stop, self.skip))


def package_versions() -> dict[str, str]:
    """Versions of Python, this package, its main dependencies and every installed plugin distribution."""
    from importlib.metadata import PackageNotFoundError, entry_points, version

    out = {"python": platform.python_version()}
    for name in ("denoised-smoothing", "torch", "torchvision", "timm", "diffusers", "transformers",
                 "accelerate", "scipy", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    for kind in ("denoisers", "classifiers", "datasets"):  # third-party plugins shape the results too
        for ep in entry_points(group=f"denoised_smoothing.{kind}"):
            if ep.dist is not None and ep.dist.name not in out:
                out[ep.dist.name] = ep.dist.version
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_resume(out: Path, settings: RunSettings) -> dict[str, Any] | None:
    """Refuse to mix results of different settings in one file; returns the existing manifest."""
    manifest = read_manifest(out)
    if manifest is None:
        if out.exists() or shard_paths(out):
            raise ValueError(f"{out} exists without its manifest {manifest_path(out).name}; refusing to append to it")
        return None
    old, new = manifest.get("settings", {}), redact(asdict(settings))
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            raise ValueError(
                f"{out} was started with {key}={old.get(key)!r}, this run has {key}={new.get(key)!r}; "
                f"use another --out or the same settings to resume"
            )
    return manifest


def _format_line(mode: str, idx: int, label: int, result: Any, seconds: float) -> str:
    """One TSV line; ``correct`` only when the label is known (>= 0) and g did not abstain."""
    correct = int(result.prediction == label and label >= 0 and result.prediction != ABSTAIN)
    if mode == "predict":
        values = (idx, label, result.prediction, correct, f"{seconds:.4f}", result.nA, result.nB, result.n)
    else:
        c = result
        values = (idx, label, c.prediction, repr(float(c.radius)), correct,
                  f"{seconds:.4f}", repr(float(c.pA_lower)), c.nA, c.n, c.n0)
        if mode == "sequential":
            values += (",".join(str(int(v)) for v in c.certified),)
    return "\t".join(str(v) for v in values) + "\n"


def _check_labels(dataset, indices: Sequence[int], num_classes: int, name: str) -> None:
    """Refuse labels the classifier cannot output (before anything is written)."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return
    for i in indices:
        if int(targets[i]) >= num_classes:
            raise ValueError(f"image {i} of {name} has label {int(targets[i])}, but the classifier has "
                             f"{num_classes} classes (0..{num_classes - 1}): the dataset's labels do not match it")


def _os_error(exc: OSError, out: Path) -> ValueError:
    """One line for the file-system failures a user can fix (permissions, a full disk)."""
    if exc.errno == errno.ENOSPC:
        return ValueError(f"the disk is full while writing {out}; free some space and run the same command again: "
                          f"the finished images are kept and the run resumes")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ValueError(f"cannot write {exc.filename or out}: {exc.strerror}; choose another --out")
    return ValueError(f"cannot write {exc.filename or out}: {exc.strerror or exc}")


def run_certification(
    smoothed: Smoothed,
    dataset: Sequence[tuple[torch.Tensor, int]],
    settings: RunSettings,
    out: str | os.PathLike,
    quiet: bool = False,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    extra_manifest: dict[str, Any] | None = None,
) -> Path:
    """Certify (or predict) every selected image of ``dataset`` into ``out`` (TSV) and its manifest.

    With ``world_size > 1`` each rank takes every ``world_size``-th remaining image into its own
    shard ``out.part-RANK``; rank 0 merges all shards into ``out`` ordered by index at the end.
    Per-image random streams make the merged file equal to a one-process run (apart from ``time``).

    >>> import tempfile, torch
    >>> from torch import nn
    >>> f = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> data = [(torch.full((1, 2, 2), 0.5), 0)] * 3
    >>> s = RunSettings(classifier="toy", dataset="toy", sigma=0.25, n0=10, n=50, batch=25)
    >>> path = run_certification(Smoothed(f, sigma=0.25, num_classes=2), data, s, tempfile.mkdtemp() + "/r.tsv", quiet=True)
    >>> len(path.read_text().splitlines())
    4
    """
    settings.validate()
    out = Path(out)
    if out.suffix != ".tsv":
        raise ValueError(f"--out must name a .tsv file, got {str(out)!r}")
    refuse_links(out, manifest_path(out))
    indices = settings.indices(len(dataset))
    if not settings.options.get("label_from_api"):
        _check_labels(dataset, indices, smoothed.num_classes, settings.dataset)
    check_size = getattr(smoothed.denoiser, "check_image_size", None)  # a diffusion model's resolution
    if check_size is not None and indices:
        check_size(tuple(dataset[indices[0]][0].shape))
    lock = OutputLock(out) if rank == 0 else None
    try:
        if lock is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
        busy = lock.acquire() if lock is not None else None
    except OSError as exc:
        busy = str(_os_error(exc, out))
    busy = _from_rank0(busy, world_size)  # every process stops if the main one may not write
    if busy:
        raise ValueError(busy)
    try:
        return _run_locked(smoothed, dataset, settings, out, indices, quiet, rank, world_size, barrier,
                           extra_manifest)
    except OSError as exc:
        raise _os_error(exc, out) from exc
    finally:
        if lock is not None:
            lock.release()


def _from_rank0(value: Any, world_size: int) -> Any:
    """The main process's ``value`` on every process (a collective call when there are several)."""
    if world_size == 1:
        return value
    from accelerate.utils import gather_object

    return gather_object([value])[0]


def _run_locked(smoothed: Smoothed, dataset, settings: RunSettings, out: Path, indices: list[int], quiet: bool,
                rank: int, world_size: int, barrier: Callable[[], None], extra_manifest: dict[str, Any] | None) -> Path:
    settings = _resolve_batch(smoothed, dataset, settings, out, world_size)
    previous = _check_resume(out, settings)
    columns = COLUMNS[settings.mode]
    existed = out.exists() or previous is not None
    allowed = set(indices)
    if rank == 0:
        for path in [out, *shard_paths(out)]:  # drop torn or foreign lines before anyone reads
            repair(path, columns, allowed)
        manifest = {
            "settings": redact(asdict(settings)), "columns": list(columns), "versions": package_versions(),
            "command": redact(" ".join(sys.argv)), "world_size": world_size, "start_time": _now(),
            "end_time": None, **redact(extra_manifest or {}),
        }
        if previous is not None:
            manifest["start_time"] = previous.get("start_time", manifest["start_time"])
            manifest["resumed"] = previous.get("resumed", 0) + 1
        write_manifest(out, manifest)
    barrier()

    done: dict[int, list[str]] = {}
    for path in [out, *shard_paths(out)]:
        done.update(read_results(path, columns, allowed)[0])
    barrier()  # every rank has read what is done before anyone writes

    todo = [i for i in indices if i not in done]
    mine = todo[rank::world_size]
    target = out if world_size == 1 else out.with_name(f"{out.name}.part-{rank:03d}")
    new_file = not target.exists() or target.stat().st_size == 0
    written = 0
    at = columns.index("correct")
    correct = sum(int(r[at]) for r in done.values())
    seen = len(done)
    try:
        with open_append(target) as fh:
            if new_file:
                fh.write("\t".join(columns) + "\n")
            bar = tqdm(mine, disable=quiet, desc=f"{settings.mode} sigma={settings.sigma}", unit="img",
                       position=rank, leave=rank == 0)
            for idx in bar:
                x, label = dataset[idx]
                start = time.perf_counter()
                if settings.options.get("label_from_api"):
                    label = smoothed.classifier.clean_label(x)  # ground truth: the API's top label on the clean image
                result = _certify_one(smoothed, settings, x, idx)
                fh.write(_format_line(settings.mode, idx, int(label), result, time.perf_counter() - start))
                written += 1
                seen += 1
                correct += int(result.prediction == int(label) and int(label) >= 0 and result.prediction != ABSTAIN)
                bar.set_postfix(acc=f"{correct / seen:.3f}")
    except BaseException:
        if not existed and rank == 0 and written == 0 and world_size == 1:
            out.unlink(missing_ok=True)  # nothing half-written: no result file for a run that produced nothing
            manifest_path(out).unlink(missing_ok=True)
        raise
    barrier()
    if rank == 0:
        _merge(out, columns, allowed)
        manifest = read_manifest(out) or {}
        manifest["end_time"] = _now()
        write_manifest(out, manifest)
    barrier()
    return out


def _resolve_batch(smoothed: Smoothed, dataset, settings: RunSettings, out: Path, world_size: int) -> RunSettings:
    """``batch="auto"``: the batch this run started with (from its manifest), else probe the largest
    that fits; with several processes all take the smallest, so every image sees the same batches."""
    if settings.batch != "auto":
        return settings
    options = {**settings.options, "batch": "auto"}
    old = (read_manifest(out) or {}).get("settings", {})
    if old.get("options", {}).get("batch") == "auto" and isinstance(old.get("batch"), int):
        return replace(settings, batch=old["batch"], options=options)
    limit = max(settings.n0, settings.n) if settings.mode == "certify" else settings.n
    batch = smoothed.find_batch_size(tuple(dataset[0][0].shape), limit=limit)
    if world_size > 1:
        from accelerate.utils import gather_object

        batch = min(gather_object([batch]))
    return replace(settings, batch=batch, options=options)


def _certify_one(smoothed: Smoothed, s: RunSettings, x: torch.Tensor, idx: int) -> Any:
    """One image, in the run's mode (the sequential tests live in certify.sequential)."""
    if s.mode == "certify":
        return smoothed.certify_full(x, s.n0, s.n, s.alpha, s.batch, seed=s.seed, index=idx)
    if s.mode == "predict":
        return smoothed.predict_full(x, s.n, s.alpha, s.batch, seed=s.seed, index=idx)
    from . import sequential

    step = s.options.get("step")
    if s.mode == "sequential":
        return sequential.certify_at(smoothed, x, sorted(s.options["radii"]), s.alpha, max_n=s.n, batch_size=s.batch,
                                     seed=s.seed, index=idx, n0=s.n0, step=step,
                                     mixture=s.options.get("mixture", "two-sided"))
    return sequential.certify_anytime(smoothed, x, s.alpha, max_n=s.n, batch_size=s.batch, seed=s.seed, index=idx,
                                      n0=s.n0, step=step)


def _merge(out: Path, columns: Sequence[str], allowed: set[int]) -> None:
    """Fold the shards (if any) into ``out``, one line per index, ordered by index, atomically."""
    shards = shard_paths(out)
    if not shards:
        return
    rows: dict[int, list[str]] = {}
    for path in [out, *shards]:
        rows.update(read_results(path, columns, allowed)[0])
    write_atomic(out, format_rows(columns, rows))
    for path in shards:
        path.unlink()


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
    kwargs = {**settings.options.get("classifier_kwargs", {}), **(runtime_kwargs or {})}
    classifier = create_classifier(settings.classifier, **kwargs).eval().to(dev)
    denoiser = create_denoiser(settings.denoiser, **settings.options.get("denoiser_kwargs", {})).eval().to(dev)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[settings.options.get("autocast")]
    return Smoothed(classifier, denoiser, sigma=settings.sigma, autocast_dtype=autocast,
                    channels_last=bool(settings.options.get("channels_last")),
                    compile=bool(settings.options.get("compile")))


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

    The one entry point behind ``dsmooth certify``/``predict``, ``recipes/certify.py`` and ``compare``:
    under ``accelerate launch`` the images are split across the processes and merged at the end.
    """
    from .data import create_dataset, map_folder_labels

    settings.validate()
    rank, world_size, barrier, dev = distributed_context(device)
    runtime_kwargs = dict(runtime_kwargs or {})
    if settings.classifier.startswith("remote:"):
        # Every answer is cached beside the results: a resumed or repeated run re-sends nothing.
        runtime_kwargs.setdefault("cache_dir", str(Path(out).with_suffix(".api-cache")))
    elif settings.options.get("label_from_api"):
        raise ValueError(f"label_from_api needs a remote classifier, got {settings.classifier!r}")
    smoothed = build_smoothed(settings, device=str(dev), runtime_kwargs=runtime_kwargs)
    dataset = create_dataset(settings.dataset, **settings.options.get("dataset_kwargs", {}))
    if not settings.options.get("label_from_api"):
        if not getattr(smoothed.classifier, "differentiable", True) and hasattr(smoothed.classifier, "clean_label"):
            raise ValueError(f"{settings.classifier} answers with its own label strings, which are not the class ids "
                             f"of {settings.dataset}: every image would count as wrong. Pass --label-from-api "
                             f"(ground truth = the API's top label on the clean image, as Salman et al.)")
        map_folder_labels(dataset, getattr(smoothed.classifier, "labels", [str(i) for i in range(smoothed.num_classes)]))
    describe = getattr(smoothed.classifier, "describe", None)
    return run_certification(smoothed, dataset, settings, out, quiet=quiet, rank=rank, world_size=world_size,
                             barrier=barrier, extra_manifest={"classifier_details": describe()} if describe else None)
