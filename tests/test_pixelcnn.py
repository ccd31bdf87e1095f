"""The gated PixelCNN prior (van den Oord et al. 2016): causality by gradient and by perturbation,
its NLL by hand, and `vae_lit.train_prior` -> `vae_lit.sample` / `vae_lit.eval` on a real tiny
VQ-VAE."""

import csv
import json

import pytest
import torch

from tests.conftest import ROOT, compose_config, console_noise, run_module
from tests.test_vqvae import VQ_TINY
from vae_lit.errors import UserError, find_user_error
from vae_lit.networks.pixelcnn import GatedPixelCNN

SIDE = 5


def small_pixelcnn(**kwargs) -> GatedPixelCNN:
    torch.manual_seed(0)
    options = dict(num_codes=7, hidden_channels=8, num_layers=5, kernel_size=3, head_channels=16)
    return GatedPixelCNN(**{**options, **kwargs}).double()


def input_gradient(net: GatedPixelCNN, codes: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """|d logits(row, col) / d embedded input| summed per position: (SIDE, SIDE)."""
    captured = {}
    hook = net.embedding.register_forward_hook(lambda m, i, out: captured.setdefault("x", out))
    logits = net(codes)
    hook.remove()
    embedded = captured["x"]
    (grad,) = torch.autograd.grad(logits[:, :, row, col].sum(), embedded)
    return grad.abs().sum(dim=(0, 3))


@pytest.mark.parametrize("position", [(0, 0), (0, 3), (2, 2), (3, 0), (4, 4)])
def test_the_output_depends_on_every_earlier_position_and_no_later_one(position):
    net = small_pixelcnn()
    codes = torch.randint(7, (3, SIDE, SIDE), generator=torch.Generator().manual_seed(1))
    row, col = position
    gradient = input_gradient(net, codes, row, col)
    order = torch.arange(SIDE * SIDE).view(SIDE, SIDE)
    earlier = order < row * SIDE + col
    assert (gradient[~earlier] == 0).all(), "a later position (or the position itself) leaks in"
    assert (gradient[earlier] > 0).all(), "an earlier position is in a blind spot"


def test_changing_later_codes_leaves_the_output_unchanged_and_earlier_ones_change_it():
    net = small_pixelcnn()
    codes = torch.randint(7, (2, SIDE, SIDE), generator=torch.Generator().manual_seed(2))
    row, col = 2, 3
    before = net(codes)[:, :, row, col]
    later = codes.clone()
    later[:, row, col:] = (later[:, row, col:] + 1) % 7  # this position and the rest of its row
    later[:, row + 1 :] = (later[:, row + 1 :] + 3) % 7  # and every row below
    assert torch.equal(net(later)[:, :, row, col], before)
    for earlier in [(row, col - 1), (row - 1, col + 1), (0, 0)]:
        changed = codes.clone()
        changed[:, earlier[0], earlier[1]] = (changed[:, earlier[0], earlier[1]] + 1) % 7
        assert not torch.allclose(net(changed)[:, :, row, col], before), earlier


def test_nll_is_the_sum_of_the_codes_negative_log_softmax():
    net = small_pixelcnn()
    codes = torch.randint(7, (2, 3, 4))
    log_probs = torch.log_softmax(net(codes).double(), dim=1)
    by_hand = [
        -sum(log_probs[b, codes[b, r, c], r, c] for r in range(3) for c in range(4))
        for b in range(2)
    ]
    torch.testing.assert_close(net.nll(codes), torch.stack(by_hand).float())


def test_sampling_is_seeded_and_low_temperature_picks_the_most_likely_code():
    net = small_pixelcnn().float()
    draw = lambda seed, t=1.0: net.sample(4, (3, 4), t, torch.Generator().manual_seed(seed))  # noqa: E731
    first = draw(0)
    assert first.shape == (4, 3, 4) and first.min() >= 0 and first.max() < 7
    assert torch.equal(first, draw(0)) and not torch.equal(first, draw(1))
    greedy = draw(0, t=1e-4)
    # at a temperature near 0 every code is the argmax given the codes drawn before it
    logits = net(greedy)
    assert torch.equal(logits.argmax(1), greedy)
    with pytest.raises(UserError, match="temperature=0"):
        net.sample(1, 2, temperature=0)


@pytest.mark.parametrize(("layers", "kernel"), [(2, 3), (3, 5)])
def test_the_row_by_row_pass_gives_the_whole_pass_logits(layers, kernel):
    """What `sample` runs (the rows above once a row, then the horizontal stack of one row) gives
    the logits of the whole pass at every row, on a grid taller than the rows a position sees, so
    the cut above is exercised too."""
    net = GatedPixelCNN(num_codes=7, hidden_channels=8, num_layers=layers, kernel_size=kernel)
    torch.nn.init.normal_(net.embedding.weight)
    rows = net.rows_seen_above + 4
    codes = torch.randint(7, (3, rows, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = net(codes)
        for r in range(rows):
            row = net.row_logits(codes[:, r : r + 1], net.rows_above(codes, r))
            torch.testing.assert_close(row, whole[:, :, r : r + 1], rtol=1e-5, atol=1e-6)


def test_an_even_kernel_is_a_one_line_error():
    with pytest.raises(UserError, match="prior.kernel_size=4 must be odd"):
        GatedPixelCNN(num_codes=8, kernel_size=4)


# -- vae_lit.train_prior on a real VQ-VAE -------------------------------------------------------
PRIOR_TINY = [
    "trainer=cpu",
    "trainer.max_epochs=3",
    "trainer.precision=32-true",
    "model.net.hidden_channels=16",
    "model.net.num_layers=3",
    "model.net.head_channels=32",
    "batch_size=16",
    "callbacks.prior_sample_grid.num_samples=4",
    "callbacks.prior_sample_grid.nrow=2",
]


@pytest.fixture(scope="module")
def prior_run(tmp_path_factory):
    """A tiny VQ-VAE and a prior trained on its codes: (vqvae ckpt, prior run dir, metrics)."""
    from vae_lit.train import train
    from vae_lit.train_prior import train_prior

    vq_dir = tmp_path_factory.mktemp("vq")
    train(compose_config(vq_dir, [*VQ_TINY, "trainer.max_epochs=2", "test=false"]))
    vq_ckpt = vq_dir / "checkpoints" / "last.ckpt"
    prior_dir = tmp_path_factory.mktemp("prior")
    cfg = compose_config(prior_dir, [f"ckpt={vq_ckpt}", *PRIOR_TINY], "train_prior")
    return vq_ckpt, prior_dir, train_prior(cfg)


@pytest.mark.slow
def test_train_prior_caches_the_codes_and_references_the_vqvae(prior_run, tmp_path, caplog):
    from safetensors import safe_open

    from vae_lit.persistence.checkpoint import read_checkpoint
    from vae_lit.train_prior import train_prior

    vq_ckpt, prior_dir, metrics = prior_run
    assert metrics["val/loss"] > 0 and "test/loss" in metrics
    cache = vq_ckpt.parent / "last.ckpt.codes.safetensors"
    with safe_open(str(cache), framework="pt") as codes:
        train_codes = codes.get_tensor("train")
    assert train_codes.shape == (76, 4, 4) and train_codes.max() < 32  # 96 - 2 * 10, 4x4 grids
    prior_ckpt = prior_dir / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(prior_ckpt)  # weights_only: plain values only
    model_cfg = checkpoint["vae_lit_config"]["model"]
    assert model_cfg["vqvae_ckpt"] == str(vq_ckpt.resolve())
    assert len(model_cfg["vqvae_sha256"]) == 64 and model_cfg["net"]["num_codes"] == 32
    assert not any(key.startswith(("vqvae", "_vqvae")) for key in checkpoint["state_dict"])
    assert (prior_dir / "results" / "prior_sample_2.png").is_file()
    # a second prior on the same VQ-VAE reads the cache instead of running the encoder
    mtime = cache.stat().st_mtime_ns
    cfg = compose_config(
        tmp_path, [f"ckpt={vq_ckpt}", *PRIOR_TINY, "trainer.max_epochs=1"], "train_prior"
    )
    with caplog.at_level("INFO", logger="vae_lit.model.code_prior"):
        train_prior(cfg)
    assert "Reusing the codes cached in" in caplog.text and cache.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_train_prior_prints_no_warning_and_no_lightning_tip(prior_run, tmp_path):
    """`python -m vae_lit.train_prior`'s console, as `vae_lit.train`'s, has no warnings (a normal
    run's never has) and no advertisement for Lightning's hosted logger."""
    vq_ckpt, _, _ = prior_run
    result = run_module(
        "vae_lit.train_prior",
        f"ckpt={vq_ckpt}",
        *PRIOR_TINY,
        "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1",  # 4 batches: Lightning warns about a longer interval
        f"hydra.run.dir={tmp_path / 'prior'}",
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert console_noise(result) == []


@pytest.mark.slow
def test_sample_and_eval_take_the_prior_checkpoint(prior_run, tmp_path):
    from vae_lit.eval import evaluate
    from vae_lit.sample import sample

    _, prior_dir, _ = prior_run
    prior_ckpt = prior_dir / "checkpoints" / "last.ckpt"
    out = tmp_path / "faces.png"
    cfg = compose_config(
        tmp_path,
        [f"ckpt={prior_ckpt}", "n=4", "nrow=2", f"out={out}", "temperature=0.7"],
        "sample",
    )
    assert sample(cfg) == out and out.stat().st_size > 0
    json_path = tmp_path / "eval.json"
    cfg = compose_config(
        tmp_path, [f"ckpt={prior_ckpt}", f"eval.json={json_path}", "eval.prior_samples=16"], "eval"
    )
    metrics = evaluate(cfg)
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(metrics))
    assert metrics["nll"] == pytest.approx(metrics["prior_nll"] + metrics["recon"])
    assert metrics["bits_per_dim"] == pytest.approx(
        metrics["nll"] / (3 * 16 * 16 * 0.693147), 1e-4
    )
    assert 1 <= metrics["perplexity"] <= 32 and 0 < metrics["codebook_usage"] <= 1
    # the prior learned the VQ-VAE's few used codes: its draws are likelier than uniform codes
    assert metrics["prior_nll_drawn"] < metrics["prior_nll_uniform"]
    assert metrics["uniform_code_nll"] == pytest.approx(16 * torch.log(torch.tensor(32.0)).item())


@pytest.mark.slow
def test_a_changed_vqvae_checkpoint_is_refused_in_one_line(prior_run, tmp_path):
    import shutil

    vq_ckpt, prior_dir, _ = prior_run
    prior_ckpt = prior_dir / "checkpoints" / "last.ckpt"
    moved = tmp_path / "vq.ckpt"
    shutil.copy(vq_ckpt, moved)
    with open(vq_ckpt, "ab") as f:  # the VQ-VAE's file changed (e.g. training went on)
        f.write(b"\0")
    try:
        result = run_module(
            "vae_lit.sample", f"ckpt={prior_ckpt}", f"hydra.run.dir={tmp_path}", cwd=ROOT
        )
    finally:
        shutil.copy(moved, vq_ckpt)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"vae-lit: error: the VQ-VAE checkpoint {vq_ckpt.resolve()} changed since this prior was "
        f"trained on its codes; train the prior again: python -m vae_lit.train_prior "
        f"ckpt={vq_ckpt.resolve()}"
    ]


def test_train_prior_refuses_a_gaussian_vae(tiny_run, tmp_path):
    from vae_lit.train_prior import train_prior

    ckpt, _ = tiny_run
    cfg = compose_config(tmp_path, [f"ckpt={ckpt}", *PRIOR_TINY], "train_prior")
    with pytest.raises(UserError, match="is not a VQ-VAE checkpoint"):
        train_prior(cfg)


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, 0), ({"LOCAL_RANK": "1"}, 1), ({"SLURM_LOCALID": "3"}, 3), ({"LOCAL_RANK": "5"}, 1)],
)
def test_each_ddp_rank_extracts_codes_on_its_own_gpu(monkeypatch, env, expected):
    """Under DDP every rank runs train_prior's code extraction before Lightning picks devices: on
    cuda (GPU 0) each would crowd the first card. (The CUDA queries answer as 4 GPUs would.)"""
    from vae_lit.train_prior import this_process_gpu

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert this_process_gpu() == torch.device("cuda", expected)


# -- issue 19: codebooks above int16, a guarded and resumable run dir, a moved logs/ -------------
ONE_STEP = ["trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "test=false"]


@pytest.mark.slow
def test_a_codebook_above_32767_codes_trains_a_prior_and_a_wrapped_cache_is_redone(
    tmp_path, caplog
):
    """Issue 19.3: codes were cached as int16 and wrapped above 32767; train_prior died with an
    IndexError, and the corrupt cache was reused on every rerun."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vae_lit.train import train
    from vae_lit.train_prior import train_prior

    vq_dir = tmp_path / "vq"
    big = ["model.net.quantizer.num_codes=40000", "model.net.quantizer.dead_code_threshold=0"]
    train(compose_config(vq_dir, [*VQ_TINY, *big, *ONE_STEP]))
    vq_ckpt = vq_dir / "checkpoints" / "last.ckpt"
    # the codes below 32768 moved far away: every image is coded with the high ones
    checkpoint = torch.load(vq_ckpt, weights_only=True)
    checkpoint["state_dict"]["net.quantizer.embedding"][:32768] += 1e4
    torch.save(checkpoint, vq_ckpt)
    prior = [f"ckpt={vq_ckpt}", *PRIOR_TINY, "trainer.max_epochs=1", *ONE_STEP]
    train_prior(compose_config(tmp_path / "prior", prior, "train_prior"))
    cache = vq_ckpt.parent / "last.ckpt.codes.safetensors"
    with safe_open(str(cache), framework="pt") as saved:
        codes, key = {k: saved.get_tensor(k) for k in saved.keys()}, saved.metadata()
    assert codes["train"].dtype == torch.int32 and int(codes["train"].max()) > 32767
    # the cache an older vae-lit wrote: the same key, int16 codes that wrapped below zero
    save_file({k: v.to(torch.int16) for k, v in codes.items()}, str(cache), metadata=key)
    with caplog.at_level("WARNING", logger="vae_lit.model.code_prior"):
        train_prior(compose_config(tmp_path / "prior2", prior, "train_prior"))
    assert "is not a usable codes cache (its train codes leave 0..39999)" in caplog.text
    with safe_open(str(cache), framework="pt") as saved:
        assert saved.get_tensor("train").dtype == torch.int32  # extracted and cached again


@pytest.mark.slow
def test_train_prior_guards_its_run_dir_and_resumes(prior_run, tmp_path, capsys):
    """Issue 19.5: the same command into the same dir silently started over (last.ckpt and the
    pictures overwritten, epoch_NNN-v1.ckpt, a second history in metrics.csv); resume=auto was
    not a config key."""
    from vae_lit.train_prior import train_prior

    vq_ckpt, _, _ = prior_run
    run_dir = tmp_path / "prior"
    args = [f"ckpt={vq_ckpt}", *PRIOR_TINY, "test=false"]
    train_prior(compose_config(run_dir, [*args, "trainer.max_epochs=1"], "train_prior"))
    first = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    again = compose_config(run_dir, [*args, "trainer.max_epochs=2"], "train_prior")
    with pytest.raises(UserError, match=f"{run_dir} already holds a run .*add resume=auto"):
        train_prior(again)
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == first
    resumed = compose_config(
        run_dir, [*args, "trainer.max_epochs=2", "resume=auto"], "train_prior"
    )
    train_prior(resumed)
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert not [n for n in names if "-v1" in n], names
    (metrics,) = run_dir.rglob("metrics.csv")
    with open(metrics) as file:
        epochs = [row["epoch"] for row in csv.DictReader(file)]
    assert set(epochs) == {"0", "1"}  # one history: epoch 1 appended under epoch 0, one header


@pytest.mark.slow
def test_a_prior_finds_its_vqvae_after_logs_moved_or_takes_vqvae_on_the_command_line(
    prior_run, tmp_path
):
    """Issue 19.6: a prior stored its VQ-VAE's absolute path only: moving logs/ made it unusable,
    with no override."""
    import shutil

    from vae_lit.sample import sample

    vq_ckpt, prior_dir, _ = prior_run
    vq_run = vq_ckpt.parents[1]
    moved = tmp_path / "moved_logs"
    shutil.copytree(vq_run, moved / vq_run.name)
    shutil.copytree(prior_dir, moved / prior_dir.name)
    prior_ckpt = moved / prior_dir.name / "checkpoints" / "last.ckpt"
    hidden = vq_run.with_name(vq_run.name + "_hidden")
    vq_run.rename(hidden)  # the old logs/ is gone
    try:
        out = tmp_path / "a.png"
        cfg = compose_config(tmp_path, [f"ckpt={prior_ckpt}", "n=4", f"out={out}"], "sample")
        assert sample(cfg) == out
        alone = tmp_path / "alone.ckpt"  # a prior copied away from its logs/
        shutil.copy(prior_ckpt, alone)
        cfg = compose_config(tmp_path, [f"ckpt={alone}", "n=4", f"out={out}"], "sample")
        with pytest.raises(Exception) as error:  # noqa: PT011  Hydra wraps it; the CLI unwraps
            sample(cfg)
        assert "is gone; pass vqvae=<its new path> if it moved" in str(
            find_user_error(error.value)
        )
        new_vq = moved / vq_run.name / "checkpoints" / "last.ckpt"
        overrides = [f"ckpt={alone}", "n=4", f"out={out}", f"vqvae={new_vq}"]
        assert sample(compose_config(tmp_path, overrides, "sample")) == out
    finally:
        hidden.rename(vq_run)
