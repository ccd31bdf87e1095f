"""The host-memory callback keeps freed memory for the next step while fitting, and only then:
counted in page faults (each fresh page the kernel hands out is one) and in resident memory."""

import resource
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config
from hydra.utils import instantiate
from pytorch_lightning import Callback

from vae_lit.callbacks.host_memory import KeepFreedHostMemory, freed_host_memory_kept, glibc
from vae_lit.runs.trainer import build_trainer, instantiate_group

pytestmark = pytest.mark.skipif(glibc() is None, reason="the callback tunes glibc's malloc only")

MEGABYTES = 256
PAGES = MEGABYTES * 2**20 // 4096


def fewest_faults_of_an_allocation(repeats: int = 6) -> int:
    """The fewest page faults of allocating, filling and freeing a large tensor, over `repeats`
    tries: about one per 4 KB page when every try gets fresh pages (at least one per 2 MB with
    transparent huge pages), ~0 once a try reuses the memory of the ones before (the heap's
    layout can take a few tries to settle around other live blocks, as a run's first steps do)."""
    faults = []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(MEGABYTES * 2**20 // 4)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(faults)


def resident_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


def test_freed_memory_is_reused_inside_and_handed_back_after():
    assert fewest_faults_of_an_allocation() >= PAGES / 512  # glibc's default: fresh pages
    with freed_host_memory_kept() as kept:
        assert kept
        assert fewest_faults_of_an_allocation() < PAGES / 1024
        kept_mb = resident_mb()
    assert fewest_faults_of_an_allocation() >= PAGES / 512
    assert resident_mb() < kept_mb - MEGABYTES / 2  # malloc_trim gave the kept block back


class FaultProbe(Callback):
    def __init__(self, fail_at: int | None = None):
        self.faults: list[int] = []
        self.fail_at = fail_at

    def on_train_batch_end(self, *args) -> None:
        self.faults.append(fewest_faults_of_an_allocation())
        if len(self.faults) == self.fail_at:
            raise RuntimeError("the run dies here")


def test_the_default_callbacks_keep_memory_while_fitting_and_the_switch_turns_it_off(
    tmp_path: Path,
):
    for overrides, keeps in ((TINY, True), (TINY + ["~callbacks.host_memory"], False)):
        cfg = compose_config(tmp_path / str(keeps), overrides)
        callbacks = instantiate_group(cfg.callbacks)
        assert any(isinstance(c, KeepFreedHostMemory) for c in callbacks) == keeps
        probe = FaultProbe()
        trainer_cfg = cfg.trainer.copy()
        trainer_cfg.limit_train_batches, trainer_cfg.limit_val_batches = 2, 1
        trainer = build_trainer(trainer_cfg, callbacks=[*callbacks, probe], logger=False)
        trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
        assert len(probe.faults) == 2
        assert (min(probe.faults) < PAGES / 1024) == keeps, probe.faults
        assert fewest_faults_of_an_allocation() >= PAGES / 512  # the defaults are back after fit


def test_a_fit_that_dies_gives_the_memory_back(tmp_path: Path):
    cfg = compose_config(tmp_path, TINY)
    probe = FaultProbe(fail_at=2)
    trainer = build_trainer(cfg.trainer, callbacks=[KeepFreedHostMemory(), probe], logger=False)
    with pytest.raises(RuntimeError, match="the run dies here"):
        trainer.fit(instantiate(cfg.model), datamodule=instantiate(cfg.data))
    assert min(probe.faults) < PAGES / 1024
    assert fewest_faults_of_an_allocation() >= PAGES / 512


def test_the_users_own_malloc_settings_win(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    with freed_host_memory_kept() as kept:
        assert not kept
        assert fewest_faults_of_an_allocation() >= PAGES / 512
