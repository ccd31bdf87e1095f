"""Files written whole or not at all: a kill or a full disk never leaves half a file behind.

Every file vae-lit writes goes to a hidden temporary name in its own folder and is renamed over the
target once complete; a rename within one file system is atomic, so a reader sees the old file or
the new one, never a 0-byte or cut-short one. Lightning's own checkpoint writer stages the file in
the system temp folder and copies it over when that is another file system, which a full disk cuts
short: `AtomicCheckpointIO` writes checkpoints the same way as every other file.
"""

import errno
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from vae_lit.errors import UserError

PARTIAL_SUFFIX = ".partial"
# What a full disk looks like: no space, a quota, or a file size limit (`ulimit -f`).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


NEW_FILE_MODE = 0o666 & ~_umask()  # what open() gives a new file: every file alike


def partial_path(path: Path) -> Path:
    """A temporary name beside `path`, unique to this process and call, hidden from globs such as
    `*.ckpt` or `*.png`."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write; it becomes `path` when the block ends without error and
    is removed when it does not."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        yield partial
        if partial.is_file():  # a writer that made its file private (safetensors: 0600)
            os.chmod(partial, NEW_FILE_MODE)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb", **open_args: Any) -> Iterator[IO[Any]]:
    """An open file whose content replaces `path` once it is complete and on disk."""
    with atomic_path(path) as partial, open(partial, mode, **open_args) as file:
        yield file
        file.flush()
        os.fsync(file.fileno())


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_write(path, "wb") as file:
        file.write(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_write(path, "w", encoding="utf-8") as file:
        file.write(text)
    return Path(path)


def check_output_file(path: str | Path, key: str) -> Path:
    """Refuse, in one line and before any work, an output file that cannot be written: a
    directory, a read-only place. A missing folder is created, except a new one at the file
    system's root: `out=/reslts/x.png` is a typo, not a request."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{key}={path} is a folder; pass a file name, e.g. {key}={path}/out.png")
    folder = path.parent
    if not folder.is_dir():
        existing = next(p for p in path.absolute().parents if p.is_dir())
        if existing == existing.parent:  # the nearest existing folder is the root
            raise UserError(
                f"{key}={path}: its folder {folder} does not exist; create it, or pass a path in "
                "an existing folder"
            )
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{key}={path}: cannot create {folder} ({exc.strerror})") from exc
    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"{key}={path} cannot be written ({exc.strerror}); pass {key}=<a writable path>"
        ) from exc
    return path


def remove_stale_partials(folder: Path, pattern: str = "*") -> list[Path]:
    """Remove the temporary files that killed writers of files named `pattern` left under
    `folder`. Only safe while no other process writes such files there: the caller holds the
    folder's lock."""
    stale = [p for p in Path(folder).rglob(f".{pattern}.*{PARTIAL_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def disk_full_error(exc: BaseException | None) -> OSError | None:
    """The out-of-space OSError behind `exc`, looking through chained exceptions."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing each local checkpoint beside its final name and
    renaming it there: a full disk or a kill leaves the previous checkpoint intact."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's way
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_write(path, "wb") as file:
            torch.save(checkpoint, file)


def use_atomic_checkpoints(trainer: Any) -> None:
    """Give the trainer's strategy `AtomicCheckpointIO`, unless it was given a writer of its own
    (asynchronous, remote, ...)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
