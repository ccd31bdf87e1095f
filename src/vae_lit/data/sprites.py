"""A dSprites-style data set, rendered on the fly: coloured 2D shapes with known factors.

No download: images come from a seeded generator, so every machine gets the same data. The factors
(shape, colour, scale, rotation, x, y) are kept as integer indices into the grids below, so
evaluation can score how well a latent code separates them (mutual information gap).
"""

import math

import numpy as np

SHAPES = ("square", "ellipse", "triangle", "heart")
COLOURS = np.array(
    [
        [1.0, 0.2, 0.2],
        [0.2, 0.9, 0.2],
        [0.25, 0.4, 1.0],
        [1.0, 0.9, 0.2],
        [0.9, 0.3, 0.9],
        [0.2, 0.9, 0.9],
    ],
    dtype=np.float32,
)
SCALES = np.linspace(0.55, 1.0, 6, dtype=np.float32)
ROTATIONS = np.linspace(0, 2 * math.pi, 40, endpoint=False, dtype=np.float32)
POSITIONS = np.linspace(-0.38, 0.38, 16, dtype=np.float32)
FACTOR_NAMES = ("shape", "colour", "scale", "rotation", "x", "y")
FACTOR_SIZES = (
    len(SHAPES),
    len(COLOURS),
    len(SCALES),
    len(ROTATIONS),
    len(POSITIONS),
    len(POSITIONS),
)
SUPERSAMPLE = 2  # render at twice the size and average: smooth edges at any resolution
BASE_RADIUS = 0.6  # large shapes: colour and shape then carry enough pixels to learn fast


def sample_factors(num_images: int, seed: int) -> np.ndarray:
    """Uniformly drawn factor indices, shape (num_images, 6), columns in FACTOR_NAMES order."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, size, num_images) for size in FACTOR_SIZES], axis=1)


def _inside(shape: np.ndarray, lx: np.ndarray, ly: np.ndarray) -> np.ndarray:
    """Whether local coordinates (shape-centred, unit radius) fall inside each image's shape."""
    square = np.maximum(np.abs(lx), np.abs(ly)) <= 0.8
    ellipse = lx**2 + (ly / 0.55) ** 2 <= 1.0
    triangle = (ly >= -0.5) & (math.sqrt(3) * lx + ly <= 1.0) & (-math.sqrt(3) * lx + ly <= 1.0)
    hx, hy = 1.15 * lx, 1.15 * ly + 0.25
    heart = (hx**2 + hy**2 - 1.0) ** 3 - hx**2 * hy**3 <= 0.0
    s = shape[:, None, None]
    return np.where(s == 0, square, np.where(s == 1, ellipse, np.where(s == 2, triangle, heart)))


def render_sprites(factors: np.ndarray, image_size: int, channels: int = 3) -> np.ndarray:
    """Render one image per row of `factors`: uint8 array (N, channels, image_size, image_size)."""
    side = image_size * SUPERSAMPLE
    grid = (np.arange(side, dtype=np.float32) + 0.5) / side * 2 - 1
    v, u = np.meshgrid(grid, grid, indexing="ij")
    out = np.empty((len(factors), channels, image_size, image_size), dtype=np.uint8)
    for start in range(0, len(factors), 256):
        f = factors[start : start + 256]
        radius = BASE_RADIUS * SCALES[f[:, 2]][:, None, None]
        angle = ROTATIONS[f[:, 3]][:, None, None]
        dx = u[None] - POSITIONS[f[:, 4]][:, None, None]
        dy = v[None] - POSITIONS[f[:, 5]][:, None, None]
        lx = (np.cos(angle) * dx + np.sin(angle) * dy) / radius
        ly = (-np.sin(angle) * dx + np.cos(angle) * dy) / radius
        mask = _inside(f[:, 0], lx, -ly).astype(np.float32)  # -ly: image rows grow downwards
        mask = mask.reshape(len(f), image_size, SUPERSAMPLE, image_size, SUPERSAMPLE).mean((2, 4))
        colour = COLOURS[f[:, 1]]
        if channels == 1:
            colour = colour @ np.array([[0.299], [0.587], [0.114]], dtype=np.float32)
        images = mask[:, None] * colour[:, :, None, None]
        out[start : start + len(f)] = np.round(images * 255).astype(np.uint8)
    return out
