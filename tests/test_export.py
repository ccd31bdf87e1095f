"""`python -m vae_lit.export`: a model folder (safetensors + JSON + model card) that gives the very
model of its checkpoint, loads without any pickle, and works wherever a checkpoint does."""

import json
import pickle
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from nbclient import NotebookClient
from PIL import Image
from safetensors import safe_open

from tests.conftest import ROOT, compose_config, run_module
from vae_lit.errors import UserError
from vae_lit.eval import evaluate
from vae_lit.evaluation.checkpoint_eval import LOGGED_METRICS
from vae_lit.export import export
from vae_lit.model.vae_module import VAELitModule
from vae_lit.persistence.checkpoint import load_checkpoint
from vae_lit.sample import sample

FILES = {"model.safetensors", "config.json", "README.md", "eval.json", "sample.png"}


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the tiny run (checkpoint, sample grid, an eval.json of it), exported:
    (the .ckpt, the model folder)."""
    ckpt, _ = tiny_run
    run = tmp_path_factory.mktemp("run")
    shutil.copytree(ckpt.parents[1] / "checkpoints", run / "checkpoints")
    shutil.copytree(ckpt.parents[1] / "results", run / "results")
    copy = run / "checkpoints" / "last.ckpt"
    evaluate(compose_config(run, [f"ckpt={copy}", "eval.k=2", "eval.log_to_run=false"], "eval"))
    out = run / "exported"
    export(compose_config(run, [f"ckpt={copy}", f"out={out}"], config_name="export"))
    return copy, out


def no_pickle(monkeypatch) -> None:
    """From here on, anything that unpickles fails."""

    def refuse(*args, **kwargs):
        raise AssertionError("something unpickled")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler")]:
        monkeypatch.setattr(module, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)


def test_the_folder_holds_weights_config_and_card(exported):
    ckpt, out = exported
    assert {p.name for p in out.iterdir()} == FILES  # no temporary file left behind
    config = json.loads((out / "config.json").read_text())
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert config["model"]["_target_"] == "vae_lit.model.vae_module.VAELitModule"
    assert config["model"]["net"]["latent_dim"] == 4 and config["data"]["image_size"] == 16
    assert config["global_step"] == saved["global_step"] and config["epoch"] == saved["epoch"]
    with safe_open(out / "model.safetensors", framework="pt") as weights:
        assert set(weights.keys()) == set(saved["state_dict"])  # weights only: no optimizer


def test_the_card_shows_the_eval_table_and_the_sample_grid(exported):
    ckpt, out = exported
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "vae-lit"
    metrics = json.loads((ckpt.parent / "eval.json").read_text())
    assert f"| IWAE NLL (nats, k=2) | {metrics['iwae_nll']:.2f} |" in card.text
    assert "![Samples from the prior](sample.png)" in card.text
    run_grid = ckpt.parents[1] / "results" / "sample_0.png"  # the run's one epoch
    assert (out / "sample.png").read_bytes() == run_grid.read_bytes()


def test_the_folder_gives_the_checkpoints_model_bit_for_bit_without_a_pickle(
    exported, monkeypatch
):
    ckpt, out = exported
    from_checkpoint, _ = load_checkpoint(ckpt)
    no_pickle(monkeypatch)
    model = VAELitModule.from_pretrained(out)
    assert not model.training
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.reconstruct(images), from_checkpoint.reconstruct(images))
    z = torch.randn(6, model.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.decode(z), from_checkpoint.decode(z))


def test_sample_and_eval_take_the_folder_for_a_checkpoint(exported, tmp_path):
    ckpt, out = exported
    grids = [
        sample(compose_config(tmp_path, [f"ckpt={path}", f"out={tmp_path / name}"], "sample"))
        for path, name in ((ckpt, "from_ckpt.png"), (out, "from_folder.png"))
    ]
    pictures = [np.asarray(Image.open(grid)) for grid in grids]
    assert np.array_equal(*pictures)
    folder_eval = tmp_path / "folder_eval"
    shutil.copytree(out, folder_eval)
    (folder_eval / "eval.json").unlink()
    metrics = evaluate(compose_config(tmp_path, [f"ckpt={folder_eval}", "eval.k=2"], "eval"))
    assert json.loads((folder_eval / "eval.json").read_text())["iwae_nll"] == metrics["iwae_nll"]
    from_ckpt = json.loads((ckpt.parent / "eval.json").read_text())
    numbers = [key for key in (*LOGGED_METRICS, "global_step") if key in from_ckpt]
    assert [metrics[key] for key in numbers] == [from_ckpt[key] for key in numbers]


def test_save_pretrained_needs_the_config_that_built_the_module(exported, tmp_path):
    ckpt, out = exported
    module, _ = load_checkpoint(ckpt)
    bare = VAELitModule(
        net=module.net,
        likelihood=module.likelihood,
        objective=module.objective,
        prior=module.prior,
        optimizer=torch.optim.Adam,
    )
    with pytest.raises(UserError, match="does not know the config that built it"):
        bare.save_pretrained(tmp_path / "bare")
    config = json.loads((out / "config.json").read_text())
    bare.save_pretrained(tmp_path / "bare", config=config)
    again = VAELitModule.from_pretrained(tmp_path / "bare")
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(again.reconstruct(images), module.reconstruct(images))


def test_from_pretrained_takes_a_hub_repo_id_from_the_cache_offline(exported, tmp_path):
    """The Hub cache layout (models--<user>--<name>/snapshots/<commit>/) a download leaves."""
    _, out = exported
    repo = tmp_path / "cache" / "models--someone--sprites-vae"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(out, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    model = VAELitModule.from_pretrained(
        "someone/sprites-vae", cache_dir=tmp_path / "cache", local_files_only=True
    )
    reference = VAELitModule.from_pretrained(out)
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(model.reconstruct(images), reference.reconstruct(images))


def test_push_to_hub_uploads_the_folder(exported, tmp_path, monkeypatch):
    """No network here: the Hub client is replaced by one that keeps what it was given."""
    import huggingface_hub.hub_mixin

    uploaded = tmp_path / "uploaded"

    class OfflineHub:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            shutil.copytree(folder_path, uploaded)
            return f"https://hub.invalid/{repo_id}/commit/1"

    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", OfflineHub)
    _, out = exported
    model = VAELitModule.from_pretrained(out)
    assert model.push_to_hub("someone/sprites-vae").endswith("/commit/1")
    assert {"model.safetensors", "config.json", "README.md"} <= {
        p.name for p in uploaded.iterdir()
    }
    pushed = VAELitModule.from_pretrained(uploaded)
    images = torch.rand(2, 3, 16, 16)
    assert torch.equal(pushed.reconstruct(images), model.reconstruct(images))


# -- folders that are not what they claim -----------------------------------------------------
def copy_of(out: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "folder"
    shutil.copytree(out, folder)
    return folder


def test_a_tampered_config_json_builds_nothing(exported, tmp_path):
    folder = copy_of(exported[1], tmp_path)
    box = tmp_path / "box"
    box.mkdir()
    config = json.loads((folder / "config.json").read_text())
    config["model"]["prior"] = {"_target_": "tempfile.mkdtemp", "dir": str(box)}
    (folder / "config.json").write_text(json.dumps(config))
    for load in (load_checkpoint, VAELitModule.from_pretrained):
        with pytest.raises(UserError, match="model.prior._target_ asks to build tempfile.mkdtemp"):
            load(folder)
    assert list(box.iterdir()) == []


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda f: (f / "model.safetensors").unlink(), "it has no model.safetensors"),
        (lambda f: (f / "config.json").write_text("{oops"), "config.json is not JSON"),
        (lambda f: (f / "model.safetensors").write_bytes(b"\0" * 10), "model.safetensors is unr"),
        (lambda f: (f / "config.json").write_text('{"net": {}, "model": {}}'), "no model config"),
    ],
)
def test_a_broken_folder_is_one_line(exported, tmp_path, damage, message):
    folder = copy_of(exported[1], tmp_path)
    damage(folder)
    with pytest.raises(UserError, match=message) as error:
        VAELitModule.from_pretrained(folder)
    assert len(str(error.value).splitlines()) == 1


def test_bad_export_arguments_are_one_line(exported, tmp_path):
    ckpt, _ = exported
    (tmp_path / "a_file").write_text("")
    cases = [
        ([f"ckpt={ckpt}"], "out is not set"),
        ([f"ckpt={ckpt}", f"out={tmp_path / 'a_file'}"], "is a file; pass a folder"),
        ([f"ckpt={tmp_path / 'nope.ckpt'}", f"out={tmp_path / 'o'}"], "nope.ckpt does not exist"),
    ]
    for overrides, message in cases:
        with pytest.raises(UserError, match=message):
            export(compose_config(tmp_path, overrides, config_name="export"))
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_export_from_the_command_line(exported, tmp_path):
    ckpt, _ = exported
    result = run_module("vae_lit.export", f"ckpt={ckpt}", "out=model", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert {p.name for p in (tmp_path / "model").iterdir()} == FILES
    assert "from_pretrained" in result.stdout


@pytest.mark.slow
def test_the_notebook_opens_the_folder(exported, tmp_path, monkeypatch):
    _, out = exported
    monkeypatch.setenv("VAE_LIT_CKPT", str(out))
    monkeypatch.setenv("VAE_LIT_IWAE_K", "2")
    notebook = nbformat.read(ROOT / "notebooks" / "explore.ipynb", as_version=4)
    resources = {"metadata": {"path": str(tmp_path)}}
    client = NotebookClient(notebook, timeout=120, kernel_name="python3", resources=resources)
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    assert sum("image/png" in output.get("data", {}) for output in outputs) == 4


def test_every_file_of_the_folder_has_the_same_mode(exported):
    """Issue 19.9: model.safetensors was 0600 while config.json was 0644."""
    _, out = exported
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in out.iterdir()}
    assert len(set(modes.values())) == 1, modes


def test_a_mistyped_local_folder_is_refused_at_once(exported, tmp_path, monkeypatch):
    """Issue 19.8: `exports/sprites-vae` that does not exist was taken for a Hub repo id: 27 s of
    network retries, then a LocalEntryNotFoundError traceback."""
    import time

    (tmp_path / "exports").mkdir()
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    with pytest.raises(UserError, match="model folder exports/sprites-vae does not exist"):
        VAELitModule.from_pretrained("exports/sprites-vae")
    assert time.monotonic() - started < 2


def set_in_config(folder: Path, section: str, key: str, value) -> None:
    config = json.loads((folder / "config.json").read_text())
    (config[section] if section else config)[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def cast_weights(folder: Path, change) -> None:
    import safetensors.torch

    weights = safetensors.torch.load_file(folder / "model.safetensors")
    safetensors.torch.save_file(change(weights), folder / "model.safetensors")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: set_in_config(f, "", "global_step", "abc"), "global_step is 'abc', not an"),
        (
            lambda f: set_in_config(
                f,
                "model",
                "net",
                {
                    **json.loads((f / "config.json").read_text())["model"]["net"],
                    "latent_dim": [64],
                },
            ),
            "its model config does not build",
        ),
        (
            lambda f: cast_weights(f, lambda w: {k: v.long() for k, v in w.items()}),
            "is torch.int64 where the model holds torch.float32",
        ),
        (
            lambda f: cast_weights(f, lambda w: {k: v * float("nan") for k, v in w.items()}),
            "holds NaN or infinite values",
        ),
    ],
)
def test_a_folder_with_wrong_types_or_nan_weights_is_refused_on_load(
    exported, tmp_path, damage, message
):
    """Issue 19.13: these gave tracebacks, loaded silently (int64 weights), or sampled fine and
    crashed eval after all the work (NaN weights)."""
    folder = copy_of(exported[1], tmp_path)
    damage(folder)
    with pytest.raises(UserError, match=message) as error:
        load_checkpoint(folder)
    assert len(str(error.value).splitlines()) == 1
