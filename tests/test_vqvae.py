"""The VQ-VAE (van den Oord et al. 2017): quantizer maths checked by hand, the network at any size,
and `model=vqvae` trained end to end through the real config."""

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import compose_config
from vae_lit.errors import UserError
from vae_lit.networks.vqvae import VQVAE, VectorQuantizer

# A VQ-VAE small enough for seconds on 2 cores: 16 px images, a 4x4 grid of 32 codes.
VQ_TINY = [
    "model=vqvae",
    "data.num_images=96",
    "data.image_size=16",
    "data.batch_size=16",
    "model.net.hidden_channels=[8,16]",
    "model.net.num_residual_blocks=1",
    "model.net.quantizer.num_codes=32",
    "model.net.quantizer.code_dim=8",
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.precision=32-true",
    "logger=csv",
]


def grid(vectors: list[list[float]]) -> torch.Tensor:
    """(N, D) vectors as one (1, D, 1, N) encoder output."""
    return torch.tensor(vectors).t().reshape(1, len(vectors[0]), 1, len(vectors))


def quantizer_with(codebook, counts, decay=0.5, threshold=0.1, kind="ema") -> VectorQuantizer:
    quantizer = VectorQuantizer(
        num_codes=len(codebook),
        code_dim=len(codebook[0]),
        codebook=kind,
        decay=decay,
        dead_code_threshold=threshold,
    )
    codebook = torch.tensor(codebook, dtype=torch.float32)
    counts = torch.tensor(counts, dtype=torch.float32)
    with torch.no_grad():
        quantizer.embedding.copy_(codebook)
        quantizer.ema_count.copy_(counts)
        if kind == "ema":
            quantizer.ema_sum.copy_(codebook * counts.unsqueeze(1))
    return quantizer


def test_straight_through_passes_the_decoders_gradient_to_the_encoder_unchanged():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_codes=16, code_dim=4).eval()
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    decoder = torch.nn.Conv2d(4, 3, 3, padding=1)
    weights = torch.randn(2, 3, 3, 3)  # a loss linear in the decoder's output

    out = quantizer(z_e)
    (decoder(out.quantized) * weights).sum().backward()
    # the decoder's gradient with respect to its input e, the chosen codes
    e = quantizer.lookup(out.codes).requires_grad_(True)
    (decoder(e) * weights).sum().backward()
    torch.testing.assert_close(out.quantized, e, rtol=0, atol=1e-6)  # forward: the codes
    assert torch.equal(z_e.grad, e.grad)
    assert z_e.grad.abs().sum() > 0


def test_commitment_and_codebook_losses_are_the_papers_squared_distances():
    quantizer = quantizer_with([[0.0, 0.0], [10.0, 0.0]], [5, 5], kind="loss").eval()
    z_e = grid([[1.0, 2.0], [8.0, 0.0]]).requires_grad_(True)
    out = quantizer(z_e)
    # ||z_e - e||^2 summed over the grid: (1 + 4) + (4 + 0)
    assert out.commitment.tolist() == [9.0] and out.codebook_loss.tolist() == [9.0]
    out.commitment.sum().backward()
    # the commitment term moves only the encoder: d/dz_e = 2 (z_e - e)
    assert z_e.grad.flatten().tolist() == [2.0, -4.0, 4.0, 0.0]
    assert quantizer.embedding.grad is None
    out = quantizer(z_e)
    out.codebook_loss.sum().backward()
    # the codebook loss moves only the codes: d/de_k = 2 (e_k - z_e) over the vectors that chose k
    assert quantizer.embedding.grad.tolist() == [[-2.0, -4.0], [4.0, -0.0]]


def test_one_ema_update_moves_each_used_code_to_the_expected_running_average():
    """van den Oord et al. 2017, appendix A.1, with decay 0.5 so the numbers are exact:
    N_i <- 0.5 N_i + 0.5 n_i, m_i <- 0.5 m_i + 0.5 sum(z), e_i = m_i / N_i."""
    quantizer = quantizer_with([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], counts=[2, 1, 4]).train()
    out = quantizer(grid([[1.0, 1.0], [-1.0, 3.0], [9.0, 1.0]]))
    assert out.codes.flatten().tolist() == [0, 0, 1]
    # the forward pass uses the codes chosen before the update
    assert out.quantized.detach().flatten().tolist() == [0.0, 0.0, 10.0, 0.0, 0.0, 0.0]
    # code 0: N = 0.5*2 + 0.5*2 = 2, m = 0.5*(0,0) + 0.5*(0,4) = (0,2) -> e = (0,1)
    # code 1: N = 0.5*1 + 0.5*1 = 1, m = 0.5*(10,0) + 0.5*(9,1) = (9.5,0.5) -> e = (9.5,0.5)
    # code 2 (unused): N = 0.5*4 = 2, m = 0.5*(0,40) = (0,20) -> e stays (0,10)
    assert quantizer.ema_count.tolist() == [2.0, 1.0, 2.0]
    assert quantizer.embedding.tolist() == [[0.0, 1.0], [9.5, 0.5], [0.0, 10.0]]


def test_eval_mode_leaves_the_codebook_alone():
    quantizer = quantizer_with([[0.0, 0.0], [10.0, 0.0]], counts=[1, 1]).eval()
    before = quantizer.state_dict()
    before = {key: value.clone() for key, value in before.items()}
    quantizer(grid([[1.0, 1.0], [9.0, 1.0]]))
    assert all(torch.equal(before[k], v) for k, v in quantizer.state_dict().items())


@pytest.mark.parametrize("kind", ["ema", "loss"])
def test_a_dead_code_is_reinitialised_from_an_encoder_output(kind):
    codebook = [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [100.0, 100.0]]
    # code 3 is far from all data and its running count is below the threshold of 0.1
    quantizer = quantizer_with(codebook, counts=[4, 4, 4, 0.05], kind=kind).train()
    batch = [[1.0, 1.0], [9.0, 1.0], [1.0, 9.0], [2.0, -1.0]]
    out = quantizer(grid(batch))
    assert 3 not in out.codes.flatten().tolist()
    assert quantizer.embedding[3].tolist() in batch  # moved onto one of the encoder outputs
    assert quantizer.ema_count[3] == 1.0  # and given time to attract vectors
    assert quantizer.embedding[2].tolist() != codebook[3]  # the live codes stay where they were
    if kind == "ema":
        assert quantizer.ema_sum[3].tolist() == quantizer.embedding[3].tolist()


@pytest.mark.parametrize("threshold", [1.0, 0.1])
def test_the_first_training_step_places_the_unused_codes_on_the_data(threshold):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_codes=8, code_dim=2, dead_code_threshold=threshold).train()
    z_e = torch.randn(1, 2, 4, 4) + 5.0  # far from the codebook's initial [-1/K, 1/K] box
    chosen = quantizer(z_e).codes.unique().tolist()
    assert len(chosen) == 1  # all 16 vectors chose the code nearest to (5, 5)
    (used,) = chosen
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    others = [k for k in range(8) if k != used]
    assert all(code in rows.tolist() for code in quantizer.embedding[others].tolist())
    assert quantizer.ema_count[others].tolist() == [1.0] * 7
    # the used code: counts and sums from 0, N = 0.01 * 16 = 0.16, m = 0.01 * sum -> the mean;
    # under the default threshold of 1 vector per step that is still too little: moved as well
    if threshold < 0.16:
        torch.testing.assert_close(quantizer.embedding[used], rows.mean(0))
        assert quantizer.ema_count[used] == pytest.approx(0.16)
    else:
        assert quantizer.embedding[used].tolist() in rows.tolist()
        assert quantizer.ema_count[used] == 1.0


@pytest.mark.parametrize("size", [16, 17, 31, 64])
def test_the_vqvae_gives_back_any_input_size(size):
    quantizer = VectorQuantizer(num_codes=16, code_dim=4)
    net = VQVAE(quantizer, image_size=size, channels=3, hidden_channels=(8, 16), out_channels=6)
    out = net(torch.rand(2, 3, size, size))
    side = (((size + 1) // 2) + 1) // 2
    assert net.grid_size == side and out.quantized.codes.shape == (2, side, side)
    assert out.params.shape == (2, 6, size, size)
    assert net.decode_codes(torch.zeros(1, side, side, dtype=torch.long)).shape == (
        1,
        6,
        size,
        size,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_codes": 1}, "model.net.quantizer.num_codes=1"),
        ({"codebook": "kmeans"}, "model.net.quantizer.codebook='kmeans' is unknown"),
        ({"decay": 1.0}, "model.net.quantizer.decay=1.0"),
        ({"dead_code_threshold": -1}, "model.net.quantizer.dead_code_threshold=-1"),
    ],
)
def test_impossible_quantizer_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        VectorQuantizer(**kwargs)


def test_the_likelihood_sets_the_decoders_maps(tmp_path: Path):
    from hydra.utils import instantiate

    cfg = compose_config(tmp_path, [*VQ_TINY, "model/likelihood=discretized_logistic"])
    module = instantiate(cfg.model)
    assert module.net.out_channels == 6
    images = module.decode(module.sample_latents(3, seed=0))
    assert images.shape == (3, 3, 16, 16) and 0 <= images.min() and images.max() <= 1


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """One tiny `model=vqvae` training run: (run dir, final metrics)."""
    from vae_lit.train import train

    run_dir = tmp_path_factory.mktemp("vq_run")
    return run_dir, train(compose_config(run_dir, VQ_TINY))


def test_model_vqvae_trains_and_logs_code_use(vq_run):
    run_dir, metrics = vq_run
    for stage in ("train", "val", "test"):
        assert 1 <= metrics[f"{stage}/perplexity"] <= 32
        assert 0 < metrics[f"{stage}/codebook_usage"] <= 1
    # val/test loss: reconstruction NLL + 0.25 * commitment
    expected = metrics["test/recon"] + 0.25 * metrics["test/commitment"]
    assert metrics["test/loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["test/psnr"] > 0 and 0 < metrics["test/mse"] < 1
    results = run_dir / "results"
    assert {"reconstruction_0.png", "sample_0.png", "generation.gif"} <= {
        p.name for p in results.iterdir()
    }


def test_training_says_that_samples_need_a_prior(tmp_path: Path, caplog):
    from hydra.utils import instantiate

    module = instantiate(compose_config(tmp_path, VQ_TINY).model)
    with caplog.at_level("INFO", logger="vae_lit.model.vq_module"):
        module.on_fit_start()
    assert "random codes, not samples" in caplog.text
    assert "python -m vae_lit.train_prior ckpt=" in caplog.text
    assert module.sample_label == "random codes, not samples"  # drawn on the sample grids


def test_a_vqvae_checkpoint_reconstructs_and_refuses_to_sample_without_a_prior(vq_run, tmp_path):
    from vae_lit.persistence.checkpoint import load_checkpoint
    from vae_lit.sample import sample

    run_dir, _ = vq_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    module, _ = load_checkpoint(ckpt)
    x = torch.rand(2, 3, 16, 16)
    assert module.reconstruct(x).shape == x.shape
    cfg = compose_config(tmp_path, [f"ckpt={ckpt}", f"out={tmp_path}/s.png"], "sample")
    with pytest.raises(UserError, match="python -m vae_lit.train_prior ckpt="):
        sample(cfg)


def test_perplexity_is_the_exponential_of_the_code_entropy():
    from vae_lit.model.vq_module import perplexity

    assert perplexity(torch.tensor([5, 5, 0, 0])) == pytest.approx(2.0)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))  # counts 3 and 1
    assert perplexity(torch.tensor([3, 0, 1])) == pytest.approx(math.exp(entropy))
    assert perplexity(torch.ones(512)) == pytest.approx(512)


def test_the_end_of_run_table_does_not_call_a_vqvae_loss_an_elbo(vq_run):
    from rich.console import Console

    from vae_lit.runs.run_report import metrics_table

    _, metrics = vq_run
    console = Console(width=200, record=True)
    console.print(metrics_table(metrics, None, "continuous", vq=True))
    text = console.export_text()
    assert "VQ-VAE loss" in text and "not a bound" in text and "negative ELBO" not in text


def test_a_vqvae_exports_to_a_model_folder_that_gives_it_back_bit_for_bit(vq_run, tmp_path):
    from vae_lit.export import export
    from vae_lit.model.vae_module import VAELitModule
    from vae_lit.model.vq_module import VQVAELitModule
    from vae_lit.persistence.checkpoint import load_checkpoint

    run_dir, _ = vq_run
    ckpt, out = run_dir / "checkpoints" / "last.ckpt", tmp_path / "exported"
    export(compose_config(tmp_path, [f"ckpt={ckpt}", f"out={out}"], config_name="export"))
    card = (out / "README.md").read_text()
    assert "VQVAELitModule.from_pretrained" in card and "vae_lit.train_prior" in card

    original, _ = load_checkpoint(ckpt)
    loaded = VQVAELitModule.from_pretrained(out)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded.reconstruct(x), original.reconstruct(x), rtol=0, atol=0)
    with pytest.raises(UserError, match="holds a VQVAELitModule, not a VAELitModule"):
        VAELitModule.from_pretrained(out)
    from vae_lit.eval import evaluate  # the card's command: eval takes the folder

    eval_overrides = [f"ckpt={out}", "eval.log_to_run=false", f"eval.json={tmp_path / 'e.json'}"]
    metrics = evaluate(compose_config(tmp_path, eval_overrides, "eval"))
    assert 1 <= metrics["perplexity"] <= 32 and metrics["psnr"] > 0


def test_codes_chosen_under_bf16_autocast_are_the_fp32_ones():
    """Autocast runs a matmul in bf16 even after `.float()`: training under bf16-mixed would pick
    other codes than an fp32 evaluation of the same weights."""
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_codes=512, code_dim=64).eval()
    with torch.no_grad():
        quantizer.embedding.copy_(torch.randn(512, 64))
    z_e = torch.randn(8, 64, 8, 8)
    fp32 = quantizer(z_e).codes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(quantizer(z_e).codes, fp32)
        rounded = z_e.bfloat16()  # a bf16 encoder output: the codes of its exact values
        assert torch.equal(quantizer(rounded).codes, quantizer(rounded.float()).codes)


class WaitsForTheDevice(torch.utils._python_dispatch.TorchDispatchMode):
    """Ops whose result's size or value a CUDA host must read back before going on: `.item()`,
    `nonzero` (also behind a boolean index), and `bincount` (which reads its input's range)."""

    SYNCING = {"_local_scalar_dense", "nonzero", "bincount", "masked_select", "unique"}

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        indices = args[1] if name in ("index", "index_put", "index_put_") else ()
        if name in self.SYNCING or any(
            torch.is_tensor(i) and i.dtype == torch.bool for i in indices or ()
        ):
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", ["ema", "loss"])
def test_a_training_step_of_the_quantizer_never_waits_for_the_device(kind):
    torch.manual_seed(0)
    quantizer = VectorQuantizer(num_codes=32, code_dim=4, codebook=kind).train()
    z_e = torch.randn(2, 4, 4, 4, requires_grad=True)
    with WaitsForTheDevice() as mode:
        for _ in range(3):  # some codes die, some are re-initialised
            out = quantizer(z_e)
            (out.quantized.sum() + out.commitment.sum() + out.codebook_loss.sum()).backward()
    assert mode.seen == []


def test_a_training_step_of_the_vqvae_module_never_waits_for_the_device(tmp_path: Path):
    from hydra.utils import instantiate

    torch.manual_seed(0)
    module = instantiate(compose_config(tmp_path, VQ_TINY).model).train()
    batch = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    with WaitsForTheDevice() as mode:
        for _ in range(2):
            module.model_step(batch, "train")["loss"].backward()
    assert mode.seen == []
