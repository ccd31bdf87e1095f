"""The decoded cache: reused when valid, rebuilt when cut short or stale, safe for two builders."""

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.test_data_folder import write_jpegs
from vae_lit.data.cache import load_or_build
from vae_lit.data.image_files import decode_image, find_images
from vae_lit.errors import UserError

SIZE = 16


def load(root: Path, cache_dir: Path, size: int = SIZE):
    return load_or_build(root, find_images(root), size, 3, "squash", cache_dir=cache_dir)


def expected_images(root: Path, size: int = SIZE) -> np.ndarray:
    return np.stack([decode_image(root / f, size, 3, "squash") for f in find_images(root)])


def messages(caplog) -> str:
    return "\n".join(record.getMessage() for record in caplog.records)


def test_a_second_use_reuses_the_cache_and_says_so(tmp_path: Path, caplog):
    write_jpegs(tmp_path / "images", 8)
    with caplog.at_level(logging.INFO, logger="vae_lit"):
        first = load(tmp_path / "images", tmp_path / "cache")
        second = load(tmp_path / "images", tmp_path / "cache")
    assert first.built and not second.built
    assert "Building the decoded cache" in messages(caplog)
    assert f"Reusing the decoded cache {second.path} (8 images)" in messages(caplog)
    assert isinstance(second.images, np.memmap) and second.images.shape == (8, 3, SIZE, SIZE)
    np.testing.assert_array_equal(second.images, expected_images(tmp_path / "images"))
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.suffix == ".tmp"] == []


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_a_truncated_cache_is_rebuilt(tmp_path: Path, caplog, keep: float):
    write_jpegs(tmp_path / "images", 8)
    path = load(tmp_path / "images", tmp_path / "cache").path
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])  # a copy or a disk that stopped short
    with caplog.at_level(logging.INFO, logger="vae_lit"):
        again = load(tmp_path / "images", tmp_path / "cache")
    assert again.built and "(the file was cut short)" in messages(caplog)
    assert path.read_bytes() == data
    np.testing.assert_array_equal(again.images, expected_images(tmp_path / "images"))


def test_changed_files_make_the_cache_stale(tmp_path: Path, caplog):
    paths = write_jpegs(tmp_path / "images", 8)
    load(tmp_path / "images", tmp_path / "cache")
    Image.new("RGB", (24, 20), (10, 200, 30)).save(paths[3], quality=95)  # replaced in place
    write_jpegs(tmp_path / "images" / "more", 2, seed=5)
    with caplog.at_level(logging.INFO, logger="vae_lit"):
        again = load(tmp_path / "images", tmp_path / "cache")
    assert again.built and "(the image files changed since it was built)" in messages(caplog)
    assert len(again.files) == 10
    np.testing.assert_array_equal(again.images, expected_images(tmp_path / "images"))
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 1  # rebuilt in place, none pile up


def test_an_unusable_cache_dir_is_a_one_line_error(tmp_path: Path):
    write_jpegs(tmp_path / "images", 3)
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(UserError, match=r"data.cache_dir=.*file/sub cannot be created"):
        load(tmp_path / "images", tmp_path / "file" / "sub")


BUILDER = """
import hashlib, json, logging, sys, time
from pathlib import Path
from vae_lit.data.cache import load_or_build
from vae_lit.data.image_files import find_images
root, cache_dir, me, other = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
logging.basicConfig(level=logging.INFO)
me.touch()
deadline = time.time() + 120
while not other.exists() and time.time() < deadline:  # start both builds at the same moment
    time.sleep(0.01)
cache = load_or_build(root, find_images(root), 64, 3, "squash", cache_dir=cache_dir)
digest = hashlib.sha256(cache.images.tobytes()).hexdigest()
print(json.dumps({"built": cache.built, "digest": digest, "count": len(cache.files)}))
"""


def test_two_processes_building_one_cache_both_get_a_correct_cache(tmp_path: Path):
    write_jpegs(tmp_path / "images", 400, size=(178, 218))  # a build long enough to overlap
    cache_dir = tmp_path / "cache"
    ready = [tmp_path / "ready_a", tmp_path / "ready_b"]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", BUILDER, str(tmp_path / "images"), str(cache_dir), *flags],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flags in ([str(ready[0]), str(ready[1])], [str(ready[1]), str(ready[0])])
    ]
    outputs = [process.communicate(timeout=240) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-2000:]
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    truth = hashlib.sha256(expected_images(tmp_path / "images", 64).tobytes()).hexdigest()
    assert [r["digest"] for r in results] == [truth, truth]
    assert sorted(r["built"] for r in results) == [False, True]  # one built, one waited and reused
    waited = outputs[[r["built"] for r in results].index(False)][1]
    assert "Waiting for another process to finish building the decoded cache" in waited
    assert sorted(p.name for p in cache_dir.iterdir() if not p.name.endswith(".lock")) == [
        load(tmp_path / "images", cache_dir, 64).path.name
    ]


def test_on_device_auto_puts_the_data_on_a_gpu_only_when_it_fits_half_its_free_memory(
    monkeypatch,
):
    """data.on_device=auto, the default: on a CUDA GPU the images go there when they take at most
    half its free memory, else workers feed it (one per spare core, when none were asked for);
    on a CPU they stay where they are. (torch.cuda.mem_get_info answers as a GPU with 8 GiB
    free; the decision is made before anything is copied.)"""
    from types import SimpleNamespace

    import torch
    from torch.utils.data import DataLoader

    from vae_lit.data import datamodule as dm
    from vae_lit.data.cache import usable_cores
    from vae_lit.data.sprites_datamodule import SpritesDataModule

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 80 * 2**30))
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert dm.choose_on_device("auto", cuda, 4 * 2**30) is True
    assert dm.choose_on_device("auto", cuda, 5 * 2**30) is False
    assert dm.choose_on_device("auto", cpu, 1) is False
    assert dm.choose_on_device(True, cpu, 10**12) is True  # asked for: done (and checked to fit)
    assert dm.choose_on_device("false", cuda, 1) is False
    with pytest.raises(UserError, match="^data.on_device=maybe must be auto, true or false$"):
        SpritesDataModule(num_images=32, image_size=16, on_device="maybe")

    on_cpu = SpritesDataModule(num_images=32, image_size=16, batch_size=8)
    assert on_cpu.on_device == "auto"
    on_cpu.setup()
    assert on_cpu.on_device is False and isinstance(on_cpu.train_dataloader(), DataLoader)

    on_gpu = SpritesDataModule(num_images=32, image_size=16, batch_size=8)
    on_gpu.splits = on_gpu.load_splits()
    on_gpu.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=cuda), world_size=1)
    assert on_gpu.decide_on_device("auto") is True  # 32 tiny images: they fit
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 80 * 2**30))
    assert on_gpu.decide_on_device("auto") is False
    assert on_gpu.num_workers == min(4, usable_cores() - 1)


def test_on_device_copies_a_memory_map_in_chunks_and_refuses_what_cannot_fit(
    tmp_path, monkeypatch
):
    """data.on_device copies the cache chunk by chunk into one tensor (no second whole copy in
    host memory, in every DDP rank), and a data set the GPU cannot hold is one line, before any
    allocation. (torch.cuda.mem_get_info answers as a GPU with 1 GiB free would.)"""
    import torch

    from vae_lit.data import datamodule as dm

    images = np.lib.format.open_memmap(
        tmp_path / "images.npy", mode="w+", dtype=np.uint8, shape=(10, 3, 4, 4)
    )
    images[:] = np.arange(images.size, dtype=np.uint64).reshape(images.shape) % 251
    images.flush()
    read_only = np.load(tmp_path / "images.npy", mmap_mode="r")
    monkeypatch.setattr(dm, "CHUNK_BYTES", 3 * 48)  # 3 images a chunk: 4 chunks, the last short
    copy = dm.copy_in_chunks(read_only, torch.device("cpu"))
    assert torch.equal(copy, torch.from_numpy(np.array(read_only)))

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**30, 80 * 2**30))
    dm.check_fits(2**29, torch.device("cuda", 0))  # half of what is free: fine
    with pytest.raises(UserError) as failure:
        dm.check_fits(14 * 2**30, torch.device("cuda", 0))
    assert str(failure.value) == (
        "data.on_device=true needs 14.0 GiB on cuda:0 but only 1.0 GiB are free; "
        "set data.on_device=false (workers feed the GPU)"
    )
