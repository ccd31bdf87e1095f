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
