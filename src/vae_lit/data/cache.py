"""The decoded cache: every image decoded and resized once into one memory-mapped uint8 file.

Decoding a JPEG costs about a millisecond; copying its decoded row out of the page cache costs
microseconds. So the first use decodes every file once, in parallel, and later epochs and runs read
rows from the file.

File layout: rows (N, C, H, W) from byte 0, then a JSON footer (settings, file list digest, which
files were skipped), then the footer's length and a magic tag. A file cut short loses its tag; a
footer whose digest differs from the folder's means the files changed. Either is rebuilt. Builds go
to a temporary file renamed into place under a file lock, so processes that start together (a
multirun, DDP ranks) wait for one build and never read a half-written file. The temporary files of
builders killed mid-build (kill -9, out of memory) are removed by the next build.

A valid cache is read without taking the lock, so a read-only cache dir (a shared, prebuilt cache)
works as long as it needs no build.
"""

import hashlib
import json
import logging
import os
import shutil
import struct
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from PIL import UnidentifiedImageError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vae_lit.data.image_files import decode_image, unreadable_reason
from vae_lit.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAGIC = b"VAELITC1"
TAIL = struct.Struct("<Q8s")  # footer length, magic
CHUNK = 32  # images per decode task: few enough futures for 200k files, small enough to balance


@dataclass
class DecodedImages:
    """A cache's content: `images[i]` is the decoded `files[i]`; `skipped` holds (file, reason)."""

    images: np.ndarray
    files: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    path: Path | None = None
    built: bool = False


def default_cache_dir() -> Path:
    """The user cache dir (`~/.cache/vae-lit` on Linux): survives runs, safe to delete."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("vae-lit"))


def usable_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's core count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def files_digest(root: Path, files: list[str]) -> str:
    """A digest of the file list with each file's size and modification time. A name that is not
    valid UTF-8 counts as its bytes; an entry that cannot be read (a dangling symlink, a symlink
    loop) counts as its error, and the build skips it like a file that does not decode."""
    digest = hashlib.sha256()
    for name in files:
        try:
            stat = (root / name).stat()
            tail = f"\0{stat.st_size}\0{stat.st_mtime_ns}\n"
        except OSError as exc:
            tail = f"\0error {exc.errno}\n"
        digest.update(os.fsencode(name) + tail.encode())
    return digest.hexdigest()


def stale_builds(path: Path) -> list[Path]:
    """Temporary files of earlier builds of `path`. Builds happen under the lock, so while it is
    held every one of them belongs to a builder that died."""
    return sorted(path.parent.glob(f"{path.name}.*.tmp"))


def cache_path(
    cache_dir: Path, root: Path, image_size: int, channels: int, resize_mode: str
) -> Path:
    """One file per folder and settings: a changed folder rebuilds that file, none pile up."""
    root_id = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in root.resolve().name) or "root"
    return Path(cache_dir) / f"{slug}-{root_id}-{image_size}px-{channels}ch-{resize_mode}.u8"


def read_cache(path: Path, expected: dict) -> tuple[DecodedImages | None, str]:
    """The cache at `path` if it is complete and matches `expected`, else None and the reason."""
    if not path.exists():
        return None, "no cache yet"
    size = path.stat().st_size
    with open(path, "rb") as file:
        if size < TAIL.size:
            return None, "the file was cut short"
        file.seek(size - TAIL.size)
        footer_size, magic = TAIL.unpack(file.read(TAIL.size))
        if magic != MAGIC or footer_size > size - TAIL.size:
            return None, "the file was cut short"
        file.seek(size - TAIL.size - footer_size)
        try:
            footer = json.loads(file.read(footer_size))
        except ValueError:
            return None, "its footer is damaged"
    if any(footer.get(key) != value for key, value in expected.items()):
        return None, "the image files changed since it was built"
    shape = tuple(footer["shape"])
    if int(np.prod(shape)) != size - TAIL.size - footer_size:
        return None, "the file was cut short"
    images = np.memmap(path, np.uint8, "r", shape=shape) if shape[0] else np.empty(shape, np.uint8)
    skipped = [tuple(entry) for entry in footer["skipped"]]
    return DecodedImages(images, footer["files"], skipped, path), ""


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]decoding images"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )


def build_cache(
    path: Path,
    root: Path,
    files: list[str],
    image_size: int,
    channels: int,
    resize_mode: str,
    expected: dict,
    threads: int | None = None,
) -> DecodedImages:
    """Decode `files` (under `root`) in parallel into a temporary file, then rename it to `path`.

    Threads, not processes: Pillow releases the GIL while it decodes and resizes, and threads write
    straight into the memory map with nothing to pickle.
    """
    shape = (channels, image_size, image_size)
    row_bytes = int(np.prod(shape))
    free = shutil.disk_usage(path.parent).free
    if free < len(files) * row_bytes:
        raise UserError(
            f"data.cache_dir={path.parent} needs {len(files) * row_bytes / 1e9:.1f} GB for the "
            f"decoded cache but has {free / 1e9:.1f} GB free; set data.cache_dir to a bigger disk"
        )
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    start = time.perf_counter()
    try:
        with open(temporary, "wb") as file:
            file.truncate(len(files) * row_bytes)
        rows = np.memmap(temporary, np.uint8, "r+", shape=(len(files), *shape)) if files else None
        errors: dict[int, str] = {}

        def decode_chunk(first: int) -> int:
            for i in range(first, min(first + CHUNK, len(files))):
                try:
                    rows[i] = decode_image(root / files[i], image_size, channels, resize_mode)
                except UnidentifiedImageError:
                    errors[i] = "not an image Pillow can read"
                except OSError as exc:
                    errors[i] = unreadable_reason(root / files[i], exc)
                except Exception as exc:  # any file that does not decode is skipped, never fatal
                    errors[i] = str(exc) or type(exc).__name__
            return min(CHUNK, len(files) - first)

        with ThreadPoolExecutor(threads or usable_cores()) as pool, _progress() as bar:
            task = bar.add_task("decode", total=len(files))
            futures = [pool.submit(decode_chunk, first) for first in range(0, len(files), CHUNK)]
            try:
                for future in as_completed(futures):
                    bar.advance(task, future.result())
            except BaseException:  # Ctrl-C: stop after the chunks already running
                for future in futures:
                    future.cancel()
                raise
        kept = [i for i in range(len(files)) if i not in errors]
        if rows is not None:
            for new, old in enumerate(kept):  # close the gaps left by skipped files, in order
                if new != old:
                    rows[new] = rows[old]
            rows.flush()
            del rows
        skipped = [(files[i], errors[i]) for i in sorted(errors)]
        footer = {
            **expected,
            "shape": [len(kept), *shape],
            "files": [files[i] for i in kept],
            "skipped": skipped,
        }
        encoded = json.dumps(footer).encode()
        with open(temporary, "r+b") as file:
            file.truncate(len(kept) * row_bytes)
            file.seek(0, os.SEEK_END)
            file.write(encoded + TAIL.pack(len(encoded), MAGIC))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    log.info(
        f"Built the decoded cache {path} in {seconds:.1f} s "
        f"({len(files) / max(seconds, 1e-9):.0f} images/s, {len(kept)} images)"
    )
    cache, _ = read_cache(path, expected)
    cache.built = True
    return cache


def load_or_build(
    root: Path,
    files: list[str],
    image_size: int,
    channels: int,
    resize_mode: str,
    cache_dir: Path | str | None = None,
    threads: int | None = None,
) -> DecodedImages:
    """The decoded images of `files` under `root`, from the cache when it is valid, else built."""
    root = Path(root)
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    try:
        if not cache_dir.is_dir():
            cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"data.cache_dir={cache_dir} cannot be created ({exc.strerror}); "
            "set data.cache_dir to a writable folder"
        ) from exc
    path = cache_path(cache_dir, root, image_size, channels, resize_mode)
    expected = {
        "format": FORMAT_VERSION,
        "root": str(root.resolve()),
        "image_size": image_size,
        "channels": channels,
        "resize_mode": resize_mode,
        "files_digest": files_digest(root, files),
    }
    cache, reason = read_cache(path, expected)  # no lock: a build lands whole, by a rename
    if cache is not None:
        log.info(f"Reusing the decoded cache {path} ({len(cache.files)} images)")
        return cache
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info(f"Waiting for another process to finish building the decoded cache {path}")
        lock.acquire()
    except OSError as exc:  # a read-only cache dir: reading was fine, building is not
        raise UserError(
            f"data.cache_dir={cache_dir} cannot be written ({exc.strerror}) and holds no usable "
            f"decoded cache of {root} ({reason}); set data.cache_dir to a writable folder"
        ) from exc
    try:
        cache, reason = read_cache(path, expected)  # another process may have just built it
        if cache is not None:
            log.info(f"Reusing the decoded cache {path} ({len(cache.files)} images)")
            return cache
        for stale in stale_builds(path):
            size = stale.stat().st_size
            stale.unlink(missing_ok=True)
            log.info(f"Removed {stale} ({size / 1e6:.1f} MB), left by a build that was killed")
        log.info(f"Building the decoded cache {path} from {len(files)} files ({reason})")
        return build_cache(path, root, files, image_size, channels, resize_mode, expected, threads)
    finally:
        lock.release()
