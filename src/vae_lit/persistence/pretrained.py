"""A model folder anyone can load without running a pickle, in the Hugging Face Hub's layout:
`model.safetensors` (weights only), `config.json` (the resolved model and data configs) and a
`README.md` model card. `VAELitModule` gets `save_pretrained`, `from_pretrained` and `push_to_hub`
from huggingface_hub's `ModelHubMixin`; this module fills in the framework-specific parts.

    module = VAELitModule.from_pretrained("exports/sprites-vae")   # or "<user>/<repo>" on the Hub
    module.push_to_hub("<user>/sprites-vae")                       # needs `hf auth login`
"""

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import yaml
from huggingface_hub import ModelCard, ModelHubMixin, hf_hub_download
from omegaconf import DictConfig, OmegaConf

from vae_lit.errors import UserError
from vae_lit.persistence.atomic_write import atomic_path, write_text_atomic
from vae_lit.persistence.checkpoint import load_checkpoint
from vae_lit.persistence.file_layout import CONFIG_FILE, FOLDER_FORMAT, WEIGHTS_FILE

CARD_FILE = "README.md"
SAMPLE_FILE = "sample.png"  # the run's sample grid, when export finds one
EVAL_FILE = "eval.json"

# (key in eval.json, row label, format): the card's evaluation table
EVAL_ROWS = (
    ("neg_elbo", "negative ELBO (nats)", "{:.2f}"),
    ("recon", "reconstruction (nats)", "{:.2f}"),
    ("kl", "KL (nats)", "{:.2f}"),
    ("iwae_nll", "IWAE NLL (nats, k={iwae_k})", "{:.2f}"),
    ("bits_per_dim", "bits per dim", "{:.4f}"),
    ("mse", "MSE", "{:.5f}"),
    ("psnr", "PSNR (dB)", "{:.2f}"),
    ("active_units", "active units (of {latent_dim})", "{}"),
    ("mig", "MIG", "{:.3f}"),
    ("fid", "FID", "{:.2f}"),
)


VAE_MODULE = "vae_lit.model.vae_module.VAELitModule"


def model_card(
    config: dict[str, Any],
    metadata: str,
    eval_metrics: dict[str, Any] | None = None,
    sample_image: str | None = None,
) -> str:
    """The README.md of a model folder: what the model is, its data, its numbers, its samples."""
    model, data = config.get("model") or {}, config.get("data") or {}
    net = model.get("net") or {}
    name = str(net.get("_target_", "a network")).rsplit(".", 1)[-1]
    size, channels = net.get("image_size"), net.get("channels")
    facts = [f"{net['latent_dim']} latent dimensions"] if "latent_dim" in net else []
    if size and channels:
        facts.append(f"{size}x{size} images, {channels} channel{'s' if channels != 1 else ''}")
    data_name = str(data.get("_target_", "unrecorded data")).rsplit(".", 1)[-1]
    step, epoch = config.get("global_step"), config.get("epoch")
    module_path, module_class = str(model.get("_target_", VAE_MODULE)).rsplit(".", 1)
    vq = module_class == "VQVAELitModule"
    usage = (  # a VQ-VAE samples only through a prior over its codes, trained afterwards
        ["reconstructions = model.reconstruct(images)  # images: floats in [0, 1], (N, C, H, W)"]
        if vq
        else ["images = model.sample(16)  # floats in [0, 1], (16, C, H, W)"]
    )
    commands = (
        "From the command line: `python -m vae_lit.eval ckpt=<this folder>` scores its "
        "reconstructions and code use on the test split. It samples once a prior over its codes "
        "is trained from the run's checkpoint: `python -m vae_lit.train_prior ckpt=<.ckpt>`."
        if vq
        else "From the command line: `python -m vae_lit.sample ckpt=<this folder>` draws a grid, "
        "`python -m vae_lit.eval ckpt=<this folder>` scores it on the test split."
    )
    kind = "VQ-VAE" if vq else "VAE"
    lines = [
        "---",
        metadata.strip(),
        "---",
        "",
        f"# A vae-lit {kind}: {name}" + (f", {', '.join(facts)}" if facts else ""),
        "",
        f"A {'vector-quantised' if vq else 'variational'} autoencoder trained with vae-lit on "
        f"{data_name}, saved at step {step} (epoch {epoch}). This folder holds no pickle: "
        f"`{WEIGHTS_FILE}` (the weights) and `{CONFIG_FILE}` (the resolved model and data "
        "configs).",
        "",
        "```python",
        f"from {module_path} import {module_class}",
        "",
        f'model = {module_class}.from_pretrained("<this folder, or the Hub repo id>")',
        *usage,
        "```",
        "",
        commands,
        "",
    ]
    if sample_image:
        lines += ["## Samples", "", f"![Samples from the prior]({sample_image})", ""]
    if eval_metrics:
        lines += eval_table(eval_metrics)
    lines += ["## Model", "", "```yaml", yaml.safe_dump(model, sort_keys=False).strip(), "```", ""]
    lines += ["## Data", "", "```yaml", yaml.safe_dump(data, sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def eval_table(metrics: dict[str, Any]) -> list[str]:
    split, count = metrics.get("split", "test"), metrics.get("num_images", "?")
    rows = ["## Evaluation", "", f"`vae_lit.eval` on the {split} split, {count} images:", ""]
    rows += ["| metric | value |", "|---|---:|"]
    for key, label, number in EVAL_ROWS:
        if isinstance(metrics.get(key), int | float):
            rows.append(f"| {label.format(**metrics)} | {number.format(metrics[key])} |")
    return [*rows, ""]


class PretrainedVAE(
    ModelHubMixin,
    library_name="vae-lit",
    pipeline_tag="unconditional-image-generation",
    tags=["vae", "variational-autoencoder", "pytorch-lightning", "image-generation"],
):
    """save_pretrained / from_pretrained / push_to_hub for a VAELitModule or a VQVAELitModule.

    The config that rebuilds the module is `_hub_mixin_config` (the mixin's place for it): set by
    `vae_lit.persistence.checkpoint.load_checkpoint` and so by `from_pretrained`; a module built by
    hand saves
    with `save_pretrained(dir, config={"model": <its resolved model config>, ...})`.
    """

    def pretrained_config(self, config: dict[str, Any] | None = None) -> dict[str, Any]:
        config = config if config is not None else self._hub_mixin_config
        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
        model = (config or {}).get("model")
        if not isinstance(model, dict) or "_target_" not in model:
            raise UserError(
                "this module does not know the config that built it; load it with load_checkpoint "
                "or from_pretrained, or pass save_pretrained(config={'model': ...})"
            )
        return {"vae_lit_format": FOLDER_FORMAT, **config}

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        config: dict[str, Any] | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs,
    ) -> str | None:
        """Write the model folder, each file to a temporary name first; optionally push it.

        As the mixin's, but the card is always rewritten: it describes these weights.
        """
        folder = Path(save_directory)
        config = self.pretrained_config(config)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_pretrained(folder)
        config_text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        write_text_atomic(folder / CONFIG_FILE, config_text)
        card = self.generate_model_card(config=config, **(model_card_kwargs or {}))
        write_text_atomic(folder / CARD_FILE, str(card))
        if push_to_hub:
            return self.push_to_hub(
                repo_id or folder.name,
                config=config,
                model_card_kwargs=model_card_kwargs,
                **push_to_hub_kwargs,
            )
        return None

    def _save_pretrained(self, save_directory: Path) -> None:
        """The weights, as contiguous CPU copies: safetensors keeps no strides (channels_last)."""
        weights = {
            key: value.detach().to("cpu").clone(memory_format=torch.contiguous_format)
            for key, value in self.state_dict().items()
        }
        with atomic_path(save_directory / WEIGHTS_FILE) as partial:
            safetensors.torch.save_file(weights, str(partial), metadata={"format": "pt"})

    def generate_model_card(
        self,
        *args,
        config: dict[str, Any] | None = None,
        eval_metrics: dict[str, Any] | None = None,
        sample_image: str | None = None,
        **kwargs,
    ) -> ModelCard:
        metadata = self._hub_mixin_info.model_card_data.to_yaml()
        text = model_card(self.pretrained_config(config), metadata, eval_metrics, sample_image)
        return ModelCard(text)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        map_location: str = "cpu",
    ):
        """A model folder, or a Hub repo id (`<user>/<name>`) downloaded to the Hub's cache.

        As the mixin's, but config.json is read by vae-lit's own loader, which checks it before
        anything is built and says in one line what is wrong with a folder; and no other keyword
        arguments, since the module is built from config.json alone.
        """
        path = Path(pretrained_model_name_or_path).expanduser()
        if path.is_file():
            raise UserError(
                f"{path} is a file; pass a model folder (python -m vae_lit.export writes one) or "
                "a Hub repo id, or load a .ckpt with "
                "vae_lit.persistence.checkpoint.load_checkpoint"
            )
        # a Hub repo id is `<user>/<name>`; `exports/sprites-vae` beside an exports/ folder is a
        # mistyped local path, which must not wait on the network's retries
        local = (
            path.is_absolute()
            or str(pretrained_model_name_or_path).startswith((".", "~"))
            or len(path.parts) > 2
            or (len(path.parts) == 2 and Path(path.parts[0]).is_dir())
        )
        if local and not path.exists():
            raise UserError(
                f"model folder {path} does not exist; pass a folder python -m vae_lit.export "
                "wrote, or a Hub repo id <user>/<name>"
            )
        return cls._from_pretrained(
            model_id=str(path) if path.is_dir() else str(pretrained_model_name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            map_location=map_location,
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
    ):
        folder = Path(model_id)
        if not folder.is_dir():
            for name in (CONFIG_FILE, WEIGHTS_FILE):
                downloaded = hf_hub_download(
                    repo_id=model_id,
                    filename=name,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    token=token,
                    local_files_only=local_files_only,
                )
            folder = Path(downloaded).parent  # both files of one revision share its snapshot dir
        module, _ = load_checkpoint(folder, map_location=map_location)
        if not isinstance(module, cls):
            raise UserError(f"{model_id} holds a {type(module).__name__}, not a {cls.__name__}")
        return module
