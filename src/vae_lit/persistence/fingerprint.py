"""What identifies a trained model on disk, so a fit or a cache made from it is reused only while
the model is the same."""

import hashlib
from pathlib import Path

from vae_lit.persistence.file_layout import CONFIG_FILE, WEIGHTS_FILE


def fingerprint(path: Path) -> str:
    """SHA-256 of a checkpoint file, or of what defines a model folder: its weights and config.
    The evaluation, card and pictures that eval and export write into the folder are not part of
    the model, so writing them changes nothing that was fitted from it."""
    digest = hashlib.sha256()
    files = [path / CONFIG_FILE, path / WEIGHTS_FILE] if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.name.encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
