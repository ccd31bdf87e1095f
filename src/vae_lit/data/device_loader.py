"""`data.on_device`: the whole uint8 data set on the accelerator, batches cut from it by index.

A GPU trains a 150x150 batch in milliseconds; a DataLoader's worker processes, pickling and
host-to-device copies can then be the bottleneck. When the uint8 array fits in accelerator memory
(CelebA at 150x150 is 13.7 GB), indexing it on the device removes all three.
"""

import math

import torch


class DeviceBatches:
    """Batches of `images[indices]` drawn on the images' device, reshuffled every epoch.

    Under DDP every rank draws the same seeded permutation and keeps its own stride of it, with the
    same number of batches on every rank (as DistributedSampler does), so no rank waits forever.
    """

    def __init__(
        self,
        images: torch.Tensor,
        indices: torch.Tensor,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.images, self.indices = images, indices.to(images.device)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def _per_rank(self) -> int:
        n = len(self.indices)
        return n // self.world_size if self.drop_last else math.ceil(n / self.world_size)

    def __len__(self) -> int:
        per_rank = self._per_rank()
        if self.drop_last:
            return per_rank // self.batch_size
        return math.ceil(per_rank / self.batch_size)

    def __iter__(self):
        order = torch.arange(len(self.indices))
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.indices), generator=generator)
        self.epoch += 1
        per_rank = self._per_rank()
        if self.world_size > 1 and len(order) < per_rank * self.world_size:  # pad by wrapping
            order = order.repeat(math.ceil(per_rank * self.world_size / len(order)))
        mine = self.indices[
            order[self.rank : per_rank * self.world_size : self.world_size].to(self.indices.device)
        ]
        for batch in range(len(self)):
            rows = mine[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield self.images.index_select(0, rows)
