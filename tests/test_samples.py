"""certify/samples.py: a report's grid of clean, noisy and denoised images shows exactly what each pipeline sees and
its denoiser returns; a model that cannot load costs its row, never the report."""

from __future__ import annotations

import numpy as np
import torch

from certify.data import create_dataset
from certify.samples import draw_samples, sample_row, write_samples
from certify.settings import RunSettings
from denoisers import create_denoiser


def test_samples_show_the_noisy_and_denoised_images_exactly(tmp_path, caplog):
    def settings(denoiser):
        return RunSettings(classifier="small-cnn", dataset="digits:test", sigma=0.25, denoiser=denoiser)

    alone, mse = draw_samples([sample_row("alone", settings("none"), [0, 7]),
                               sample_row("mse", settings("dncnn.mnist5k_s025_mse"), [0, 7])]).subfigs
    assert "alone: sigma = 0.25" in alone.get_suptitle() and "mse: sigma = 0.25, PSNR denoised" in mse.get_suptitle()
    clean = create_dataset("digits:test")[7][0]
    noisy = clean + 0.25 * torch.randn((2, *clean.shape), generator=torch.Generator().manual_seed(0))[1]
    with torch.no_grad():
        denoised = create_denoiser("dncnn.mnist5k_s025_mse").eval()(noisy[None], 0.25)[0]
    panels = [ax.images[0].get_array() for ax in mse.axes if ax.images]
    assert len(panels) == 6 and len([ax for ax in alone.axes if ax.images]) == 4  # no denoiser: clean and noisy only
    assert np.allclose(panels[3], clean[0]) and np.allclose(panels[4], noisy[0].clamp(0, 1))
    assert np.allclose(panels[5], denoised[0].clamp(0, 1), atol=1e-5)
    broken = [("alone", settings("none"), [0], None), ("missing", settings("dncnn:/nonexistent/model"), [0], None)]
    with caplog.at_level("WARNING"):
        assert write_samples(tmp_path / "samples.png", broken) == tmp_path / "samples.png"
    assert "missing left out" in caplog.text  # a model that cannot load costs its row, never the report
    assert write_samples(tmp_path / "none.png", broken[1:]) is None and not (tmp_path / "none.png").exists()

