"""A checkpoint from a stranger runs no code: not its pickle, not its config's `_target_`s; and a
file that is no checkpoint is one line, never a traceback. Every hostile file is built here."""

import copy
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import CONFIG_DIR, ROOT, TINY, compose_config, run_module
from vae_lit.errors import UserError
from vae_lit.evaluation.checkpoint_eval import log_to_run_loggers
from vae_lit.persistence.checkpoint import load_checkpoint, read_checkpoint
from vae_lit.persistence.file_layout import CONFIG_KEY
from vae_lit.persistence.trusted_config import LOGGER_TARGETS, check_config
from vae_lit.runs.resume import newest_readable
from vae_lit.train import train

SEED_CHECKPOINT = ROOT / "tests" / "data" / "seed_conv_v0.ckpt"
# torch's own default is weights_only=True; this makes it False wherever a caller leaves it unset,
# so only an explicit weights_only=True in vae-lit (and what it hands Lightning) keeps code out.
NO_DEFAULT_SAFETY = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


class Payload:
    """Unpickled, it runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def real_checkpoint(tiny_run) -> dict:
    ckpt, _ = tiny_run
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def save(checkpoint: dict, path: Path) -> Path:
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def pickle_bomb(tiny_run, tmp_path: Path) -> tuple[Path, Path]:
    """A real checkpoint carrying a payload: (the .ckpt, the file the payload would make)."""
    marker = tmp_path / "pwned"
    checkpoint = real_checkpoint(tiny_run)
    checkpoint["callbacks"]["Innocent"] = {"state": Payload(marker)}
    return save(checkpoint, tmp_path / "bomb.ckpt"), marker


def one_line_error(result, *expected: str, alone: bool = True) -> str:
    """The process stopped with exit code 2 and one error line, no traceback; `alone`: nothing
    else on stderr (training also logs Lightning's device lines there)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("vae-lit: error: ")]
    assert len(errors) == 1 and (not alone or lines == errors), result.stderr[-3000:]
    for text in expected:
        assert text in errors[0]
    return errors[0]


# -- the pickle -------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("module", ["vae_lit.sample", "vae_lit.eval"])
def test_a_checkpoint_whose_pickle_runs_code_is_refused(pickle_bomb, tmp_path, module):
    bomb, marker = pickle_bomb
    result = run_module(module, f"ckpt={bomb}", cwd=tmp_path, env=NO_DEFAULT_SAFETY)
    line = one_line_error(result, f"{bomb} is not a vae-lit checkpoint", "posix.system")
    assert "never runs" in line
    assert not marker.exists()


@pytest.mark.slow
def test_resuming_from_a_checkpoint_whose_pickle_runs_code_is_refused(pickle_bomb, tmp_path):
    bomb, marker = pickle_bomb
    result = run_module(
        "vae_lit.train",
        *TINY,
        f"ckpt_path={bomb}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        env=NO_DEFAULT_SAFETY,
    )
    one_line_error(result, f"{bomb} is not a vae-lit checkpoint", alone=False)
    assert not marker.exists()


def test_resume_auto_skips_a_planted_checkpoint_without_running_it(pickle_bomb, tmp_path):
    bomb, marker = pickle_bomb
    assert newest_readable([bomb]) is None
    assert not marker.exists()


def test_lightning_reads_the_resumed_checkpoint_weights_only(tiny_run, tmp_path, monkeypatch):
    """What `trainer.fit(ckpt_path=...)` and `trainer.test` load goes through weights_only too,
    with or without torch's own default."""
    ckpt, _ = tiny_run
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    start = tmp_path / "start.ckpt"
    shutil.copyfile(ckpt, start)
    train(compose_config(tmp_path, [*TINY, "trainer.max_epochs=2", f"ckpt_path={start}"]))
    assert len(calls) >= 3  # resume_path, Lightning's restore, the test of the best checkpoint
    assert set(calls) == {True}


# -- not a checkpoint -------------------------------------------------------------------------
def cut_short(path: Path, source: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BROKEN = {
    "empty": (lambda path, source: path.write_bytes(b""), "the file is empty"),
    "truncated": (cut_short, "not a whole PyTorch zip archive"),
    "garbage": (lambda path, source: path.write_text("hello\n"), "not a whole PyTorch zip"),
}


@pytest.mark.slow
@pytest.mark.parametrize(
    "module, kind",
    [("vae_lit.sample", kind) for kind in BROKEN] + [("vae_lit.eval", "truncated")],
)
def test_a_file_that_is_no_checkpoint_is_one_line(tiny_run, tmp_path, module, kind):
    make, reason = BROKEN[kind]
    path = tmp_path / f"{kind}.ckpt"
    make(path, tiny_run[0])
    result = run_module(module, f"ckpt={path}", cwd=tmp_path)
    one_line_error(result, f"{path} is not a vae-lit checkpoint: ", reason)


def test_resuming_from_a_file_that_is_no_checkpoint_is_one_line(tiny_run, tmp_path):
    path = cut_short(tmp_path / "cut.ckpt", tiny_run[0])
    cfg = compose_config(tmp_path / "run", [*TINY, f"ckpt_path={path}"])
    with pytest.raises(UserError, match=f"{path} is not a vae-lit checkpoint: .*zip archive"):
        train(cfg)


def test_a_torch_file_without_a_lightning_state_is_no_checkpoint(tmp_path):
    path = save([1, 2, 3], tmp_path / "list.ckpt")
    with pytest.raises(UserError, match="is not a vae-lit checkpoint: it holds no Lightning"):
        load_checkpoint(path)


# -- real checkpoints still load --------------------------------------------------------------
def test_real_checkpoints_load_weights_only(tiny_run):
    old = read_checkpoint(SEED_CHECKPOINT)  # written by an earlier vae-lit
    assert old["state_dict"] and CONFIG_KEY in old
    for path in (SEED_CHECKPOINT, tiny_run[0]):
        module, config = load_checkpoint(path)  # their configs pass the allowlist
        assert (
            not module.training
            and config.model._target_ == "vae_lit.model.vae_module.VAELitModule"
        )


# -- the config's targets ---------------------------------------------------------------------
def hostile_configs(box: Path) -> dict[str, tuple[list, object]]:
    """(place in the checkpoint config, what to put there), each building something in `box`."""
    mkdtemp = {"_target_": "tempfile.mkdtemp", "dir": str(box)}
    return {
        "the model itself": (["model"], mkdtemp),
        "the network": (["model", "net"], mkdtemp),
        "a partial optimizer": (["model", "optimizer"], {**mkdtemp, "_partial_": True}),
        "an _args_ entry": (
            ["model", "net"],
            {"_target_": "vae_lit.networks.ConvVAE", "_args_": [mkdtemp]},
        ),
        "the data": (["data"], mkdtemp),
        # a module of ours that imports shutil: the allowlist is not a prefix match
        "a function reached through vae_lit": (
            ["model", "net"],
            {"_target_": "vae_lit.export.shutil.rmtree", "path": str(box / "keep")},
        ),
        "a function of vae_lit": (
            ["model", "net"],
            {"_target_": "vae_lit.sample.sample", "cfg": {"out": str(box / "x.png")}},
        ),
        "an interpolation that decodes to a target": (
            ["model", "net"],
            "${oc.decode:'{_target_: tempfile.mkdtemp, dir: " + str(box) + "}'}",
        ),
    }


HOSTILE = list(hostile_configs(Path("/unused")))


@pytest.mark.parametrize("case", HOSTILE)
def test_a_config_that_would_build_anything_else_is_refused(tiny_run, tmp_path, case):
    box = tmp_path / "box"
    (box / "keep").mkdir(parents=True)
    where, value = hostile_configs(box)[case]
    checkpoint = real_checkpoint(tiny_run)
    node = checkpoint[CONFIG_KEY]
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    path = save(checkpoint, tmp_path / "hostile.ckpt")
    with pytest.raises(UserError, match=f"checkpoint {path} is refused: ") as error:
        load_checkpoint(path)
    assert len(str(error.value).splitlines()) == 1
    assert sorted(p.name for p in box.iterdir()) == ["keep"]  # nothing made, nothing removed


@pytest.mark.slow
def test_sample_refuses_a_hostile_config_in_one_line(tiny_run, tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    checkpoint = real_checkpoint(tiny_run)
    checkpoint[CONFIG_KEY]["model"]["net"] = {"_target_": "tempfile.mkdtemp", "dir": str(box)}
    path = save(checkpoint, tmp_path / "hostile.ckpt")
    result = run_module("vae_lit.sample", f"ckpt={path}", cwd=tmp_path)
    one_line_error(result, "model.net._target_ asks to build tempfile.mkdtemp")
    assert list(box.iterdir()) == []


def shipped_model_configs() -> list[list[str]]:
    """One override list per model option and ingredient option vae-lit ships."""
    cases = [[f"model={p.stem}"] for p in sorted((CONFIG_DIR / "model").glob("*.yaml"))]
    for group in sorted(p for p in (CONFIG_DIR / "model").iterdir() if p.is_dir()):
        cases += [[f"model/{group.name}={p.stem}"] for p in sorted(group.glob("*.yaml"))]
    return cases


def test_every_model_and_data_vae_lit_ships_passes_the_check(tmp_path):
    from omegaconf import OmegaConf

    for overrides in shipped_model_configs():
        cfg = compose_config(tmp_path, overrides)
        check_config(OmegaConf.to_container(cfg.model, resolve=True), "shipped", "model")
    for data in sorted((CONFIG_DIR / "data").glob("*.yaml")):
        cfg = compose_config(tmp_path, [f"data={data.stem}"])
        check_config(OmegaConf.to_container(cfg.data, resolve=True), "shipped", "data")


# -- eval's loggers ---------------------------------------------------------------------------
def test_eval_can_log_to_every_logger_vae_lit_ships():
    shipped = {
        entry["_target_"]
        for path in (CONFIG_DIR / "logger").glob("*.yaml")
        for entry in (yaml.safe_load(path.read_text()) or {}).values()
        if isinstance(entry, dict) and "_target_" in entry
    }
    assert shipped and shipped <= LOGGER_TARGETS


def test_eval_builds_no_other_logger_from_a_checkpoint(tmp_path):
    box = tmp_path / "box"
    box.mkdir()
    run_cfg = compose_config(tmp_path, [*TINY, "logger=tensorboard"])
    hostile = copy.deepcopy(run_cfg)
    hostile.logger.tensorboard = {"_target_": "tempfile.mkdtemp", "dir": str(box)}
    with pytest.raises(UserError, match="logger.tensorboard._target_ asks to build tempfile"):
        log_to_run_loggers(hostile, {"iwae_nll": 1.0}, step=1, source="checkpoint x.ckpt")
    assert list(box.iterdir()) == []


def test_eval_writes_no_logger_files_outside_the_run_dir(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_cfg = compose_config(tmp_path / "run", [*TINY, "logger=tensorboard"])
    run_cfg.logger.tensorboard.save_dir = str(elsewhere)
    log_to_run_loggers(run_cfg, {"iwae_nll": 1.0}, step=1)
    assert list(elsewhere.iterdir()) == []
