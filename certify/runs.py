"""A certification run over a dataset: one TSV line per image, flushed as written, resumable. It knows no mode.

The run loop reads the dataset, resumes, locks the output, shards the images across processes and hands the
run's mode (`certify.modes`) the images still to do, as a stream: the mode packs them so that several images
share each forward pass, and yields each result as its image finishes; its line is written at once (a kill
loses only the images in flight). A JSON manifest beside the TSV records the settings, package versions and
times. A run started again with the same settings skips the images already in the file (or in the
per-process shards of a distributed run), after checking every line read back against itself and the
settings; with different settings it refuses and names the setting that differs. At the end the file is
rewritten in index order.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .modes import Mode, check_line
from .checkpoint import weights_digest
from .redact import redact
from .results import (OutputLock, escape_cell, file_columns, format_rows, manifest_path, open_append, read_manifest,
                      read_results, refuse_links, repair, shard_paths, write_atomic, write_manifest)
from .settings import RunSettings, package_versions, schema
from .smoothing import ABSTAIN, Smoothed

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _check_resume(out: Path, settings: RunSettings, weights: dict[str, str]) -> dict[str, Any] | None:
    """Refuse to mix results of different settings, or of other weights under the same names (a checkpoint
    folder or the shipped files replaced in between), in one file; returns the existing manifest. A file
    from before the weights were recorded resumes, as does a network whose lazy weights were not built yet."""
    manifest = read_manifest(out)
    if manifest is None:
        if out.exists() or shard_paths(out):
            raise ValueError(f"{out} exists without its manifest {manifest_path(out).name}; refusing to append to it")
        return None
    old, new = redact(_owned(manifest.get("settings", {}))), redact(settings.record())  # today's rule on both sides
    differ = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if differ:
        raise ValueError(
            f"{out} was started with {', '.join(f'{k}={old.get(k)!r}' for k in differ)}, this run has "
            f"{', '.join(f'{k}={new.get(k)!r}' for k in differ)}; use another --out or the same settings to resume"
        )
    recorded = manifest.get("weights")
    for part in sorted(set(recorded) & set(weights)) if isinstance(recorded, dict) else ():
        if recorded.get(part) != weights.get(part):
            raise ValueError(
                f"{out} was started with other {part} weights than this run's {redact(settings.record()).get(part)!r} "
                f"has now (digest {recorded.get(part)}, now {weights.get(part)}): its files changed in between; "
                f"use another --out, or the weights it was started with to resume")
    return manifest


def weights_record(smoothed: Smoothed) -> dict[str, str]:
    """The digest of each network's weights (`certify.checkpoint.weights_digest`), as the manifest records them."""
    parts = {"classifier": smoothed.classifier, "denoiser": smoothed.denoiser}
    digests = {part: weights_digest(module) for part, module in parts.items() if module is not None}
    return {part: digest for part, digest in digests.items() if digest is not None}


def _owned(recorded: dict[str, Any]) -> dict[str, Any]:
    """Recorded settings without the options their mode does not have: an older release recorded e.g. --radii
    in Cohen's mode, which read nothing of it (today the flag is refused there); such a file still resumes."""
    try:
        names = schema(recorded.get("mode"))
    except (KeyError, ValueError):  # a mode not installed now: compare everything
        return recorded
    options = recorded.get("options")
    if not isinstance(options, dict):
        return recorded
    return {**recorded, "options": {k: v for k, v in options.items() if k in names}}


def image_source(dataset: Any, idx: int) -> str:
    """Where image ``idx`` came from (a dataset's ``source(i)``: a file path or a dataset id), else its index."""
    source = getattr(dataset, "source", None)
    return str(source(idx)) if callable(source) else f"#{idx}"


def _labels(dataset: Any, settings: RunSettings) -> Sequence[int] | None:
    """The dataset's labels when they are known without loading images (None with --label-from-api)."""
    if settings.options.label_from_api:
        return None
    targets = getattr(dataset, "targets", None)
    if targets is None and isinstance(dataset, (list, tuple)):
        targets = [label for _, label in dataset]
    return targets


def _line_check(settings: RunSettings, dataset: Any, columns: Sequence[str]) -> Callable[[dict[str, str]], str | None]:
    """A resumed line must follow from itself and the settings (`certify.modes.check_line`) and name this
    dataset's image (its label, and its source where the file records one)."""
    record, targets = settings.record(), _labels(dataset, settings)

    def check(row: dict[str, str]) -> str | None:
        problem = check_line(row, record)
        idx = int(row["idx"])
        if problem is None and targets is not None and int(row["label"]) != int(targets[idx]):
            problem = f"label {row['label']} is not the dataset's label {int(targets[idx])} for image {idx}"
        if problem is None and "source" in columns and row["source"] != escape_cell(image_source(dataset, idx)):
            problem = (f"image {idx} was {row['source']!r} when certified, the dataset has "
                       f"{escape_cell(image_source(dataset, idx))!r} there now (the dataset changed?)")
        return problem

    return check


def _check_labels(dataset, indices: Sequence[int], num_classes: int, settings: RunSettings) -> None:
    """Refuse labels the classifier cannot output (before anything is written)."""
    targets = _labels(dataset, settings)
    for i in indices if targets is not None else ():
        if int(targets[i]) >= num_classes:
            raise ValueError(f"image {i} of {settings.dataset} has label {int(targets[i])}, but the classifier has "
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
    """Certify every selected image of ``dataset`` into ``out`` (TSV) and its manifest, in the settings' mode.

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
    mode = settings.run_mode
    _check_labels(dataset, indices, smoothed.num_classes, settings)
    mode.prepare(smoothed, dataset, indices, settings)
    check_size = getattr(smoothed.denoiser, "check_image_size", None)  # a diffusion model's resolution
    if indices:
        shape = tuple(dataset[indices[0]][0].shape)
        if check_size is not None:
            check_size(shape)
        smoothed.vote.numbers(shape)  # votes > 1 over runs that cannot differ: refused before anything is written
    settings = resolve_batch(smoothed, dataset, settings, out, world_size)
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
        return _run_locked(smoothed, dataset, settings, mode, out, indices, quiet, rank, world_size, barrier,
                           extra_manifest)
    except OSError as exc:
        raise _os_error(exc, out) from exc
    finally:
        if lock is not None:
            lock.release()


def _from_all(counts: tuple[int, int, int], world_size: int) -> tuple[tuple[int, ...], int]:
    """(forward passes, samples drawn, images) summed over the processes, and the passes of the busiest one."""
    if world_size == 1:
        return counts, counts[0]
    from accelerate.utils import gather_object

    every = gather_object([counts])
    return tuple(sum(c[k] for c in every) for k in range(3)), max(c[0] for c in every)


def packing_record(counts: tuple[int, ...], busiest: int, batch: int) -> dict[str, Any]:
    """How full this invocation's forward passes were: passes per image and batch fill = samples drawn /
    (passes x batch) (drawn counts what the look-ahead drew past a stop; the certificates count what they used)."""
    passes, drawn, images = counts
    return {"forward_passes": passes, "samples_drawn": drawn, "images": images, "batch": batch,
            "passes_per_image": round(passes / images, 3) if images else None,
            "batch_fill": round(drawn / (passes * batch), 4) if passes else None, "busiest_process_passes": busiest}


def _from_rank0(value: Any, world_size: int) -> Any:
    """The main process's ``value`` on every process (a collective call when there are several)."""
    if world_size == 1:
        return value
    from accelerate.utils import gather_object

    return gather_object([value])[0]


def _items(smoothed: Smoothed, dataset, settings: RunSettings, indices: Sequence[int],
           labels: dict[int, int]) -> Iterator[tuple[int, Any, int]]:
    """(idx, image, label) for each image to do, loaded as the mode asks for it; ``labels`` keeps each
    position's label until its result arrives."""
    for position, idx in enumerate(indices):
        x, label = dataset[idx]
        if settings.options.label_from_api:
            label = smoothed.classifier.clean_label(x)  # ground truth: the API's top label on the clean image
        labels[position] = int(label)
        yield idx, x, int(label)


def _run_locked(smoothed: Smoothed, dataset, settings: RunSettings, mode: Mode, out: Path, indices: list[int],
                quiet: bool, rank: int, world_size: int, barrier: Callable[[], None],
                extra_manifest: dict[str, Any] | None) -> Path:
    weights = weights_record(smoothed)
    previous = _check_resume(out, settings, weights)
    columns = _resumed_columns(out, settings.columns)
    check = _line_check(settings, dataset, columns)
    existed = out.exists() or previous is not None
    allowed = set(indices)
    if rank == 0:
        for path in [out, *shard_paths(out)]:  # drop torn, foreign or false lines before anyone reads
            repair(path, columns, allowed, check)
        manifest = {
            "settings": redact(settings.record()), "columns": list(columns), "versions": package_versions(),
            "command": redact(" ".join(sys.argv)), "world_size": world_size, "start_time": _now(),
            "end_time": None, "cost_per_sample": smoothed.vote.cost(), "weights": weights,
            **redact(extra_manifest or {}),
        }
        if previous is not None:
            manifest["start_time"] = previous.get("start_time", manifest["start_time"])
            manifest["resumed"] = previous.get("resumed", 0) + 1
        write_manifest(out, manifest)
    barrier()

    done: dict[int, list[str]] = {}
    for path in [out, *shard_paths(out)]:
        done.update(read_results(path, columns, allowed, check)[0])
    barrier()  # every rank has read what is done before anyone writes

    todo = [i for i in indices if i not in done]
    mine = todo[rank::world_size]
    target = out if world_size == 1 else out.with_name(f"{out.name}.part-{rank:03d}")
    new_file = not target.exists() or target.stat().st_size == 0
    written, seen = 0, len(done)
    passes, drawn = smoothed.passes, smoothed.drawn
    correct = sum(int(r[columns.index("correct")]) for r in done.values())
    try:
        with open_append(target) as fh:
            if new_file:
                fh.write("\t".join(columns) + "\n")
            bar = tqdm(total=len(mine), disable=quiet or rank != 0, desc=f"{settings.mode} sigma={settings.sigma}",
                       unit="img")
            labels: dict[int, int] = {}
            for position, result, seconds in mode.stream(smoothed, _items(smoothed, dataset, settings, mine, labels),
                                                         settings):
                idx, label = mine[position], labels.pop(position)
                source = escape_cell(image_source(dataset, idx)) if "source" in columns else ""
                fh.write(mode.line(columns, idx, label, result, seconds, source))
                written, seen = written + 1, seen + 1
                correct += int(result.prediction == label and label >= 0 and result.prediction != ABSTAIN)
                bar.update()
                bar.set_postfix(acc=f"{correct / seen:.3f}")
            bar.close()
    except BaseException:
        if not existed and rank == 0 and written == 0 and world_size == 1:
            out.unlink(missing_ok=True)  # nothing half-written: no result file for a run that produced nothing
            manifest_path(out).unlink(missing_ok=True)
        raise
    passes, drawn = _from_all((smoothed.passes - passes, smoothed.drawn - drawn, written), world_size)
    barrier()
    if rank == 0:
        _merge(out, columns, allowed)
        manifest = read_manifest(out) or {}
        manifest["end_time"] = _now()
        manifest["packing"] = packing_record(passes, drawn, settings.batch)
        write_manifest(out, manifest)
    barrier()
    return out


def _resumed_columns(out: Path, columns: tuple[str, ...]) -> tuple[str, ...]:
    """The run's columns; a file begun before the ``source`` column existed keeps its columns (it still resumes)."""
    legacy = tuple(c for c in columns if c != "source")
    for path in [out, *shard_paths(out)]:
        if file_columns(path) == legacy:
            return legacy
    return columns


def resolve_batch(smoothed: Smoothed, dataset, settings: RunSettings, out: Path, world_size: int) -> RunSettings:
    """``batch="auto"`` resolved before anything is recorded: the batch this run started with (from its manifest),
    else the largest that fits (probed once; with several processes all take the smallest, so every image sees
    the same batches); then the mode's defaults that depend on it are filled in."""
    if settings.batch != "auto":
        return settings
    old = (read_manifest(out) or {}).get("settings", {})
    if old.get("options", {}).get("batch") == "auto" and isinstance(old.get("batch"), int):
        batch = old["batch"]
    else:
        limit = max(settings.n0 if settings.run_mode.uses_n0 else 1, settings.n)
        batch = smoothed.find_batch_size(tuple(dataset[0][0].shape), limit=limit)
        if world_size > 1:
            from accelerate.utils import gather_object

            batch = min(gather_object([batch]))
    return replace(settings, batch=batch, options=settings.options.replace(batch="auto")).validate()


def _merge(out: Path, columns: Sequence[str], allowed: set[int]) -> None:
    """Fold the shards (if any) into ``out``, one line per index, ordered by index, atomically."""
    shards = shard_paths(out)
    rows: dict[int, list[str]] = {}
    for path in [out, *shards]:
        rows.update(read_results(path, columns, allowed)[0])
    write_atomic(out, format_rows(columns, rows))
    for path in shards:
        path.unlink()


__all__ = ["image_source", "packing_record", "resolve_batch", "run_certification"]
