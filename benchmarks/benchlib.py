"""What every benchmark shares: writing its JSON result and saying where it was measured.

The benchmarks import this as ``benchlib`` (their own folder is on the path when run as scripts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from certify.results import write_atomic


def write_json(path: str | os.PathLike, data: dict[str, Any], echo: bool = False) -> Path:
    """``data`` as indented JSON at ``path`` (folders made, written atomically); ``echo`` prints it too.

    >>> import tempfile
    >>> write_json(tempfile.mkdtemp() + "/r/x.json", {"a": 1}).read_text()
    '{\\n  "a": 1\\n}\\n'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2) + "\n"
    write_atomic(path, text)
    if echo:
        print(text, end="")
    return path


def machine_info(device: Any = "cpu") -> dict[str, Any]:
    """Where a measurement ran: CPU, cores, torch threads and version, the device (and its GPU's name)."""
    import platform

    import torch

    device = torch.device(device)
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
