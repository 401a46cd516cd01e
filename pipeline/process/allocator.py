"""Stage processes run on tcmalloc where the system has it (Debian/Ubuntu: apt install libtcmalloc-minimal4).

    allocator.use_tcmalloc()     # first thing in `python -m pipeline`: re-executes the process with it preloaded
    allocator.active()           # "tcmalloc" or "system": what this process allocates with (benchmarks record it)

Why: glibc's malloc is slow and fragments under what the stages do, many short-lived buffers from several threads
(the Rust tokenizer's encodings, each training step's activations and gradients). Measured on a 2-core Xeon
(benchmarks/bench_tokenization.py, bench_training.py, glibc vs tcmalloc): 1,000,000 conversations tokenized and
packed in 64.3 s -> 51-54 s; a packed training step 1.23 s -> 0.90 s at 3.68 -> 3.34 GB peak RSS. PyTorch's
own CPU launcher (torch.backends.xeon.run_cpu --enable_tcmalloc) preloads it for the same reason; this does it for
every Airflow task and container entrypoint, since they all start as `python -m pipeline`.

An allocator can only be chosen before the process starts, hence the re-exec (same pid, same arguments). Without
the library, or off Linux, or with CHAT_RETRAIN_ALLOCATOR=system, nothing changes.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

CHOICE = "CHAT_RETRAIN_ALLOCATOR"  # auto (default): tcmalloc if present | system: the C library's malloc
_REEXECUTED = "_CHAT_RETRAIN_ALLOCATOR_REEXEC"  # set on the re-executed process: never a second time
LIBRARIES = ("tcmalloc_minimal", "tcmalloc")


def use_tcmalloc() -> None:
    """Re-execute this process with tcmalloc preloaded; returns where there is nothing to do."""
    choice = os.environ.get(CHOICE, "auto")
    if choice not in ("auto", "system"):
        raise SystemExit(f"{CHOICE}={choice!r}: expected 'auto' (tcmalloc where installed) or 'system'")
    if choice == "system" or sys.platform != "linux" or os.environ.get(_REEXECUTED) or active() == "tcmalloc":
        return
    library = find()
    if library is None:
        return
    preload = " ".join(filter(None, (library, os.environ.get("LD_PRELOAD"))))
    # tcmalloc reports every allocation over 1 GiB on stderr; a split of a million conversations makes several.
    # Arrow's buffers through it too (its default is a bundled mimalloc that keeps freed pages): one allocator, and
    # 0.2-0.3 GB lower peaks packing a million conversations.
    env = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40), "ARROW_DEFAULT_MEMORY_POOL": "system",
           **os.environ, "LD_PRELOAD": preload, _REEXECUTED: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def find() -> str | None:
    """The library's name as the dynamic loader finds it (ldconfig's cache), or None."""
    for name in LIBRARIES:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def active() -> str:
    maps = Path("/proc/self/maps")
    if maps.exists() and "libtcmalloc" in maps.read_text():
        return "tcmalloc"
    return "system"
