"""What the tests share: throwaway networks, toy pipelines and runs, tiny models, files on disk, processes.

A stub that only one test needs stays in that test. The exact references written from the papers'
definitions (the band oracle, the scripted classifier, Clopper-Pearson, the confidence sequence, first
passages of a binomial walk) are in `oracles.py`: nothing there calls the code it checks. A vision API
server with fault injection is in `remote_server.py`. Session fixtures built from these (a saved
small-cnn) are in `conftest.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
#: the ``dsmooth`` command in a fresh interpreter
DSMOOTH = [sys.executable, "-m", "certify.cli"]


# ------------------------------------------------------------------------------------------------
# throwaway networks


class LinearTwoClass(nn.Module):
    """f(x) = class 1 iff w.x + b > 0, as logits -+k (w.x + b): its smoothed classifier is the same half-space,
    so an image's distance to g's boundary is |w.x + b| / ||w|| exactly (Cohen et al.)."""

    num_classes = 2

    def __init__(self, w: torch.Tensor, b: float, k: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("w", w.flatten().float())
        self.b, self.k = float(b), k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.k * (x.flatten(1) @ self.w + self.b)
        return torch.stack([-z, z], dim=1)

    def distance(self, x: torch.Tensor) -> float:
        return abs(float(x.flatten() @ self.w) + self.b) / float(self.w.norm())


def linear_at_distance(distance: float, w=(0.6, -0.8, 0.0, 0.0)) -> tuple[LinearTwoClass, torch.Tensor]:
    """`LinearTwoClass` with weights ``w`` and a 1 x 2 x 2 grey image at exactly ``distance`` from its boundary
    (on the class-1 side when positive)."""
    w = torch.tensor(w)
    x = torch.full((1, 2, 2), 0.5)
    return LinearTwoClass(w, distance * float(w.norm()) - float(x.flatten() @ w)), x


class NaNAfter(nn.Module):
    """Logits that turn NaN once ``after`` images have been classified (a network that breaks mid-run)."""

    def __init__(self, after: int = 0, num_classes: int = 3) -> None:
        super().__init__()
        self.after, self.seen, self.num_classes = after, 0, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.flatten(1)[:, :1] * torch.arange(self.num_classes)
        start, self.seen = self.seen, self.seen + len(x)
        rows = torch.arange(start, start + len(x)) >= self.after
        return torch.where(rows[:, None], torch.full_like(out, float("nan")), out)


class Constant(nn.Module):
    """Logits with ``columns`` columns that always pick class ``cls``."""

    def __init__(self, columns: int, cls: int) -> None:
        super().__init__()
        self.columns, self.cls = columns, cls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((len(x),), self.cls), self.columns).float() * 10 + 0 * x.flatten(1)[:, :1]


class Recording(nn.Module):
    """Remembers every batch it is given (``seen``), then answers as ``inner`` does, or with zero logits."""

    def __init__(self, inner: nn.Module | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        self.inner, self.seen = inner, []
        if num_classes is not None:
            self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.inner(x) if self.inner is not None else torch.zeros(len(x), self.num_classes)


class MemoryBound(nn.Module):
    """A classifier that runs out of memory above ``capacity`` images per batch; ``probed``: the sizes it got."""

    num_classes = 2

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity, self.probed = capacity, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.probed.append(len(x))
        if len(x) > self.capacity:
            raise torch.OutOfMemoryError(f"{len(x)} images do not fit")
        return torch.zeros(len(x), 2)


class ConstantDenoiser(nn.Module):
    """A denoiser that returns ``value`` everywhere (black for 0; NaN weights, or a plugin that forgot to clamp)
    and records the sigmas it is called with."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value, self.sigmas = value, []

    def forward(self, noisy: torch.Tensor, sigma: float) -> torch.Tensor:
        self.sigmas.append(sigma)
        return torch.full_like(noisy, self.value)


def tiny_unet(classes: int | None = None, seed: int = 0):
    """The ImageNet-64 consistency models' block types (resnet down/upsampling, attention, scale-shift), tiny."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"), attention_head_dim=4,
                       norm_num_groups=4, resnet_time_scale_shift="scale_shift", downsample_type="resnet",
                       upsample_type="resnet", num_class_embeds=classes).eval()


def random_adm(flags: dict, path: Path, seed: int = 0):
    """A guided-diffusion model with random weights (its output conv starts at zero), saved as a state dict."""
    from denoisers.adm import adm_flags, build_adm

    model, diffusion = build_adm(adm_flags(**flags))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    torch.save(model.state_dict(), path)
    return model.eval(), diffusion


# ------------------------------------------------------------------------------------------------
# toy pipelines and runs


def toy_pipeline(num_classes: int = 2, pixels: int | None = 4, seed: int | None = 0, sigma: float = 0.25):
    """f = a linear layer on the flattened image (lazy where ``pixels`` is None), smoothed at ``sigma``."""
    from certify.smoothing import Smoothed

    if seed is not None:
        torch.manual_seed(seed)
    layer = nn.LazyLinear(num_classes) if pixels is None else nn.Linear(pixels, num_classes)
    return Smoothed(nn.Sequential(nn.Flatten(), layer), sigma=sigma, num_classes=num_classes)


def toy_images(count: int = 6, label: int = 0) -> list[tuple[torch.Tensor, int]]:
    """``count`` 1 x 2 x 2 images, each a shade brighter than the one before."""
    return [(torch.full((1, 2, 2), 0.1 * (i + 1)), label) for i in range(count)]


def toy_settings(**overrides):
    from certify.settings import RunSettings

    return RunSettings(**{"classifier": "toy", "dataset": "toy", "sigma": 0.25, "n0": 10, "n": 50, "batch": 25,
                          **overrides})


def toy_run(n_images: int = 6, label: int = 0):
    """(`toy_pipeline`, `toy_images`, `toy_settings`): a run of two classes on tiny images, in a second."""
    return toy_pipeline(), toy_images(n_images, label), toy_settings()


def result_lines(path: Path) -> list[list[str]]:
    """A result file's lines (the header first), split into cells."""
    return [line.split("\t") for line in Path(path).read_text().splitlines()]


def digits_args(cnn_dir: Path, out: Path, **over) -> list[str]:
    """`dsmooth certify` of a saved small-cnn on digits 0, 3, ..., 57 of digits:test; ``over`` replaces flags."""
    base = dict(classifier=f"small-cnn:{cnn_dir}", dataset="digits:test", sigma="0.5", n0="10", n="300",
                alpha="0.001", batch="100", skip="3", max="60", seed="7", out=str(out))
    base.update(over)
    args = ["certify"]
    for k, v in base.items():
        args += [f"--{k}", str(v)]
    return args + ["--quiet"]


def table_without_time(path: Path) -> list[list[str]]:
    """A result file's lines split into cells, the time column (the sixth) left out."""
    return [line.split("\t")[:5] + line.split("\t")[6:] for line in Path(path).read_text().splitlines()]


#: torch's own advice on a pickle (to load it with weights_only off, or allowlist its globals): never in our messages.
TORCH_ADVICE = ("Weights only load failed", "Re-running", "In PyTorch 2.6", "arbitrary code", "safe_globals",
                "allowlist", "allowed global", "two options", "\x1b", "\n")

COHEN_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


def cohen_file(path: Path, radii: list[float], first_idx: int = 0, manifest: dict | None = None) -> Path:
    """A result file in Cohen's six columns, every image correct at the given radius; a manifest if given."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(COHEN_HEADER + "".join(f"{first_idx + i}\t1\t1\t{r}\t1\t0.1\n" for i, r in enumerate(radii)))
    if manifest is not None:
        path.with_suffix(".json").write_text(json.dumps(manifest))
    return path


# ------------------------------------------------------------------------------------------------
# files on disk


def image_folder(root: Path, names, per_class: int = 2, size: int = 8) -> Path:
    """root/<name>/<j>.png: ``per_class`` random grey images per class folder."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in names:
        (root / str(name)).mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(root / str(name) / f"{j}.png")
    return root


def images_at(root: Path, files: Sequence[str]) -> Path:
    """root/<file> for each relative path in ``files``: 4 x 4 grey images, the k-th of value 10 k."""
    from PIL import Image

    for k, f in enumerate(files):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4), 10 * k, np.uint8)).save(root / f)
    return root


def colour_folder(root: Path, colours: Sequence[tuple[str, tuple[int, int, int]]]) -> Path:
    """root/<name>/<i>.png: one 12 x 12 image per class, of about the given RGB colour (what the fake API sees)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, (name, colour) in enumerate(colours):
        (root / name).mkdir(parents=True)
        arr = np.clip(np.array(colour) + rng.integers(-10, 10, (12, 12, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


def fake_distribution(root: Path, name: str, version: str, entry_points: str = "") -> Path:
    """An installed distribution ``name`` under ``root`` (put ``root`` on sys.path), with entry_points.txt text."""
    dist = root / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    if entry_points:
        (dist / "entry_points.txt").write_text(entry_points)
    return dist


def small_cnn_dir(path: Path, **sizes) -> Path:
    """A seeded small-cnn (width 8 unless said) saved to ``path``."""
    from classifiers.small_cnn import SmallCNN

    torch.manual_seed(0)
    SmallCNN(**{"width": 8, **sizes}).save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------------
# processes: the CLI and the trainers in subprocesses, robustly on a slow, busy or GPU machine

#: `accelerate launch` with two processes through torchrun (`launch_env` picks the port).
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def launch_env(**extra: str) -> dict[str, str]:
    """The environment for `ACCELERATE` (and any subprocess): one thread per process, torchrun standalone.

    PET_STANDALONE=1 is torchrun's --standalone (its options read PET_* variables; accelerate runs torchrun in
    its own process): the rendezvous store binds port 0, so the kernel gives it a free port as it binds and
    the workers get that port from the store. A fixed port collides with a concurrent run of the suite, and a
    port found free and released again (accelerate's own "--main_process_port 0") can be taken before
    torchrun binds it; here no port is chosen before the bind.
    """
    return {**os.environ, "OMP_NUM_THREADS": "1", "PET_STANDALONE": "1", **extra}


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # the group has exited
        pass


def kill_part_way(cmd: Sequence[str], written: Callable[[], int], at_least: int = 4, env=None,
                  hang_guard_s: float = 600.0, slice_s: float = 0.02) -> int:
    """Start ``cmd`` in a process group, SIGKILL the group once ``written()`` >= at_least; return ``written()`` then.

    The group runs in slices (SIGCONT, ``slice_s``, SIGSTOP) and is looked at while stopped, so it cannot
    write on between the look and the kill however busy the machine: a kill lands a few lines after
    ``at_least`` even where a run is fast and the test is slow to look. ``hang_guard_s`` only ends a run that
    never gets there (then fewer than ``at_least`` lines are returned).
    """
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + hang_guard_s
    try:
        while written() < at_least and proc.poll() is None and time.monotonic() < deadline:
            _signal_group(proc.pid, signal.SIGCONT)
            time.sleep(slice_s)
            _signal_group(proc.pid, signal.SIGSTOP)
        return written()
    finally:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
