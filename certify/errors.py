"""Why a run may stop for a reason outside it, and be resumed later; a library's error in one line of ours."""

from __future__ import annotations

import os
import re


class ResumableStop(RuntimeError):
    """The run stopped for an outside reason (an API's query budget, an API that keeps failing or asks to
    wait too long); the finished images are kept, so the same command resumes it later."""


#: What torch's refusal of a pickle names: the class or function the pickle would have called.
PICKLED_GLOBAL = re.compile(r"GLOBAL (\S+?)\.?(?:\s|$)")


def one_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception from a library, for a one-line error of our own; torch's
    page of advice on a pickle (load it with ``weights_only`` off) becomes what the file is.

    >>> one_line(OSError("no such file\\nand a page of advice"))
    'OSError: no such file'
    """
    text = str(exc).strip()
    if text.startswith("Weights only load failed"):
        named = PICKLED_GLOBAL.search(text)
        text = (f"a weights file is a pickle{f' (of {named.group(1)})' if named else ''}, which is never unpickled "
                f"here; save the weights as safetensors")
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def why_unreadable(exc: BaseException, path: str | os.PathLike) -> str:
    """Why ``torch.load(path, weights_only=True)`` failed, in our words: torch's own text for a pickle
    runs to a page that advises loading it with ``weights_only`` off; we never do, so we say how to
    convert the file instead.

    >>> why_unreadable(EOFError(), "w.pth")
    'w.pth is empty or cut short'
    """
    text = str(exc)
    named = PICKLED_GLOBAL.search(text)
    if named and "is blocked" in text:  # torch's list of modules no checkpoint needs (os, subprocess, ...)
        return (f"{path} is a pickle that would call {named.group(1)} when loaded: it is refused, and nothing here "
                f"unpickles it; do not load it anywhere unless you know why a weights file runs that")
    if isinstance(exc, EOFError):
        return f"{path} is empty or cut short"
    try:
        with open(path, "rb") as fh:
            plain_pickle = fh.read(1) == b"\x80"  # the PROTO opcode a pickle (protocol 2+) opens with
    except OSError:
        plain_pickle = False
    if named or plain_pickle:
        return (f"{path} is a pickle{f' (of {named.group(1)})' if named else ''}, not a state dict of tensors; "
                f"weights are loaded here without unpickling. Where you trust the file, convert it once: "
                f"torch.save(torch.load('{path}', weights_only=False).state_dict(), 'weights.pth') (for a dict, "
                f"keep only its tensors), or save the state dict as safetensors")
    reason = re.search(r"WeightsUnpickler error:\s*(\S.*?)(?:\n|$)", text, re.S)  # e.g. Unsupported operand 110
    return (f"{path} is not a weights file torch can read (damaged, cut short or another format?): "
            f"{reason.group(1)[:200] if reason else one_line(exc)}")
