"""The host-memory callback keeps freed memory for the next step while fitting (and evaluations
do while they run), and only then: counted in page faults (each fresh page the kernel hands out
is one) and in resident memory."""

import ctypes
import resource
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config
from hydra.utils import instantiate
from pytorch_lightning import Callback
from torch.nn.modules.module import register_module_forward_hook

from vae_lit.callbacks.host_memory import KeepFreedHostMemory, freed_host_memory_kept, glibc
from vae_lit.eval import evaluate
from vae_lit.runs.trainer import build_trainer, instantiate_group

pytestmark = pytest.mark.skipif(
    glibc() is None or not hasattr(glibc(), "mallinfo2"),
    reason="the callback tunes glibc's malloc only; the tests read glibc >= 2.33's mallinfo2",
)

MEGABYTES = 256
PAGES = MEGABYTES * 2**20 // 4096


MALLINFO2 = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in MALLINFO2.split()]


def free_heap_bytes() -> int:
    """Bytes of freed blocks malloc holds (glibc >= 2.33): no allocation above it fits in one."""
    libc = glibc()
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().fordblks


def fewest_faults_of_an_allocation(megabytes: int = MEGABYTES, repeats: int = 6) -> int:
    """The fewest page faults of allocating, filling and freeing a tensor, over `repeats` tries:
    about one per 4 KB page for a try that gets fresh pages (at least one per 2 MB with
    transparent huge pages), ~0 for one that reuses freed memory. With freed memory kept, a try
    reuses the ones before it (the heap's layout can take a few tries to settle around other live
    blocks, as a run's first steps do)."""
    faults = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(megabytes * 2**20 // 4)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(faults)


def faults_beyond_free_memory() -> int:
    """`fewest_faults_of_an_allocation` of a block larger than all the freed memory malloc holds,
    which no freed block can serve: with glibc's defaults each try is mmapped afresh and unmapped
    when freed (the tries do not grow the heap)."""
    return fewest_faults_of_an_allocation(free_heap_bytes() // 2**20 + MEGABYTES, repeats=2)


def resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def test_freed_memory_is_reused_inside_and_handed_back_after():
    assert faults_beyond_free_memory() >= PAGES / 512  # glibc's default: fresh pages
    with freed_host_memory_kept() as kept:
        assert kept
        assert fewest_faults_of_an_allocation() < PAGES / 1024
        kept_mb = resident_mb()
    assert faults_beyond_free_memory() >= PAGES / 512
    assert resident_mb() < kept_mb - MEGABYTES / 2  # malloc_trim gave the kept block back


def test_an_inner_block_leaves_the_outer_one_keeping():
    with freed_host_memory_kept():
        with freed_host_memory_kept() as inner:  # e.g. an evaluation inside a fit
            assert inner
        assert fewest_faults_of_an_allocation() < PAGES / 1024
    assert faults_beyond_free_memory() >= PAGES / 512


def test_an_evaluation_keeps_memory_while_it_runs(tiny_run, tmp_path: Path):
    ckpt, _ = tiny_run
    faults: list[int] = []

    def probe(module, args, output) -> None:  # at the first forward pass of any module
        if not faults:
            faults.append(fewest_faults_of_an_allocation())

    overrides = [f"ckpt={ckpt}", "eval.k=2", "eval.samplers=[]", "eval.log_to_run=false"]
    cfg = compose_config(tmp_path, [*overrides, f"eval.json={tmp_path / 'eval.json'}"], "eval")
    handle = register_module_forward_hook(probe)
    try:
        evaluate(cfg)
    finally:
        handle.remove()
    assert faults[0] < PAGES / 1024
    assert faults_beyond_free_memory() >= PAGES / 512


class FaultProbe(Callback):
    """After each training batch: `measure()`'s page faults; `fail_at`: raise after that batch."""

    def __init__(self, measure=fewest_faults_of_an_allocation, fail_at: int | None = None):
        self.measure, self.fail_at = measure, fail_at
        self.faults: list[int] = []

    def on_train_batch_end(self, *args) -> None:
        self.faults.append(self.measure())
        if len(self.faults) == self.fail_at:
            raise RuntimeError("the run dies here")


def test_the_default_callbacks_keep_memory_while_fitting_and_the_switch_turns_it_off(
    tmp_path: Path,
):
    for overrides, keeps in ((TINY, True), (TINY + ["~callbacks.host_memory"], False)):
        cfg = compose_config(tmp_path / str(keeps), overrides)
        callbacks = instantiate_group(cfg.callbacks)
        assert any(isinstance(c, KeepFreedHostMemory) for c in callbacks) == keeps
        probe = FaultProbe(fewest_faults_of_an_allocation if keeps else faults_beyond_free_memory)
        trainer_cfg = cfg.trainer.copy()
        trainer_cfg.limit_train_batches, trainer_cfg.limit_val_batches = 2, 1
        trainer = build_trainer(trainer_cfg, callbacks=[*callbacks, probe], logger=False)
        trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
        assert len(probe.faults) == 2
        if keeps:
            assert min(probe.faults) < PAGES / 1024, probe.faults
        else:
            assert min(probe.faults) >= PAGES / 512, probe.faults
        assert faults_beyond_free_memory() >= PAGES / 512  # the defaults are back after fit


def test_a_fit_that_dies_gives_the_memory_back(tmp_path: Path):
    cfg = compose_config(tmp_path, TINY)
    probe = FaultProbe(fail_at=2)
    trainer = build_trainer(cfg.trainer, callbacks=[KeepFreedHostMemory(), probe], logger=False)
    with pytest.raises(RuntimeError, match="the run dies here"):
        trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
    assert min(probe.faults) < PAGES / 1024
    assert faults_beyond_free_memory() >= PAGES / 512


def test_the_users_own_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    with freed_host_memory_kept() as kept:
        assert not kept
        assert faults_beyond_free_memory() >= PAGES / 512
