"""A grid of a few clean / noisy / denoised images per pipeline, so a report shows what each denoiser does.

Cheap by design: a few images and one forward pass of each denoiser (the classifier is never built, so a
remote API is never asked). The noise comes from a fixed seed, so pipelines at the same sigma see the same
noisy images. A pipeline whose denoiser or dataset cannot be loaded or run is left out with a warning:
a report never fails because of its pictures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .settings import RunSettings
from .voting import denoise_once

log = logging.getLogger(__name__)

#: images per pipeline, and the seed of their noise
SAMPLE_IMAGES = 4
SAMPLE_SEED = 0


@dataclass
class SampleRow:
    """One pipeline's block: ``clean`` x (k, C, H, W) in [0, 1], ``noisy`` x + sigma d with d ~ N(0, I) (as
    the denoiser gets it, unclipped), ``denoised`` D(x + sigma d) (None without a denoiser)."""

    name: str
    sigma: float
    clean: torch.Tensor
    noisy: torch.Tensor
    denoised: torch.Tensor | None
    captions: list[str]


def sample_row(name: str, settings: RunSettings, indices: Sequence[int], captions: Sequence[str] | None = None,
               device: str | None = None, dataset: Any = None, seed: int = SAMPLE_SEED) -> SampleRow:
    """The images ``indices`` of the run's dataset, noisy at its sigma (noise from ``seed``) and denoised.

    >>> s = RunSettings(classifier="small-cnn", dataset="digits", sigma=0.5)
    >>> row = sample_row("alone", s, [0, 7])
    >>> tuple(row.noisy.shape), row.denoised is None, row.captions
    ((2, 1, 8, 8), True, ['idx 0', 'idx 7'])
    """
    from denoisers import create_denoiser

    from .data import create_dataset
    from .pipeline import default_device

    if dataset is None:
        dataset = create_dataset(settings.dataset, **settings.options.dataset_kwargs)
    clean = torch.stack([dataset[int(i)][0] for i in indices]).float()
    noisy = clean + settings.sigma * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    denoised = None
    if settings.denoiser != "none":
        dev = default_device(device)
        denoiser = create_denoiser(settings.denoiser, **settings.options.denoiser_kwargs).eval().to(dev)
        check_size = getattr(denoiser, "check_image_size", None)  # a diffusion model's resolution
        if check_size is not None:
            check_size(tuple(clean.shape[1:]))
        with torch.no_grad():  # a stochastic chain's one run draws from a generator of the same seed
            denoised = denoise_once(denoiser, noisy.to(dev), settings.sigma,
                                    torch.Generator(dev).manual_seed(seed)).float().cpu()
    return SampleRow(name, settings.sigma, clean, noisy, denoised,
                     list(captions) if captions is not None else [f"idx {int(i)}" for i in indices])


def draw_samples(rows: Sequence[SampleRow]):
    """One block per pipeline (titled with its name, sigma and the mean PSNR of the denoised images against
    the clean ones), for each image: clean | noisy (clipped to [0, 1] for display only) | denoised."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from denoisers.training import psnr

    k = max(len(row.clean) for row in rows)
    fig = plt.figure(figsize=(3 * k * 1.0, 1.45 * len(rows)))
    for sub, row in zip(np.atleast_1d(fig.subfigures(len(rows), 1)), rows):
        noisy_db = psnr(row.noisy, row.clean)
        denoised_db = psnr(row.denoised, row.clean) if row.denoised is not None else None
        sub.suptitle(f"{row.name}: sigma = {row.sigma:g}, " + (
            f"PSNR denoised vs clean {float(denoised_db.mean()):.1f} dB (noisy {float(noisy_db.mean()):.1f} dB)"
            if denoised_db is not None else f"no denoiser (noisy: PSNR {float(noisy_db.mean()):.1f} dB)"), fontsize=8)
        axes = sub.subplots(1, 3 * k, squeeze=False)[0]
        for j in range(len(row.clean)):
            panels = [(row.captions[j], row.clean[j]), (f"noisy {float(noisy_db[j]):.1f} dB", row.noisy[j])]
            if row.denoised is not None:
                panels.append((f"denoised {float(denoised_db[j]):.1f} dB", row.denoised[j]))
            for ax, (title, image) in zip(axes[3 * j:], panels):
                picture = image.clamp(0, 1).permute(1, 2, 0).numpy()
                ax.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
                ax.set_title(title, fontsize=6)
        for ax in axes:
            ax.set_axis_off()
    return fig


def write_samples(path: str | Path, runs: Sequence[tuple[str, RunSettings, Sequence[int], Sequence[str] | None]],
                  device: str | None = None) -> Path | None:
    """`draw_samples` of the pipelines ``runs`` (name, settings, image indices, captions) as a PNG at ``path``;
    a pipeline that cannot be drawn is left out with a warning; None (no file) when none can."""
    from .data import create_dataset
    from .plots import save_png

    rows, datasets = [], {}
    for name, settings, indices, captions in runs:
        try:  # a report never fails because of its pictures: any failure leaves this pipeline out
            key = (settings.dataset, repr(settings.options.dataset_kwargs))
            if key not in datasets:
                datasets[key] = create_dataset(settings.dataset, **settings.options.dataset_kwargs)
            rows.append(sample_row(name, settings, indices, captions, device=device, dataset=datasets[key]))
        except Exception as exc:  # noqa: BLE001
            log.warning("samples.png: %s left out: %s: %s", name, type(exc).__name__, exc)
    if not rows:
        return None
    return save_png(draw_samples(rows), path, dpi=150)


def spread(idx: Sequence[int], k: int = SAMPLE_IMAGES) -> list[int]:
    """``k`` of a run's image indices, evenly spread over it (datasets ordered by class show several classes).

    >>> spread(list(range(0, 990, 33)))
    [0, 330, 627, 957]
    """
    idx = list(idx)
    return [int(idx[j]) for j in sorted({round(t) for t in np.linspace(0, len(idx) - 1, min(k, len(idx)))})]


def image_captions(idx: Sequence[int], source: Sequence[str] | None) -> list[str]:
    """Panel captions: the image's index, and its file or dataset id (last 18 characters) where known.

    >>> image_captions([3, 9], ["photos/cat/IMG_0042.jpg", ""])
    ['idx 3\\n...at/IMG_0042.jpg', 'idx 9']
    """
    source = source or [""] * len(idx)
    return [f"idx {int(i)}" + (f"\n{s if len(s) <= 18 else '...' + s[-15:]}" if s else "") for i, s in zip(idx, source)]


def sources(res: Any, shown: Sequence[int]) -> list[str] | None:
    """The files or dataset ids of the images ``shown``, where the run's TSV records them."""
    if not res.source:
        return None
    where = dict(zip(res.idx.tolist(), res.source))
    return [where.get(int(i), "") for i in shown]


def samples_from_manifests(results: Sequence[Any], path: str | Path, device: str | None = None) -> Path | None:
    """`write_samples` for loaded runs (`certify.outcomes.RunResult`), each pipeline rebuilt from the
    settings in its manifest; runs without one (Cohen's files) are left out with a warning."""
    runs = []
    for res in results:
        try:
            settings = RunSettings.from_dict(res.manifest["settings"])
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("samples.png: %s left out: its manifest names no pipeline (%s)", res.name, exc)
            continue
        shown = spread(res.idx)
        runs.append((res.name, settings, shown, image_captions(shown, sources(res, shown))))
    return write_samples(path, runs, device=device) if runs else None
