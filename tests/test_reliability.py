"""Issue 12, sections 3-5: nothing a user ran is lost, signals and advice that work, bad input is
one line. Each test reproduces a fault found by a hostile run, with real runs and real files."""

import csv
import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from PIL import Image

from tests.conftest import CONFIG_DIR, ROOT, TINY, compose_config, run_module
from vae_lit.callbacks.non_finite_loss import NonFiniteLossError
from vae_lit.callbacks.run_summary import RUN_SUMMARY_FILE
from vae_lit.data.cache import load_or_build
from vae_lit.data.folder import ImageFolderDataModule
from vae_lit.errors import UserError
from vae_lit.loggers.wandb_run import why_not_online
from vae_lit.runs.config_checks import run_cli
from vae_lit.runs.run_dir import LOCK_FILE
from vae_lit.runs.sweep_summary import write_summary
from vae_lit.train import train

ERROR = "vae-lit: error: "


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(ERROR)]


def one_error_line(stderr: str) -> str:
    """The single `vae-lit: error:` line of a failed command, which printed no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr[-3000:]
    return lines[0].removeprefix(ERROR)


def cli(module: str, args: list[str]) -> int:
    """`python -m vae_lit.<module> args` in this process (Hydra, its callbacks and the one-line
    error handling included): the exit code."""
    import importlib

    main = importlib.import_module(f"vae_lit.{module}").main
    GlobalHydra.instance().clear()
    argv = sys.argv
    sys.argv = [f"vae_lit.{module}", f"--config-path={CONFIG_DIR}", *args]
    try:
        run_cli(main)
    except SystemExit as exit:
        return exit.code
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
    return 0


def snapshot(folder: Path, skip: tuple[str, ...] = ("train.log", LOCK_FILE)) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (the log, which runs only append to, left out)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def save_images(folder: Path, count: int, size: int = 24, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:04d}.png")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 3 MB file system (tmpfs): fills up like a full disk, ENOSPC and all."""
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def remount_read_only(mount_point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)


# -- 3. Nothing a user ran is lost ----------------------------------------------------------------


@pytest.mark.slow
def test_a_resumed_run_appends_to_metrics_csv(tmp_path: Path):
    train(compose_config(tmp_path, [*TINY, "test=false"]))
    before = metrics_rows(tmp_path)
    assert {row["epoch"] for row in before} == {"0"}

    # what a kill -9 while writing a checkpoint leaves: the next run in the dir removes it
    killed = tmp_path / "checkpoints" / ".last.ckpt.4242.0badf00d.partial"
    killed.write_bytes(b"half a checkpoint")
    train(compose_config(tmp_path, [*TINY, "test=false", "resume=auto", "trainer.max_epochs=2"]))
    assert not killed.exists()
    after = metrics_rows(tmp_path)
    assert after[: len(before)] == before  # the first run's rows are all still there...
    assert {row["epoch"] for row in after[len(before) :]} == {"1"}  # ...followed by the new ones


@pytest.mark.slow
def test_a_failed_start_on_a_finished_run_changes_nothing_on_disk(tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    model = ["data.image_size=16", "model.net.latent_dim=4", "model.net.hidden_channels=[8,16]"]
    common = [*model, "data.batch_size=16", "trainer=cpu", "trainer.precision=32-true"]
    common += ["logger=csv", "test=false", f"hydra.run.dir={run_dir}"]
    assert cli("train", [*common, "data.num_images=96"]) == 0
    before = snapshot(run_dir)
    assert {"run_summary.json", "csv/metrics.csv", ".hydra/overrides.yaml"} <= set(before)
    capsys.readouterr()

    # The README's resume=auto flow with a mistyped data root: fails inside trainer.fit.
    typo = ["data=folder", f"data.root={tmp_path / 'nonexistent'}", f"data.cache_dir={tmp_path}"]
    assert cli("train", [*common, *typo, "resume=auto"]) == 2
    assert "data.root=" in one_error_line(capsys.readouterr().err)
    assert snapshot(run_dir) == before  # metrics, summary, hparams and .hydra/ as they were


def test_a_plain_rerun_into_a_finished_run_dir_is_refused(tmp_path: Path):
    train(compose_config(tmp_path, [*TINY, "test=false"]))
    before = snapshot(tmp_path)
    assert "results/generation.gif" in before

    with pytest.raises(UserError, match=r"already holds a run \(.*\); add resume=auto"):
        train(compose_config(tmp_path, [*TINY, "test=false"]))
    assert snapshot(tmp_path) == before  # pictures, GIF, metrics and checkpoints untouched


def start_training(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "vae_lit.train", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.is_file() and process.poll() is None, "training ended before the test could act"


@pytest.mark.slow
def test_a_second_run_into_a_busy_run_dir_stops_with_one_line(tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.max_epochs=1000", "test=false", f"hydra.run.dir={run_dir}"]
    first = start_training(args, tmp_path / "first.log")
    try:
        wait_for(run_dir / "checkpoints" / "last.ckpt", first)
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_bytes()
        metrics = (run_dir / "csv" / "metrics.csv").stat().st_size

        assert cli("train", [*args, "resume=auto", "trainer.max_epochs=2000"]) == 2
        line = one_error_line(capsys.readouterr().err)
        assert line.startswith(f"{run_dir} is in use by another vae-lit run"), line
        assert (run_dir / ".hydra" / "overrides.yaml").read_bytes() == overrides
        assert (run_dir / "csv" / "metrics.csv").stat().st_size >= metrics
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.wait(timeout=30)


BUILDER = """
import sys
from vae_lit.data.cache import load_or_build
from vae_lit.data.image_files import find_images
root, cache_dir = sys.argv[1], sys.argv[2]
load_or_build(root, find_images(root), 64, 3, "squash", cache_dir=cache_dir, threads=1)
"""


def temp_file_sizes(folder: Path) -> list[int]:
    sizes = []
    for tmp in folder.glob("*.tmp"):
        try:
            sizes.append(tmp.stat().st_size)
        except FileNotFoundError:  # renamed between the listing and the stat
            pass
    return sizes


def test_a_cache_build_killed_with_sigkill_leaves_no_temp_file_after_the_next_build(
    tmp_path: Path, caplog
):
    images, cache_dir = tmp_path / "images", tmp_path / "cache"
    save_images(images, 400, size=96)
    builder = subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(images), str(cache_dir)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # kill once the temp file has its full size: created but not yet sized, it would be 0 bytes
        full_size, deadline = 400 * 3 * 64 * 64, time.monotonic() + 120
        while time.monotonic() < deadline and full_size not in temp_file_sizes(cache_dir):
            assert builder.poll() is None, "the build ended before it could be killed"
            time.sleep(0.01)
        builder.send_signal(signal.SIGKILL)
        builder.wait(timeout=30)
    finally:
        if builder.poll() is None:
            builder.kill()
    [stale] = cache_dir.glob("*.tmp")
    assert stale.stat().st_size == full_size  # a full-size file, left forever before

    from vae_lit.data.image_files import find_images

    caplog.set_level(logging.INFO)
    cache = load_or_build(images, find_images(images), 64, 3, "squash", cache_dir=cache_dir)
    assert cache.built and len(cache.files) == 400
    assert list(cache_dir.glob("*.tmp")) == []
    assert f"Removed {stale}" in caplog.text


FILL_UP = """
import resource, signal, sys
import numpy as np, torch
from pathlib import Path
from vae_lit.persistence.atomic_write import AtomicCheckpointIO, write_text_atomic
from vae_lit.callbacks.image_grids import save_png
from vae_lit.callbacks.generation_gif import write_gif
folder = Path(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
picture = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
writes = {
    "last.ckpt": lambda p: AtomicCheckpointIO().save_checkpoint({"w": torch.ones(10_000)}, p),
    "sample_1.png": lambda p: save_png(picture, p),
    "generation.gif": lambda p: write_gif([picture, picture], p, 500),
    "run_summary.json": lambda p: write_text_atomic(p, "x" * 10_000),
}
for name, write in writes.items():
    try:
        write(folder / name)
        print(name, "written")
    except Exception as exc:
        print(name, "failed")
"""


@pytest.mark.slow
def test_a_write_that_hits_the_file_size_limit_keeps_the_previous_file(tmp_path: Path):
    """The write path of every file a run rewrites (checkpoint, picture, GIF, summary) under a
    real EFBIG (RLIMIT_FSIZE, no root needed): the old file stays whole, no temp file stays."""
    old = {"last.ckpt": b"old ckpt", "sample_1.png": b"old png", "generation.gif": b"old gif"}
    old[RUN_SUMMARY_FILE] = b'{"status": "finished"}\n'
    for name, content in old.items():
        (tmp_path / name).write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-c", FILL_UP, str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [w for name in old for w in (name, "failed")]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old


@pytest.mark.slow
def test_a_run_that_fills_its_disk_stops_with_one_line_and_keeps_its_checkpoint(
    small_disk: Path, capsys
):
    run_dir = small_disk / "run"
    args = [*TINY, "test=false", f"hydra.run.dir={run_dir}"]
    assert cli("train", args) == 0
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as file:  # fill the disk, then free less than a
        try:  # checkpoint's size
            while True:
                file.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    os.truncate(filler, filler.stat().st_size - 40_000)
    capsys.readouterr()

    assert cli("train", [*args, "resume=auto", "trainer.max_epochs=3"]) == 2
    line = one_error_line(capsys.readouterr().err)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert line.startswith(f"no space left on {run_dir}"), line
    assert f"; last good checkpoint: {last}" in line, line
    files = [p for p in run_dir.rglob("*") if p.is_file() and p.name != LOCK_FILE]
    assert [p for p in files if p.stat().st_size == 0] == []
    assert [p for p in files if p.name.endswith(".partial")] == []
    assert torch.load(last, weights_only=True)["epoch"] == 0  # the checkpoint named is whole
    json.loads((run_dir / RUN_SUMMARY_FILE).read_text())


def test_the_sweep_summary_skips_an_unreadable_job_file_and_says_so(tmp_path: Path, caplog):
    for job, summary in (("0", '{"best_val/loss": 1.5, "status": "finished"}'), ("1", "")):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        (tmp_path / job / RUN_SUMMARY_FILE).write_text(summary)  # job 1: a disk that filled up
    rows = write_summary(tmp_path)
    assert [row["best val/loss"] for row in rows] == [1.5, None]
    assert rows[1]["status"].startswith(f"skipped: {tmp_path / '1' / RUN_SUMMARY_FILE}")
    assert "empty file" in rows[1]["status"]
    assert f"skipping {tmp_path / '1' / RUN_SUMMARY_FILE} is unreadable" in caplog.text
    assert "skipped" in (tmp_path / "summary.md").read_text()


# -- 4. Signals and advice that work -------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_exits_143_with_one_line_and_a_terminated_summary(tmp_path: Path):
    run_dir = tmp_path / "run"
    log = tmp_path / "run.log"
    process = start_training(
        [*TINY, "trainer.max_epochs=1000", "test=false", f"hydra.run.dir={run_dir}"], log
    )
    try:
        wait_for(run_dir / "checkpoints" / "last.ckpt", process)
        process.send_signal(signal.SIGTERM)  # what SLURM, Kubernetes and `timeout` send
        assert process.wait(timeout=120) == 143
    finally:
        if process.poll() is None:
            process.kill()
    line = one_error_line(log.read_text())
    last = run_dir / "checkpoints" / "last.ckpt"
    assert line.startswith("terminated by SIGTERM at step "), line
    assert f"last checkpoint: {last}; run the same command with resume=auto" in line, line
    summary = json.loads((run_dir / RUN_SUMMARY_FILE).read_text())
    assert summary["status"] == "terminated (SIGTERM)"
    torch.load(last, weights_only=True)  # whole: the run resumes from it


@pytest.mark.slow
def test_after_a_nan_stop_a_lower_lr_on_the_command_line_is_the_lr_resumed_with(
    tmp_path: Path, caplog
):
    blow_up = (  # the learning rate jumps 1e9-fold after the first epoch
        "model.scheduler={_target_:torch.optim.lr_scheduler.ExponentialLR,_partial_:true,"
        "gamma:1e9}"
    )
    overrides = [*TINY, "trainer.max_epochs=3", "test=false"]
    with pytest.raises(NonFiniteLossError, match="Lower model.optimizer.lr"):
        train(compose_config(tmp_path, [*overrides, blow_up]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["optimizer_states"][0]["param_groups"][0][
        "lr"
    ] == pytest.approx(1e6)  # what Lightning would restore

    caplog.set_level(logging.INFO)
    advice = ["model.optimizer.lr=1e-4", "model.scheduler=null", "resume=auto"]
    train(compose_config(tmp_path, [*overrides, *advice]))  # the advice, followed: it trains
    assert "model.optimizer.lr=0.0001 from the command line replaces" in caplog.text
    final = torch.load(last, weights_only=True)
    assert final["epoch"] == 2
    assert final["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-4)
    assert all(torch.isfinite(w).all() for w in final["state_dict"].values())


@pytest.fixture
def unreachable_wandb(monkeypatch, tmp_path: Path) -> str:
    """A W&B API key but no W&B server: WANDB_BASE_URL is a closed local port, no proxy."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"  # closed once the block ends
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("WANDB_BASE_URL", url)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    return url


def test_wandb_that_cannot_go_online_says_why_in_one_line(unreachable_wandb: str, monkeypatch):
    start = time.monotonic()
    assert why_not_online().startswith(f"the W&B server {unreachable_wandb} cannot be reached")
    assert time.monotonic() - start < 10
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("NETRC", "/nonexistent")
    assert why_not_online().startswith("no W&B API key was found")


@pytest.mark.slow
def test_a_run_with_a_wandb_key_but_no_network_logs_offline_at_once(
    unreachable_wandb: str, tmp_path: Path, caplog
):
    caplog.set_level(logging.WARNING)
    start = time.monotonic()
    overrides = [o for o in TINY if not o.startswith("logger=")] + ["logger=wandb", "test=false"]
    train(compose_config(tmp_path, overrides))
    assert time.monotonic() - start < 90  # not W&B's two-minute wait, then a CommError
    [warning] = [r.getMessage() for r in caplog.records if "W&B logs this run offline" in r.msg]
    assert f"the W&B server {unreachable_wandb} cannot be reached" in warning
    assert list((tmp_path / "wandb").glob("offline-run-*"))


# -- 5. Bad input: one line, always -------------------------------------------------------------


def test_bad_directory_entries_are_skipped_and_counted_like_corrupt_images(tmp_path: Path, caplog):
    images = tmp_path / "images"
    save_images(images, 20)
    (images / "loop.png").symlink_to("loop.png")  # ELOOP
    (images / "gone.png").symlink_to("missing.png")  # a dangling symlink
    latin1 = os.fsdecode(b"caf\xe9.png")  # `cafe.png` with an accent, in Latin-1: not UTF-8
    shutil.copy(images / "img_0000.png", images / latin1)
    caplog.set_level(logging.WARNING)
    data = ImageFolderDataModule(
        str(images), image_size=16, batch_size=4, cache_dir=str(tmp_path / "cache")
    )
    data.setup("fit")
    assert sum(len(files) for files in data.files.values()) == 21  # the Latin-1 name is read
    [warning] = [r.getMessage() for r in caplog.records if "Skipped" in r.getMessage()]
    assert "Skipped 2 of 23 image files" in warning
    assert "gone.png (a symlink to a missing file (missing.png))" in warning
    assert "loop.png (a symlink loop)" in warning


def test_a_read_only_cache_dir_is_read_and_refused_only_when_it_needs_a_build(
    tmp_path: Path, small_disk: Path
):
    from vae_lit.data.image_files import find_images

    images = tmp_path / "images"
    save_images(images, 12)
    built = load_or_build(images, find_images(images), 16, 3, "squash", cache_dir=small_disk)
    remount_read_only(small_disk)  # a shared, prebuilt cache (root ignores chmod, not this)

    cache = load_or_build(images, find_images(images), 16, 3, "squash", cache_dir=small_disk)
    assert not cache.built and np.array_equal(np.asarray(cache.images), built.images)

    save_images(images / "more", 1, seed=1)  # the folder changed: the cache needs a build
    with pytest.raises(UserError) as refused:
        load_or_build(images, find_images(images), 16, 3, "squash", cache_dir=small_disk)
    message = str(refused.value)
    assert message.startswith(f"data.cache_dir={small_disk} cannot be written (Read-only file")
    assert "set data.cache_dir to a writable folder" in message
    assert "\n" not in message


CONFIG_MISTAKES = [
    ("model.optimizer.lr=-1", "model.optimizer.lr=-1 must be a positive number"),
    ("model.optimizer.lr=nan", "model.optimizer.lr=nan must be a positive number"),
    ("model.optimizer.lr=abc", "model.optimizer.lr=abc must be a positive number"),
    ("model.optimizer.weight_decay=-1", "model.optimizer.weight_decay=-1 must be a number >= 0"),
    ("seed=abc", "seed=abc must be an integer, or null for a random run"),
    ("trainer.max_epochs=abc", "trainer.max_epochs=abc must be a positive integer"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 trains nothing"),
    ("model.net.latent_dim=1.5", "model.net.latent_dim=1.5 must be a positive integer"),
    ("model.objective.free_bits=nan", "model.objective.free_bits=nan must be a number >= 0"),
    ("data.image_size=100000", "data.image_size=100000 is too large"),
    ("trainer.precision=banana", "trainer.precision=banana is unknown; use one of: auto,"),
    ("trainer.precision=bf16-true", "trainer.precision=bf16-true keeps the weights in half"),
    ("trainer.precision=16-true", "trainer.precision=16-true keeps the weights in half "),
    ("data=nonexistent", "data=nonexistent is not a config; use one of: celeba, folder, sprites"),
    ("model.net.latent_dims=8", "model.net.latent_dims is not a config key; did you mean "),
    ("data.val_fraction=abc", "data.val_fraction=abc must be a number in [0, 1)"),
    # a value the built class refuses: Hydra's "Error in call to target", as one line
    ("trainer.accelerator=banana", "trainer: You selected an invalid accelerator name"),
    (
        "+model.net.latent_dimm=8",
        "model.net.latent_dimm is not an argument of vae_lit.networks.conv_vae.ConvVAE; did you "
        "mean model.net.latent_dim?",
    ),
    ("model.prior.latent_dim=abc", "model.prior: invalid literal for int() with base 10: 'abc'"),
    ("model.optimizer._target_=torch.optim.Nope", "model.optimizer._target_=torch.optim.Nope can"),
    ("model.optimizer.lr=[1", "cannot read the override 'model.optimizer.lr=[1'"),
]


@pytest.mark.parametrize(("override", "message"), CONFIG_MISTAKES)
def test_a_config_mistake_is_one_line_naming_the_key_before_any_data_is_read(
    tmp_path: Path, capsys, override, message
):
    images, cache_dir, run_dir = tmp_path / "images", tmp_path / "cache", tmp_path / "run"
    save_images(images, 8)
    data = ["data=folder", f"data.root={images}", f"data.cache_dir={cache_dir}"]
    if override.startswith("data="):
        data = []
    key = override.partition("=")[0]
    tiny = [o for o in TINY if not o.startswith(("data.num_images", f"{key}="))]
    args = [*tiny, *data, override, f"hydra.run.dir={run_dir}"]
    assert cli("train", args) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(message), line
    assert not cache_dir.exists()  # no image was read, no cache built
    written = {p.name for p in run_dir.iterdir()} if run_dir.exists() else set()
    assert written <= {".hydra", "train.log", LOCK_FILE}


def test_a_typo_in_a_key_names_the_closest_valid_key(tmp_path: Path, capsys):
    assert cli("train", ["trainer.max_epoch=3", f"hydra.run.dir={tmp_path}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == "trainer.max_epoch is not a config key; did you mean trainer.max_epochs?"


@pytest.mark.parametrize(
    ("module", "typo", "message"),
    [
        ("vae_lit.export", "outt=model", "outt is not a config key; did you mean out?"),
        ("vae_lit.train_prior", "batch_sise=8", "batch_sise is not a config key; did you mean"),
    ],
)
def test_every_entry_point_names_a_typo_in_a_key_in_one_line(
    tmp_path: Path, module, typo, message
):
    result = run_module(module, "ckpt=missing.ckpt", typo, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert one_error_line(result.stderr).startswith(message)


def test_a_type_error_inside_a_constructor_keeps_its_traceback(tmp_path: Path, capsys):
    """Only Hydra's call of a target with a wrong argument name is the user's mistake for sure;
    a TypeError from code the constructor runs may be a bug, and a bug needs its traceback."""
    args = [*TINY, "model.prior.latent_dim=[4]", f"hydra.run.dir={tmp_path}"]
    with pytest.raises(InstantiationException) as raised:
        cli("train", args)
    assert isinstance(raised.value.__cause__, TypeError)
    assert "not 'ListConfig'" in str(raised.value.__cause__)
    assert not error_lines(capsys.readouterr().err)  # not turned into one line


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("n=abc", "n=abc must be a positive integer"),
        ("out={tmp}", "out={tmp} is a folder; pass a file name"),
        ("out=/nonexistent_dir/x.png", "out=/nonexistent_dir/x.png: its folder /nonexistent_dir"),
        ("out={tmp}/x.unknown", "out={tmp}/x.unknown names no image format"),
        ("temperature=nan", "temperature=nan must be a number >= 0.001"),
        ("temperature=1e-40", "temperature=1e-40 must be a number >= 0.001"),
        ("temperature=abc", "temperature=abc must be a number >= 0.001"),
    ],
)
def test_a_bad_sample_argument_is_one_line_before_the_checkpoint_is_read(
    tmp_path: Path, capsys, override, message
):
    override, message = override.format(tmp=tmp_path), message.format(tmp=tmp_path)
    args = ["ckpt=/nonexistent/last.ckpt", override, f"hydra.run.dir={tmp_path / 'run'}"]
    assert cli("sample", args) == 2
    assert one_error_line(capsys.readouterr().err).startswith(message)
    assert not Path("/nonexistent_dir").exists()


def test_eval_next_to_a_read_only_checkpoint_stops_before_evaluating(
    tiny_run, small_disk: Path, capsys
):
    ckpt_path, _ = tiny_run
    shutil.copy(ckpt_path, small_disk / "last.ckpt")
    remount_read_only(small_disk)
    args = [f"ckpt={small_disk / 'last.ckpt'}", "device=cpu", "eval.k=2"]
    assert cli("eval", [*args, f"hydra.run.dir={small_disk.parent / 'eval'}"]) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert line.startswith(f"eval.json={small_disk / 'eval.json'} cannot be written (Read-only")
    assert "pass eval.json=<a writable path>" in line
    assert "Evaluating" not in captured.out  # refused before the evaluation, not after it


def test_a_read_only_checkpoint_samples_and_evaluates_its_fit_kept_in_the_user_cache(
    tiny_run, small_disk: Path, tmp_path: Path, monkeypatch, capsys
):
    """Issue 19.4: sample sampler=gmm and eval (its samplers include gmm) ended in a
    SafetensorError traceback saving the fit beside a read-only checkpoint, after the work."""
    ckpt_path, _ = tiny_run
    shutil.copy(ckpt_path, small_disk / "last.ckpt")
    remount_read_only(small_disk)
    ckpt = small_disk / "last.ckpt"
    out = tmp_path / "gmm.png"
    args = [f"ckpt={ckpt}", "sampler=gmm", "n=4", "nrow=2", f"out={out}"]
    assert cli("sample", [*args, f"hydra.run.dir={tmp_path / 'sample'}"]) in (None, 0)
    assert out.is_file()
    cache = Path(os.environ["VAE_LIT_CACHE"])
    assert list(cache.rglob("last.ckpt.gmm.safetensors"))  # kept where the user can write
    json_path = tmp_path / "eval.json"
    eval_args = [f"ckpt={ckpt}", "eval.k=2", f"eval.json={json_path}", "eval.log_to_run=false"]
    assert cli("eval", [*eval_args, f"hydra.run.dir={tmp_path / 'eval'}"]) in (None, 0)
    assert "gmm" in json.loads(json_path.read_text())["latent_log_likelihood"]
    # no writable place at all: the evaluation is still written; the fit is not kept, one warning
    monkeypatch.setenv("VAE_LIT_CACHE", str(small_disk / "cache"))
    json_path.unlink()
    capsys.readouterr()
    assert cli("eval", [*eval_args, f"hydra.run.dir={tmp_path / 'eval2'}"]) in (None, 0)
    assert json_path.is_file()
    logged = capsys.readouterr().out
    assert "The gmm fit is not saved" in logged and "Read-only file system" in logged


INGREDIENT_MISTAKES = [
    (
        ["model/likelihood=discretized_logistic_mixture", "model.likelihood.num_components=-3"],
        "model.likelihood.num_components=-3 must be a positive integer",
    ),
    (
        ["model/likelihood=discretized_logistic_mixture", "model.likelihood.num_components=abc"],
        "model.likelihood.num_components=abc must be a positive integer",
    ),
    (
        ["model/prior=vamp", "model.prior.image_size=64"],
        "model.prior.image_size=64 must equal data.image_size=16 (the VampPrior's pseudo-inputs",
    ),
    (
        ["model/prior=vamp", "model.prior.channels=1"],
        "model.prior.channels=1 must equal data.channels=3",
    ),
    (
        ["model/likelihood=gaussian", "model.likelihood.learn_scale=maybe"],
        "model.likelihood.learn_scale=maybe must be true or false",
    ),
    (
        ["model=vqvae", "model.net.quantizer.num_codes=2.5"],
        "model.net.quantizer.num_codes=2.5 must",
    ),
    (
        ["model/objective=info_vae", "data.batch_size=1"],
        "data.batch_size=1 is too small for InfoVAE, which compares the codes within a batch",
    ),
    (["eval_after_train.enabled=true", "eval_after_train.k=0"], "eval_after_train.k=0 must be a"),
    (
        ["model/objective=iwae", "model.objective.k=100000000"],
        "model.objective.k=100000000 decodes k x data.batch_size=16 images at once: at least",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), INGREDIENT_MISTAKES)
def test_an_ingredient_value_no_run_can_use_is_one_line_before_training(
    tmp_path: Path, overrides, message
):
    """Issue 19.14 and 19.15: these were accepted silently, or failed after the data was read
    (eval_after_train.k=0: after the whole run)."""
    from vae_lit.train import train

    tiny = [o for o in TINY if not (overrides[0] == "model=vqvae" and o.startswith("model.net"))]
    with pytest.raises(UserError) as error:
        train(compose_config(tmp_path, [*tiny, *overrides]))
    assert str(error.value).startswith(message), error.value
    assert not (tmp_path / "checkpoints").exists()


EVAL_MISTAKES = [
    ("eval.k=0", "eval.k=0 must be a positive integer"),
    ("eval.k=-5", "eval.k=-5 must be a positive integer"),
    ("eval.k=abc", "eval.k=abc must be a positive integer"),
    ("eval.k=1.5", "eval.k=1.5 must be a positive integer"),
    ("eval.mig_bins=0", "eval.mig_bins=0 must be a positive integer"),
    ("eval.active_threshold=abc", "eval.active_threshold=abc must be a number >= 0"),
    ("eval.samplers=[gmm,bogus]", "eval.samplers: bogus is not a sampler; use some of: gmm,"),
    ("eval.batch_size=-3", "eval.batch_size=-3 must be a positive integer, or null"),
    ("ckpt=null", "ckpt is not set; pass ckpt=<run dir>/checkpoints/last.ckpt"),
    ("ckpt=", "ckpt is not set; pass ckpt=<run dir>/checkpoints/last.ckpt"),
]


@pytest.mark.parametrize(("override", "message"), EVAL_MISTAKES)
def test_a_bad_eval_option_is_one_line_before_the_model_is_read(
    tiny_run, tmp_path: Path, capsys, override, message
):
    """Issue 19.15 and 19.18: some of these failed only after the whole evaluation, `ckpt=null`
    gave a traceback and `ckpt=` (make eval without CKPT) read the current folder."""
    ckpt, _ = tiny_run
    args = [f"ckpt={ckpt}", override, f"hydra.run.dir={tmp_path}"]
    assert cli("eval", args) == 2
    captured = capsys.readouterr()
    assert one_error_line(captured.err).startswith(message)
    assert "Evaluating" not in captured.out


def test_a_run_dir_or_a_model_folder_in_the_wrong_place_says_what_to_pass(
    tiny_run, tmp_path: Path
):
    """Issue 19.18: `eval ckpt=<run dir>` suggested exporting into the run dir; `train
    ckpt_path=<model folder>` said the folder does not exist."""
    from vae_lit.persistence.checkpoint import load_checkpoint
    from vae_lit.train import train

    ckpt, _ = tiny_run
    run_dir = ckpt.parents[1]
    with pytest.raises(UserError, match=f"it is a run dir; pass ckpt={ckpt}"):
        load_checkpoint(run_dir)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(
        UserError, match=f"ckpt_path={folder} is a folder; ckpt_path takes a .ckpt"
    ):
        train(compose_config(tmp_path / "run", [*TINY, f"ckpt_path={folder}"]))


def test_export_refuses_a_folder_at_the_root_a_file_as_parent_and_a_full_disk_in_one_line(
    tiny_run, small_disk: Path, tmp_path: Path, capsys
):
    """Issue 19.17: out=/nonexist_vae/m created a folder at /, out=<file>/m and a full disk gave
    tracebacks."""
    ckpt, _ = tiny_run
    (tmp_path / "a_file").write_text("")
    cases = [
        ("/nonexist_vae_19/m", "out=/nonexist_vae_19/m: its folder /nonexist_vae_19 does not"),
        (f"{tmp_path / 'a_file'}/m", f"out={tmp_path / 'a_file'}/m: {tmp_path / 'a_file'} is a"),
    ]
    for out, message in cases:
        assert cli("export", [f"ckpt={ckpt}", f"out={out}", f"hydra.run.dir={tmp_path}"]) == 2
        assert one_error_line(capsys.readouterr().err).startswith(message)
    assert not Path("/nonexist_vae_19").exists()
    with open(small_disk / "filler", "wb") as filler:  # the disk full but for a few KB
        try:
            while True:
                filler.write(b"\0" * 65536)
        except OSError:
            pass
    out = small_disk / "model"
    assert cli("export", [f"ckpt={ckpt}", f"out={out}", f"hydra.run.dir={tmp_path}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"out={out} cannot be written (No space left on device)"), line
