"""Active units (Burda et al. 2016): how many latent dimensions the model actually uses.

A dimension is active when its posterior mean moves with the input: Var_x(E_q[z_d | x]) > 0.01.
A collapsed dimension copies the prior whatever the image, so its mean is constant and its
variance 0; the loss curve cannot show this, the count can.
"""

import torch
from torchmetrics import Metric

ACTIVITY_THRESHOLD = 0.01


class ActiveUnits(Metric):
    """Streams posterior means (batch, latent_dim) and counts the active dimensions.

    Sums are kept in float64 and reduced across processes, so the count is the same under DDP and
    never needs all posterior means at once.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, latent_dim: int, threshold: float = ACTIVITY_THRESHOLD, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim, self.threshold = int(latent_dim), float(threshold)
        zeros = torch.zeros(self.latent_dim, dtype=torch.float64)
        self.add_state("mean_sum", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("square_sum", zeros.clone(), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mu: torch.Tensor) -> None:
        mu = mu.detach().to(torch.float64)
        self.mean_sum += mu.sum(0)
        self.square_sum += mu.pow(2).sum(0)
        self.count += mu.shape[0]

    def variances(self) -> torch.Tensor:
        """Each dimension's posterior-mean variance over the data seen so far."""
        mean = self.mean_sum / self.count
        return (self.square_sum / self.count - mean.pow(2)).clamp(min=0)

    def compute(self) -> torch.Tensor:
        return (self.variances() > self.threshold).sum()


def count_active_units(mu: torch.Tensor, threshold: float = ACTIVITY_THRESHOLD) -> int:
    """Active units among posterior means of a whole data set, shape (num_images, latent_dim)."""
    metric = ActiveUnits(mu.shape[1], threshold).to(mu.device)
    metric.update(mu)
    return int(metric.compute())
