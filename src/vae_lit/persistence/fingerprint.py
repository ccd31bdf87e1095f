"""What identifies a trained model on disk, so a fit or a cache made from it is reused only while
the model is the same."""

import hashlib
from pathlib import Path


def fingerprint(path: Path) -> str:
    """SHA-256 of a checkpoint file, or of every file of a checkpoint folder (names included)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
