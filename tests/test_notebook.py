"""notebooks/explore.ipynb runs top to bottom on a real tiny checkpoint; git keeps no outputs."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"


def test_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_on_a_checkpoint(tiny_run, tmp_path: Path, monkeypatch):
    ckpt, _ = tiny_run
    monkeypatch.setenv("VAE_LIT_CKPT", str(ckpt))  # the kernel inherits the environment
    monkeypatch.setenv("VAE_LIT_IWAE_K", "4")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
        env={**os.environ},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    pictures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(pictures) == 4  # reconstructions, samples, interpolations, traversals
    text = "".join(
        output.get("text", "") + output.get("data", {}).get("text/plain", "") for output in outputs
    )
    assert str(ckpt) in text
    assert "IWAE NLL (k=4)" in text and "active units" in text
    assert list(tmp_path.iterdir()) == []  # exploring writes nothing


@pytest.mark.slow
def test_notebook_says_in_one_line_that_a_vqvae_is_not_for_it(tmp_path: Path, monkeypatch):
    """Issue 19.11: a VQ-VAE folder failed with "too many values to unpack", a prior checkpoint
    with an AttributeError."""
    import nbclient.exceptions

    from tests.conftest import compose_config
    from tests.test_vqvae import VQ_TINY
    from vae_lit.train import train

    train(
        compose_config(tmp_path / "vq", [*VQ_TINY, "test=false", "trainer.limit_train_batches=1"])
    )
    monkeypatch.setenv("VAE_LIT_CKPT", str(tmp_path / "vq" / "checkpoints" / "last.ckpt"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
        env={**os.environ},
    )
    with pytest.raises(nbclient.exceptions.CellExecutionError) as error:
        client.execute()
    assert "holds a VQVAELitModule; this notebook explores a VAE's latent vector" in str(
        error.value
    )
