"""What `accelerate launch` was asked for, so that a launch that silently runs one process is caught.

``accelerate launch --cpu --num_processes 2 script.py`` runs ONE process in Accelerate 1.x: its
simple launcher starts the script once (several CPU processes need torchrun, i.e. ``--multi_gpu``,
or MPI). Nothing in the child's environment says that two were asked for, so the launcher's own
command line (the parent process) is read.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from .errors import run_command

log = logging.getLogger(__name__)


def requested_processes(cmdline: list[str]) -> int | None:
    """The ``--num_processes`` of an ``accelerate launch`` command line, or None if it is not one.

    >>> requested_processes(["python", "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "a.py"])
    2
    >>> requested_processes(["accelerate", "launch", "--num-processes=4", "a.py"])
    4
    >>> requested_processes(["python", "a.py", "--num_processes", "2"]) is None
    True
    """
    text = " ".join(cmdline)
    if "accelerate" not in text or ("launch" not in text):
        return None
    for i, arg in enumerate(cmdline):
        for flag in ("--num_processes", "--num-processes"):
            if arg == flag and i + 1 < len(cmdline):
                value = cmdline[i + 1]
            elif arg.startswith(flag + "="):
                value = arg.split("=", 1)[1]
            else:
                continue
            return int(value) if value.isdigit() else None
    return None


def _parent_cmdline() -> list[str]:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:  # not Linux, or no permission: nothing to check
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def warn_if_launch_ran_one_process(world_size: int) -> int | None:
    """Warn when ``accelerate launch`` was asked for several processes but this one runs alone.

    Returns the number asked for (None when not launched that way). The run itself stays correct:
    results do not depend on the process count, only the speed does.
    """
    if world_size > 1 or "ACCELERATE_MIXED_PRECISION" not in os.environ:  # set by every accelerate launch
        return None
    asked = requested_processes(_parent_cmdline())
    if asked is not None and asked > 1:
        log.warning("accelerate launch asked for %d processes but started only this one: Accelerate's --cpu "
                    "launcher runs a single process. For %d CPU processes use `accelerate launch --multi_gpu "
                    "--num_processes %d ...` (torchrun; the project then uses gloo on the CPU)", asked, asked, asked)
    return asked


def add_training_args(parser) -> None:
    """The options every training entry point takes (``dsmooth train-denoiser``, ``recipes/train_*.py``)."""
    parser.add_argument("--config", required=True, help="YAML training config (see recipes/configs/)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the output folder from its last finished epoch")
    parser.add_argument("--output-dir", default=None,
                        help="run folder: checkpoint, training state and log (default: the config's "
                             "output_dir, else runs/<config name>); never inside the package or a shipped model")
    parser.add_argument("--export-dir", default=None,
                        help="also write a shippable fp16 copy here at the end, without training state (e.g. "
                             "denoisers/pretrained/NAME to refresh a shipped model on purpose)")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's number of epochs")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many optimizer steps in all (quick runs)")


def training_overrides(args) -> dict:
    """The command-line overrides of :func:`add_training_args` (None where not given)."""
    return {"output_dir": args.output_dir, "export_dir": args.export_dir, "epochs": args.epochs,
            "max_steps": args.max_steps}


def training_main(train, description: str) -> None:
    """The whole of a training recipe: parse the training options, log to the console, call ``train``."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    add_training_args(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    name = Path(sys.argv[0]).name
    sys.exit(run_command(name, lambda: print(train(args.config, resume=args.resume, overrides=training_overrides(args))),
                         again="the same command with --resume"))
