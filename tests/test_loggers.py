"""W&B without credentials or network: offline runs inside the run dir, holding the pictures.

Every test points W&B and any HTTP proxy at a local socket that never answers, and checks at the
end that nothing connected to it.
"""

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import imageio.v3 as iio
import pytest
from hydra.utils import instantiate
from wandb.proto import wandb_internal_pb2

from tests.conftest import ROOT, TINY, compose_config, run_module
from vae_lit.loggers.wandb_run import finish_wandb, wandb_credentials_present
from vae_lit.train import train

TINY_WANDB = [o for o in TINY if not o.startswith("logger=")] + ["logger=wandb", "test=false"]
OFFLINE_ENV = ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL")


def wandb_records(run_dir: Path) -> Iterator[wandb_internal_pb2.Record]:
    """The records of an offline run's `.wandb` file (a LevelDB-style log of protobufs), which is
    what `wandb sync` would upload."""
    (path,) = run_dir.glob("run-*.wandb")
    data, pos, pending = path.read_bytes(), 7, b""  # 7 bytes of file header
    block = 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:
            pos += block - pos % block
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def run_record(run_dir: Path) -> wandb_internal_pb2.RunRecord:
    return next(r.run for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "run")


def logged_config(run_dir: Path) -> dict:
    config = {}
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return config


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


@pytest.fixture
def no_network(monkeypatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """No W&B credentials anywhere, and W&B plus any proxy pointed at a silent local socket."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    trap = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for name in OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    env = {
        "NETRC": str(tmp_path / "no-netrc"),
        "WANDB_BASE_URL": trap,
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb-data"),
        **{name: trap for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):  # a connection attempt would be waiting here
        listener.accept()
    listener.close()


def test_without_credentials_a_run_lands_offline_in_its_run_dir(no_network, tmp_path, caplog):
    caplog.set_level("INFO", logger="vae_lit.loggers.wandb_run")
    train(compose_config(tmp_path, [*TINY_WANDB, "trainer.max_epochs=2"]))

    (run,) = offline_runs(tmp_path)
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert run.name.endswith(f"-{run_id}")
    media = run / "files" / "media"
    images = [p.name for p in (media / "images").glob("*.png")]
    for key, count in [
        ("reconstruction", 2),
        ("sample", 2),
        ("interpolation", 1),
        ("traversal", 1),
    ]:
        assert sum(name.startswith(f"{key}_") for name in images) == count, images
    (gif,) = (media / "videos").glob("generation_*.gif")
    assert iio.imread(gif, index=None, extension=".gif").shape[0] == 2

    record = run_record(run)
    assert record.run_id == run_id
    assert "trainer.max_epochs=2" in record.display_name  # named after the overrides
    config = logged_config(run)  # the whole resolved config
    assert {"data", "model", "trainer", "callbacks", "logger", "paths"} <= config.keys()
    assert config["model"]["net"]["latent_dim"] == 4
    assert f"wandb sync {run}" in caplog.text


def test_credentials_come_from_the_environment_or_netrc(monkeypatch, tmp_path: Path):
    for name in OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert not wandb_credentials_present()  # no netrc file at all

    netrc.write_text("machine example.com login me password secret\n")
    assert not wandb_credentials_present()  # a netrc, but no entry for W&B

    netrc.write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    assert wandb_credentials_present()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    assert not wandb_credentials_present()  # a key for another W&B host does not count

    netrc.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert wandb_credentials_present()


def test_offline_true_wins_over_credentials(no_network, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    cfg = compose_config(tmp_path, [*TINY_WANDB, "logger.wandb.offline=true"])
    logger = instantiate(cfg.logger.wandb)
    logger.log_hyperparams({"a": 1})
    finish_wandb([logger])
    assert len(offline_runs(tmp_path)) == 1


def test_resuming_in_the_same_run_dir_continues_the_wandb_run(no_network, tmp_path: Path):
    train(compose_config(tmp_path, [*TINY_WANDB, "trainer.max_epochs=1"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    train(compose_config(tmp_path, [*TINY_WANDB, "trainer.max_epochs=2", f"ckpt_path={last}"]))

    first, second = offline_runs(tmp_path)
    assert run_record(first).run_id == run_record(second).run_id
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_record(second).run_id


@pytest.mark.slow
def test_each_multirun_job_is_a_run_in_the_sweeps_group(no_network, tmp_path: Path):
    sweep = tmp_path / "sweep-lr"
    result = run_module(
        "vae_lit.train",
        "-m",
        *TINY_WANDB,
        "model.optimizer.lr=0.001,0.002",
        f"hydra.sweep.dir={sweep}",
        cwd=ROOT,
        env=no_network,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    records = [run_record(run) for job in ("0", "1") for run in offline_runs(sweep / job)]
    assert len(records) == 2
    assert [r.run_group for r in records] == ["sweep-lr", "sweep-lr"]
    assert records[0].run_id != records[1].run_id
    assert "model.optimizer.lr=0.001" in records[0].display_name
    assert "model.optimizer.lr=0.002" in records[1].display_name


def test_logger_many_is_csv_tensorboard_and_wandb(no_network, tmp_path: Path):
    cfg = compose_config(tmp_path, [*TINY, "logger=many"])
    loggers = [instantiate(entry) for entry in cfg.logger.values()]
    finish_wandb(loggers)
    names = sorted(type(logger).__name__ for logger in loggers)
    assert names == ["AppendingCSVLogger", "TensorBoardLogger", "WandbLogger"]
