"""Mutual information gap (Chen et al. 2018): does each ground-truth factor live in one latent?

For every factor v_k, take the mutual information I(z_j; v_k) with each latent dimension, and the
gap between the best and the second-best dimension, divided by H(v_k). 1 means every factor is
captured by exactly one dimension; 0 means no dimension singles it out (or it is spread over
several). Latents (posterior means) are discretised into equal-width bins, as in
disentanglement_lib.
"""

import numpy as np

NUM_BINS = 20


def discretize(codes: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """Each column of (num_images, latent_dim) into `num_bins` equal-width bins over its range."""
    binned = np.empty(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, j], bins=num_bins)
        binned[:, j] = np.digitize(codes[:, j], edges[1:-1])
    return binned


def entropy(labels: np.ndarray) -> float:
    """Entropy in nats of a discrete variable from its samples."""
    p = np.unique(labels, return_counts=True)[1] / len(labels)
    return float(-(p * np.log(p)).sum())


def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """I(a; b) in nats between two discrete variables, from paired samples."""
    a = np.unique(a, return_inverse=True)[1].ravel()
    b = np.unique(b, return_inverse=True)[1].ravel()
    num_b = b.max() + 1
    joint = np.bincount(a * num_b + b, minlength=(a.max() + 1) * num_b).reshape(-1, num_b)
    joint = joint / len(a)
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nonzero = joint > 0
    return float((joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])).sum())


def factor_gaps(codes: np.ndarray, factors: np.ndarray, num_bins: int = NUM_BINS) -> np.ndarray:
    """The normalised gap for each factor column; NaN for a factor that never varies."""
    codes, factors = np.asarray(codes, dtype=np.float64), np.asarray(factors)
    if len(codes) != len(factors):
        raise ValueError(f"{len(codes)} codes but {len(factors)} factor rows")
    binned = discretize(codes, num_bins)
    gaps = np.full(factors.shape[1], np.nan)
    for k in range(factors.shape[1]):
        h = entropy(factors[:, k])
        if h <= 0:
            continue
        mi = sorted(
            (mutual_information(binned[:, j], factors[:, k]) for j in range(binned.shape[1])),
            reverse=True,
        )
        second = mi[1] if len(mi) > 1 else 0.0
        gaps[k] = (mi[0] - second) / h
    return gaps


def mutual_information_gap(
    codes: np.ndarray, factors: np.ndarray, num_bins: int = NUM_BINS
) -> float:
    """MIG of codes (num_images, latent_dim) against integer factors (num_images, num_factors)."""
    gaps = factor_gaps(codes, factors, num_bins)
    if np.isnan(gaps).all():
        raise ValueError("no factor varies over these images, so MIG is undefined")
    return float(np.nanmean(gaps))
