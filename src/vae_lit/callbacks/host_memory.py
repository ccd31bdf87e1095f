"""Keep freed host memory in the process while fitting, so a step's large tensors reuse it.

glibc's malloc serves an allocation above its mmap threshold (32 MB at most) with fresh pages from
the kernel and hands them back when it is freed. A CPU step at 150 px and batch 64 allocates and
frees maps of 46-184 MB, so every step paid a page fault per 4 KB page and the kernel's zeroing:
the decoder's 38 -> 75 upsampling took 41 ms, 4.9 ms when its output reused freed memory, and
training runs 8-11% faster with this (benchmarks/RESULTS.md). PyTorch's CPU allocator keeps no
cache; jemalloc or tcmalloc (what Intel recommends) need an LD_PRELOAD before Python starts. This
asks glibc, through `mallopt`, for the same: no mmap for large blocks, no trimming of the heap's
free top. The price: the process keeps its peak (1.50 -> 1.61 GB for a bare loop at that size)
until the fit ends, when glibc's defaults come back and the free memory goes back to the kernel
(`malloc_trim`). It does nothing off glibc (macOS, musl) or where the user tuned malloc already.
The evaluations (`vae_lit.evaluation`) keep memory the same way: `vae_lit.eval` of a 150 px
hierarchical VAE took 84 s instead of 157 s.
"""

import ctypes
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from pytorch_lightning import Callback, LightningModule, Trainer

# mallopt's parameters (malloc.h) and glibc's documented defaults
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
KEEP_ALL = 2**31 - 1  # mallopt takes an int: free memory at the heap's top up to 2 GB stays


# A user's own allocator settings win: glibc's malloc variables, or a preloaded allocator
USER_MALLOC_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")


def user_tuned_malloc() -> bool:
    return (
        any(name in os.environ for name in USER_MALLOC_SETTINGS)
        or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
        or "malloc" in os.environ.get("LD_PRELOAD", "")
    )


def glibc() -> ctypes.CDLL | None:
    """The running C library if it is glibc (whose mallopt takes these parameters), else None."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)


open_blocks = 0  # `freed_host_memory_kept` blocks open now: the outermost sets and restores


@contextmanager
def freed_host_memory_kept() -> Iterator[bool]:
    """Inside: freed blocks of any size stay in the process for the next allocation. Yields
    whether that took effect (False off glibc or with the user's malloc settings). Nests (an
    evaluation inside a fit); as a decorator it wraps each call (contextlib.ContextDecorator)."""
    global open_blocks
    libc = None if user_tuned_malloc() else glibc()
    outermost = open_blocks == 0
    open_blocks += 1
    if libc is not None and outermost:
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL)
    try:
        yield libc is not None
    finally:
        open_blocks -= 1
        if libc is not None and outermost:
            libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)


class KeepFreedHostMemory(Callback):
    """`freed_host_memory_kept` from setup to teardown (the whole fit, validation and test), or
    to the exception that ends it (Lightning then skips teardown)."""

    def __init__(self) -> None:
        self.kept: Iterator[bool] | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.kept is None:
            self.kept = freed_host_memory_kept()
            self.kept.__enter__()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.kept is not None:
            self.kept.__exit__(None, None, None)
            self.kept = None

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, error: BaseException):
        self.teardown(trainer, pl_module, "exception")
