"""Give memory the process has freed back to the system, where the C allocator kept it.

    memory.release_freed()      # after a phase that made and dropped many objects (a split tokenized in batches)

glibc keeps freed blocks in its heap for reuse, and after a large block is freed it raises its mmap threshold (up
to 32 MB), so later blocks of that size come from the heap too. A phase that allocates and drops many of them leaves
the process's resident memory at its high-water mark. Measured on 1,000,000 conversations (bench_tokenization.py):
3.23 GiB PSS after tokenize_split returned without it, 2.54-2.68 GiB with malloc_trim(0), which hands freed pages
back. Under tcmalloc (allocator.py) its own call does the same (MallocExtension_ReleaseFreeMemory). Elsewhere
this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


def release_freed() -> bool:
    """True if the allocator was asked to return free memory."""
    release = _tcmalloc_release()
    if release is not None:
        release()
        return True
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@cache
def _tcmalloc_release():
    try:  # the process's own symbols: there only when tcmalloc is loaded (preloaded by allocator.use_tcmalloc)
        return ctypes.CDLL(None).MallocExtension_ReleaseFreeMemory
    except (OSError, AttributeError):
        return None


@cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
