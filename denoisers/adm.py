"""The ``adm`` denoiser: OpenAI's own diffusion checkpoints (guided-diffusion, improved-diffusion) as one-shot denoisers.

Every diffusion-denoised-smoothing paper (Carlini et al. 2023, DensePure, DiffSmooth) denoises with
two raw PyTorch state dicts that exist in no diffusers format: guided-diffusion's ImageNet
``256x256_diffusion_uncond.pt`` and improved-diffusion's CIFAR-10 ``cifar10_uncond_50M_500K.pt``. The
model is built by the published code (the ``guided_diffusion`` package, extra ``adm``); the denoising
rule is `denoisers.diffusion`'s. improved-diffusion's UNet has exactly guided-diffusion's keys with
``resblock_updown=False``, ``num_head_channels=-1`` and the legacy attention order (the preset's flags).

Specs: ``adm:PATH.pt``; ``adm:imagenet256-uncond`` / ``adm:cifar10-uncond`` (downloaded once from
OpenAI into torch's hub cache); ``adm:https://.../FILE.pt``; ``adm:OWNER/REPO/FILE.pt`` (a file in a
Hugging Face Hub repo). Options: guided-diffusion's flag names (``image_size``, ``num_channels``,
``learn_sigma``, ``noise_schedule``, ``diffusion_steps``, ``rescale_timesteps``, ...), ``preset=`` one of
`PRESETS` (inferred from the official file names), and the rule's ``timestep_rule``, ``num_steps``,
``eta``, ``resize``. ``use_fp16=True`` runs the UNet in fp16 through the model's own conversion;
the noise and the x_t / x0 arithmetic stay fp32.

>>> adm_flags("cifar10-uncond")["diffusion_steps"], adm_flags("imagenet256-uncond")["channel_mult"]
(4000, '1,1,2,2,4,4')
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from certify.checkpoint import build_checked, build_loaded, one_line, read_weights
from certify.registry import refuse_unknown_options

from . import register_denoiser
from .diffusion import RULE_OPTIONS, VPDenoiser  # the rule's options; everything else is a guided-diffusion flag

log = logging.getLogger(__name__)

#: The published flags of the field's two checkpoints (guided-diffusion's names).
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet256-uncond": dict(  # guided-diffusion 256x256_diffusion_uncond.pt (Dhariwal & Nichol 2021)
        image_size=256, num_channels=256, channel_mult="1,1,2,2,4,4", num_res_blocks=2,
        attention_resolutions="32,16,8", num_heads=4, num_head_channels=64, resblock_updown=True,
        use_scale_shift_norm=True, learn_sigma=True, class_cond=False, noise_schedule="linear",
        diffusion_steps=1000, rescale_timesteps=False, use_new_attention_order=False),
    "cifar10-uncond": dict(  # improved-diffusion cifar10_uncond_50M_500K.pt (Nichol & Dhariwal 2021, L_hybrid)
        image_size=32, num_channels=128, channel_mult="1,2,2,2", num_res_blocks=3, attention_resolutions="16,8",
        num_heads=4, num_head_channels=-1, resblock_updown=False, use_scale_shift_norm=True, learn_sigma=True,
        dropout=0.3, class_cond=False, noise_schedule="cosine", diffusion_steps=4000, rescale_timesteps=True,
        use_new_attention_order=False),
}
#: Where OpenAI publishes them.
OFFICIAL_URLS = {
    "imagenet256-uncond": "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",
    "cifar10-uncond": "https://openaipublic.blob.core.windows.net/diffusion/march-2021/cifar10_uncond_50M_500K.pt",
}
_PRESET_OF_FILE = {url.rsplit("/", 1)[1]: name for name, url in OFFICIAL_URLS.items()}
#: guided-diffusion holds its schedule in about 20 float64 arrays and Python lists of this length (measured:
#: 420 bytes and 20 us per step), built before any weight: 100,000 steps is 40 MiB and 2 s, 10**8 would be 42 GB.
MAX_DIFFUSION_STEPS = 100_000


def _guided_diffusion():
    """``guided_diffusion.script_util``, with its torch deprecation warnings silenced."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from guided_diffusion import script_util
    except ImportError as exc:
        raise ValueError("denoiser 'adm' needs the guided-diffusion package: pip install 'denoised-smoothing[adm]' "
                         f"(guided-diffusion-sdk and blobfile) ({one_line(exc)})") from None
    return script_util


def adm_flags(preset: str | None = None, **flags: Any) -> dict[str, Any]:
    """guided-diffusion's ``model_and_diffusion_defaults()``, then the preset, then ``flags``; checked.

    >>> adm_flags(image_size=32, channel_mult=[1, 2])["channel_mult"]
    '1,2'
    """
    defaults = _guided_diffusion().model_and_diffusion_defaults()
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown adm preset {preset!r}; expected one of {', '.join(PRESETS)}")
    refuse_unknown_options(flags, [*defaults, *RULE_OPTIONS, "preset"], "denoiser 'adm'")
    merged = {**defaults, **PRESETS.get(preset or "", {}), **flags}
    for key in ("channel_mult", "attention_resolutions"):  # the flags are comma-separated strings
        if isinstance(merged[key], (list, tuple)):
            merged[key] = ",".join(str(v) for v in merged[key])
        elif isinstance(merged[key], int):
            merged[key] = str(merged[key])
    steps = merged["diffusion_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_DIFFUSION_STEPS:
        raise ValueError(f"diffusion_steps must be an integer from 1 to {MAX_DIFFUSION_STEPS:,} (the published "
                         f"checkpoints use 1000 and 4000), got {steps!r}")
    if merged["timestep_respacing"]:
        raise ValueError(f"timestep_respacing={merged['timestep_respacing']!r}: one-shot denoising uses the full "
                         f"schedule (t* is chosen from it); for a multi-step chain use num_steps")
    if merged["class_cond"]:
        raise ValueError("class_cond=True: a class-conditional model needs the class it should denoise towards, "
                         "which smoothing does not know; use an unconditional checkpoint")
    return merged


def _weights_file(identifier: str) -> Path:
    """The local state-dict file a spec names, downloading (once, cached) what is remote."""
    path = Path(identifier).expanduser()
    if path.is_dir():
        raise ValueError(f"adm:{identifier} is a folder; adm takes a state-dict file (.pt). A diffusers folder "
                         f"(unet/ + scheduler/) is a ddpm: denoiser")
    if path.is_file():
        return path
    url = OFFICIAL_URLS.get(identifier, identifier)
    if url.startswith(("https://", "http://")):
        import torch.hub

        target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
        if not target.is_file():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(url, str(target))  # to a temporary name, then moved
            except Exception as exc:
                raise ValueError(f"cannot download {url} ({one_line(exc)}); download it yourself and pass "
                                 f"adm:PATH") from None
        return target
    parts = identifier.split("/")
    if len(parts) >= 3 and not identifier.startswith((".", "/", "~")):
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
        except Exception as exc:
            raise ValueError(f"adm:{identifier} is not a local file, and the hub file {'/'.join(parts[2:])} of "
                             f"the repo {'/'.join(parts[:2])} cannot be fetched ({one_line(exc)})") from None
    raise ValueError(f"adm:{identifier} is not a file; expected adm:PATH.pt, adm:{' / adm:'.join(OFFICIAL_URLS)}, "
                     f"adm:https://.../FILE.pt or adm:OWNER/REPO/FILE.pt on the Hugging Face Hub")


class ADMDenoiser(VPDenoiser):
    """An ADM UNet (guided-/improved-diffusion) and its ``GaussianDiffusion`` under the one diffusion rule.

    The model is called as published: ``model(x_t, t)`` with t rescaled to 0..1000 when the
    checkpoint was trained with ``rescale_timesteps``; a learned variance's first half is eps.
    """

    def __init__(self, model: nn.Module, diffusion: Any, flags: dict[str, Any], name: str = "",
                 **options: Any) -> None:
        mean_type = diffusion.model_mean_type.name
        if mean_type not in ("EPSILON", "START_X"):
            raise ValueError(f"adm models predicting {mean_type} are not supported (epsilon or x0 only)")
        steps = int(flags["diffusion_steps"])
        super().__init__(
            model, diffusion.alphas_cumprod, prediction_type="epsilon" if mean_type == "EPSILON" else "sample",
            learned_variance=diffusion.model_var_type.name in ("LEARNED", "LEARNED_RANGE"),
            timestep_scale=1000.0 / steps if flags["rescale_timesteps"] else 1.0,
            sample_size=int(flags["image_size"]), in_channels=model.in_channels, name=name, **options)
        self.flags = dict(flags)


def adm_builder(flags: dict[str, Any], source: str) -> tuple[Callable[[], nn.Module], dict[str, Any]]:
    """A function calling guided-diffusion's ``create_model_and_diffusion(**flags)`` (its failures one line
    naming ``source``), which returns the UNet and keeps the diffusion in the dict returned beside it."""
    script_util = _guided_diffusion()
    made: dict[str, Any] = {}

    def build() -> nn.Module:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                made["model"], made["diffusion"] = script_util.create_model_and_diffusion(**flags)
        except (AssertionError, TypeError, ValueError, RuntimeError, NotImplementedError, KeyError,
                ZeroDivisionError) as exc:
            raise ValueError(f"guided-diffusion cannot build a UNet from {source} ({one_line(exc)})") from None
        return made["model"]

    return build, made


def build_adm(flags: dict[str, Any], source: str = "the adm flags") -> tuple[nn.Module, Any]:
    """A fresh UNet and its diffusion, the size checked first on the meta device."""
    build, made = adm_builder(flags, source)
    return build_checked(build, source), made["diffusion"]


@register_denoiser("adm", summary="adm:<file.pt | imagenet256-uncond | cifar10-uncond>: OpenAI's guided-/improved-"
                                  "diffusion checkpoints, one-shot (Carlini et al. 2023)")
def create_adm(identifier: str | None = None, preset: str | None = None, **kwargs: Any) -> ADMDenoiser:
    """Read a checkpoint, then build the ADM it was trained as (preset and/or flags) holding its weights,
    wrapped in the rule; the UNet is built for real only once the file has been read and matched."""
    if identifier is None:
        raise ValueError(f"denoiser 'adm' needs a checkpoint: adm:PATH.pt, adm:{' / adm:'.join(OFFICIAL_URLS)} "
                         f"(downloaded from OpenAI), adm:URL or adm:OWNER/REPO/FILE.pt")
    options = {k: kwargs.pop(k) for k in RULE_OPTIONS if k in kwargs}
    if preset is None and (identifier in PRESETS or Path(identifier).name in _PRESET_OF_FILE):
        preset = identifier if identifier in PRESETS else _PRESET_OF_FILE[Path(identifier).name]
        log.info("adm:%s: using preset %s", identifier, preset)
    flags = adm_flags(preset, **kwargs)
    path = _weights_file(identifier)
    state = read_weights(path)  # first: a damaged file is refused before any UNet is built
    build, made = adm_builder(flags, f"adm:{identifier}")
    model = build_loaded(build, state, f"the weights in {path}",
                         f"the ADM UNet of {f'preset {preset}' if preset else 'these flags'}",
                         hint=f"Give the flags the checkpoint was trained with (preset={' or preset='.join(PRESETS)}, "
                              f"or image_size, num_channels, learn_sigma, ...)", described_by=f"adm:{identifier}")
    del state  # the model holds these tensors now (fp16 conversion below frees the fp32 ones)
    if flags["use_fp16"]:
        model.convert_to_fp16()
    use_fused_attention(model)
    return ADMDenoiser(model.eval(), made["diffusion"], flags, name=preset or path.stem, **options)


def check_adm(identifier: str | None = None, **_: Any) -> list[str]:
    """Preflight: the guided-diffusion package and the weights file (local, in torch's hub cache or on the
    Hugging Face Hub), without downloading or building anything."""
    from certify.libraries import hub_problems, missing_package, url_problems

    problems = missing_package("guided_diffusion", "pip install 'denoised-smoothing[adm]'")
    if identifier is None:
        return problems + [f"denoiser 'adm' needs a checkpoint: adm:PATH.pt or adm:{' / adm:'.join(OFFICIAL_URLS)}"]
    path, url, parts = Path(identifier).expanduser(), OFFICIAL_URLS.get(identifier, identifier), identifier.split("/")
    if path.is_dir():
        problems.append("a folder; adm takes a state-dict file (.pt); a diffusers folder is a ddpm: denoiser")
    elif path.is_file():
        pass
    elif url.startswith(("https://", "http://")):
        problems += url_problems(url, f"download {url} and write adm:/path/to/{url.rsplit('/', 1)[-1]}")
    elif len(parts) >= 3 and not identifier.startswith((".", "/", "~")):
        problems += hub_problems("/".join(parts[:2]), ("/".join(parts[2:]),), "the weights file",
                                 "download it and write adm:/path/to/FILE.pt, or set HF_HOME to a cache that has it")
    else:
        problems.append(f"no such file; expected adm:PATH.pt, adm:{' / adm:'.join(OFFICIAL_URLS)}, "
                        f"adm:https://.../FILE.pt or adm:OWNER/REPO/FILE.pt")
    return problems


create_adm.check = check_adm  # the registry's preflight check


class FusedQKVAttention(nn.Module):
    """guided-diffusion's ``QKVAttention`` (``legacy=False``) or ``QKVAttentionLegacy`` through torch's
    ``scaled_dot_product_attention`` (flash / memory-efficient kernels on a GPU) instead of two einsums and
    a materialised T x T softmax: the same heads, the same 1 / sqrt(ch) scale, [N x (3 H C) x T] -> [N x (H C) x T].

    >>> FusedQKVAttention(n_heads=2, legacy=True)(torch.randn(1, 3 * 2 * 8, 10)).shape
    torch.Size([1, 16, 10])
    """

    def __init__(self, n_heads: int, legacy: bool) -> None:
        super().__init__()
        self.n_heads, self.legacy = n_heads, legacy

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        bs, width, length = qkv.shape
        ch = width // (3 * self.n_heads)
        if self.legacy:  # heads first, then q, k, v within each head
            q, k, v = qkv.reshape(bs, self.n_heads, 3 * ch, length).split(ch, dim=2)
        else:  # q, k, v first, then heads
            q, k, v = qkv.reshape(bs, 3, self.n_heads, ch, length).unbind(1)
        a = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return a.transpose(-1, -2).reshape(bs, -1, length)


def use_fused_attention(model: nn.Module) -> nn.Module:
    """Swap every guided-diffusion attention computation in ``model`` for `FusedQKVAttention` (no weights change)."""
    from guided_diffusion.unet import QKVAttention, QKVAttentionLegacy

    for block in list(model.modules()):
        attention = getattr(block, "attention", None)
        if type(attention) in (QKVAttention, QKVAttentionLegacy):
            block.attention = FusedQKVAttention(attention.n_heads, legacy=type(attention) is QKVAttentionLegacy)
    return model
