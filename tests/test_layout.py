"""The package's layout: folders by concern with imports running one way (no circle, between
modules or between folders), the entry points on top, and files written before the layout
changed still loading and sampling."""

import ast
import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from vae_lit.model.vae_module import VAELitModule
from vae_lit.model.vq_module import VQVAELitModule
from vae_lit.persistence.checkpoint import load_checkpoint
from vae_lit.persistence.checkpoint_upgrade import moved_target

PACKAGE = ROOT / "src" / "vae_lit"
PRE_MOVE = ROOT / "tests" / "data" / "pre_move"
ENTRY_POINTS = {"train", "train_prior", "eval", "sample", "export", "compare"}
CONCERNS = {
    "callbacks",
    "data",
    "evaluation",
    "loggers",
    "metrics",
    "model",
    "networks",
    "persistence",
    "runs",
    "sampling",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the vae_lit modules it imports, lazy imports inside functions included."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def folder_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() else module


def test_no_module_imports_itself_through_others():
    assert find_cycle(import_graph()) is None


def test_the_folders_import_one_way():
    """Folder A importing folder B and B importing A would make two layers one."""
    folders: dict[str, set[str]] = {}
    for module, imported in import_graph().items():
        here = folder_of(module)
        if module == "vae_lit":  # the package face registers the resolvers
            continue
        folders.setdefault(here, set()).update(
            folder_of(other) for other in imported if folder_of(other) != here
        )
    assert find_cycle(folders) is None


def test_the_top_level_shows_the_concerns_and_the_entry_points():
    entries = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    entries -= {"__init__", "__pycache__", "errors"}  # errors: the one error type of every layer
    assert entries == CONCERNS | ENTRY_POINTS
    for name in ENTRY_POINTS:  # each runs as python -m vae_lit.<name>
        assert 'if __name__ == "__main__":' in (PACKAGE / f"{name}.py").read_text()


def test_old_targets_map_to_classes_that_exist_today():
    assert moved_target("vae_lit.lit_module.VAELitModule") == VAELitModule.__module__ + (
        ".VAELitModule"
    )
    assert moved_target("vae_lit.models.ConvVAE") == "vae_lit.networks.ConvVAE"
    assert moved_target("vae_lit.models.vqvae.VectorQuantizer") == (
        "vae_lit.networks.vqvae.VectorQuantizer"
    )
    assert moved_target("torch.optim.Adam") == "torch.optim.Adam"


REFERENCE = json.loads((PRE_MOVE / "reference.json").read_text()) if PRE_MOVE.exists() else {}
INPUT = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def assert_as_recorded(module, entry: dict, samples: bool) -> None:
    """Within fp32 rounding of the machine that recorded them (kernels differ between CPUs)."""
    reconstructions = module.reconstruct(INPUT)
    assert reconstructions.flatten()[:4].tolist() == pytest.approx(
        entry["reconstruction_first"], abs=1e-5
    )
    total = reconstructions.double().sum().item()
    assert total == pytest.approx(entry["reconstruction_sum"], rel=1e-6)
    if samples:
        drawn = module.sample(2, generator=torch.Generator().manual_seed(0))
        assert drawn.double().sum().item() == pytest.approx(entry["sample_sum"], rel=1e-6)


@pytest.mark.parametrize("name", ["vae.ckpt", "vae_folder"])
def test_a_vae_saved_before_the_move_loads_and_samples_as_recorded(name: str):
    module, config = load_checkpoint(PRE_MOVE / name)
    assert REFERENCE[name]["target"] == "vae_lit.lit_module.VAELitModule"  # the old path
    assert config.model._target_ == "vae_lit.model.vae_module.VAELitModule"
    assert config.model.net._target_ == "vae_lit.networks.ConvVAE"
    assert_as_recorded(module, REFERENCE[name], samples=True)


def test_model_folders_saved_before_the_move_load_through_from_pretrained():
    vae = VAELitModule.from_pretrained(str(PRE_MOVE / "vae_folder"))
    assert_as_recorded(vae, REFERENCE["vae_folder"], samples=True)
    vq = VQVAELitModule.from_pretrained(str(PRE_MOVE / "vq_folder"))
    assert_as_recorded(vq, REFERENCE["vq_folder"], samples=False)


def test_the_sample_command_draws_from_a_checkpoint_saved_before_the_move(tmp_path: Path):
    from conftest import run_module

    out = tmp_path / "grid.png"
    done = run_module(
        "vae_lit.sample", f"ckpt={PRE_MOVE / 'vae.ckpt'}", f"out={out}", "n=4", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.stat().st_size > 0
