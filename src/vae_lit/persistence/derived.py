"""Where files derived from a trained model live: sampler fits and VQ-VAE code caches.

Beside a checkpoint file, in the user's own run dir, when that folder can be written. A model
folder may be someone else's (a Hub download's snapshot, a colleague's export) and a checkpoint may
lie on a read-only share: their derived files go to the user's cache dir instead (`VAE_LIT_CACHE`,
else `$XDG_CACHE_HOME/vae-lit`, else `~/.cache/vae-lit`), in a folder named after the model's
fingerprint. When neither can be written the file is not kept, with one warning: the work is done
again next time, never lost.
"""

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from safetensors import SafetensorError

log = logging.getLogger(__name__)

T = TypeVar("T")
CACHE_ENV = "VAE_LIT_CACHE"


def user_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vae-lit"


def derived_paths(model: Path, name: str, sha256: str) -> list[Path]:
    """Where `<model>.<name>` may live, in the order to look: beside a checkpoint file the user
    can write there, then the cache dir."""
    places = []
    if model.is_file() and os.access(model.parent, os.W_OK):
        places.append(model.parent / f"{model.name}.{name}")
    places.append(user_cache_dir() / "models" / sha256[:16] / f"{model.name}.{name}")
    return places


def save_derived(paths: list[Path], what: str, write: Callable[[Path], T]) -> T | None:
    """`write(path)` at the first of `paths` that can be written; None, with one warning, when
    none can."""
    reasons = []
    for path in paths:
        try:
            return write(path)
        except (OSError, SafetensorError) as exc:  # read-only, a full disk: the next place
            reasons.append(f"{path.parent} ({getattr(exc, 'strerror', None) or exc})")
    log.warning(
        f"The {what} is not saved: {'; '.join(reasons)} cannot be written; it is computed again "
        f"next time (set {CACHE_ENV} to a writable folder to keep it)"
    )
    return None
