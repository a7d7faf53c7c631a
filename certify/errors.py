"""Why a run may stop for a reason outside it, and be resumed later; a library's error in one line of ours."""

from __future__ import annotations

import errno
import os
import re
import sys
from typing import Callable


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


def out_of_memory(exc: BaseException) -> str | None:
    """What ran out, in a few words, when ``exc`` says memory ran out (Python's MemoryError, torch's
    OutOfMemoryError on a device, the CPU allocator's RuntimeError); None for any other error. A front end
    answers it in one line instead of a traceback.

    >>> out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
    ...                            "allocate memory: you tried to allocate 313600000000 bytes. Error code 12"))
    'the CPU allocator could not find 313.6 GB'
    >>> out_of_memory(RuntimeError("shape mismatch")) is None
    True
    """
    text = str(exc)
    asked = re.search(r"tried to allocate ([\d.]+) ?(bytes|[KMGT]iB)", text, re.IGNORECASE)
    size = ""
    if asked:
        size = f"{int(asked[1]) / 1e9:.1f} GB" if asked[2] == "bytes" else f"{asked[1]} {asked[2]}"
    if isinstance(exc, RuntimeError) and "can't allocate memory" in text:
        return f"the CPU allocator could not find {size or 'the memory asked for'}"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
            isinstance(exc, RuntimeError) and "out of memory" in text.lower()):
        return f"the device could not find {size}" if size else one_line(exc)
    return None


def file_problem(exc: OSError) -> str:
    """What the file system refused, in one line a user can act on (a folder where a file is, a read-only or
    full disk, a missing permission).

    >>> file_problem(FileExistsError(errno.EEXIST, "File exists", "reports/r.tsv"))
    'reports/r.tsv is a file where a folder is needed (File exists)'
    """
    where = exc.filename if exc.filename is not None else "a file"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"{where} is a file where a folder is needed ({exc.strerror})"
    if exc.errno == errno.ENOSPC:
        return f"the disk is full (writing {where}); free some space and run the same command again"
    return f"cannot use {where}: {exc.strerror or exc}"


def run_command(name: str, call: Callable[[], int | None], verbose: bool = False,
                again: str = "the same command") -> int:
    """``call()``'s exit code, the errors a user can act on answered in one line prefixed by ``name``: bad input
    and the file system's refusals 2, out of memory 1, an outside stop (a remote API) 3, Ctrl-C 130 (``again``
    says what goes on from there). Everything else keeps its traceback (``verbose``: the file system's too).
    The recipes answer the same way.

    >>> run_command("demo", lambda: int("x"))   # says on stderr: demo: error: invalid literal for int() ...
    2
    """
    try:
        code = call()
    except BrokenPipeError:  # `dsmooth list ... | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ValueError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what was finished is on disk
        print(f"{name}: interrupted; what was finished is kept ({again} goes on from it)", file=sys.stderr)
        return 130
    except OSError as exc:  # the file system's refusal (a read-only or full disk, a file in a folder's place)
        if verbose or exc.errno is None:
            raise
        print(f"{name}: error: {file_problem(exc)}", file=sys.stderr)
        return 2
    except ResumableStop as exc:  # a remote API's budget or failure: say so, no traceback
        print(f"{name}: stopped: {exc}", file=sys.stderr)
        return 3
    except (MemoryError, RuntimeError) as exc:  # a batch (x votes) too large for the device: one line, resumable
        if (reason := out_of_memory(exc)) is None:
            raise
        print(f"{name}: out of memory ({reason}): each forward pass holds --batch noisy samples "
              f"(x --votes runs); the images written are kept: the same command resumes once memory is free, a "
              f"smaller --batch (or --batch auto, which probes what fits) needs a new --out", file=sys.stderr)
        return 1
    return code or 0
