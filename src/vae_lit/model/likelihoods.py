"""Pixel likelihoods p(x|z): what the decoder's output means.

Each turns the decoder's output maps (`params`, shape (N, decoder_channels, H, W)) into
log p(x|z) per image, a mean image for the grids and a sample. Images are floats in [0, 1]; the
data are 8-bit, so a pixel value is k / 255.

`kind` says what a bits-per-dimension number means under it: `discrete` likelihoods put a
probability on each of the 256 values of a subpixel, so -log2 p(x) / dims is a true code length,
comparable with published numbers (PixelCNN++, IAF, NVAE); `continuous` ones are densities on
[0, 1] (or not even that, for Bernoulli on grey values), whose "bits" compare only with each other.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from vae_lit.errors import UserError

LOG_2PI = math.log(2 * math.pi)
HALF_BIN = 1.0 / 255  # half a bin of an 8-bit value once rescaled to [-1, 1]
EDGE = 1e30  # "infinity" for the open edge bins: finite, so no inf * 0 in the gradients
MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor: a logistic narrower than this is all in one bin


def sum_per_image(values: torch.Tensor) -> torch.Tensor:
    """Sum over every dimension but the first; no copy for channels_last tensors."""
    return values.sum(dim=tuple(range(1, values.dim())))


def check_channels(channels: int) -> int:
    if int(channels) not in (1, 3):
        raise UserError(f"data.channels={channels} must be 1 (grayscale) or 3 (RGB)")
    return int(channels)


class Likelihood(nn.Module):
    """The interface every pixel likelihood implements."""

    name: str = ""
    kind: str = "continuous"  # continuous | discrete

    def __init__(self, channels: int):
        super().__init__()
        self.channels = check_channels(channels)

    @classmethod
    def decoder_channels(cls, channels: int, **options) -> int:
        """How many output maps the decoder needs for images of `channels` channels."""
        return int(channels)

    @property
    def out_channels(self) -> int:
        """The decoder maps this likelihood reads."""
        return self.decoder_channels(self.channels)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x|z) in nats for each image, shape (N,)."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The mean image, (N, C, H, W) in [0, 1]: what reconstruction and sample grids show."""
        raise NotImplementedError

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None):
        """One image drawn from p(x|z), (N, C, H, W) in [0, 1]."""
        raise NotImplementedError


class BernoulliNLL(torch.autograd.Function):
    """Per-pixel BCE with logits: max(l, 0) - x * l + log(1 + exp(-|l|)).

    On CPU, `log1p` (behind `softplus` and `binary_cross_entropy_with_logits`) is ~10x slower than
    `exp`; this spends one `exp` and one `log` a pixel, and its backward is the closed form
    sigmoid(l) - x. Same values as the built-in within fp32 rounding, in half the time.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logits, x)
        log1p_exp = logits.abs().neg_().exp_().add_(1).log_()
        return torch.addcmul(logits.clamp(min=0), x, logits, value=-1.0).add_(log1p_exp)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, x = ctx.saved_tensors
        grad_logits = torch.sigmoid(logits).sub_(x).mul_(grad)
        grad_x = -logits * grad if ctx.needs_input_grad[1] else None
        return grad_logits, grad_x


class Bernoulli(Likelihood):
    """The seed's likelihood: each subpixel a Bernoulli with mean sigmoid(logit), evaluated at
    grey values in [0, 1] (the continuous relaxation every VAE tutorial uses; not a distribution
    over 8-bit images, so its bits/dim are not code lengths)."""

    name = "bernoulli"

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return -sum_per_image(BernoulliNLL.apply(params.float(), x.float()))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None):
        probs = torch.sigmoid(params.float())
        return torch.bernoulli(probs, generator=generator)


class Gaussian(Likelihood):
    """N(x; sigmoid(output), scale^2) per subpixel.

    `learn_scale=true` learns one log-scale per channel by gradient descent (the sigma-VAE's
    learned variant, Rybkin et al. 2021): at its optimum the scale is the channel's residual
    standard deviation, which sets the reconstruction/KL balance that beta otherwise fixes by hand.
    """

    name = "gaussian"

    def __init__(self, channels: int, scale: float = 0.1, learn_scale: bool = False):
        super().__init__(channels)
        if not float(scale) > 0:
            raise UserError(f"model.likelihood.scale={scale} must be > 0 (a pixel std in [0, 1])")
        log_scale = torch.full((self.channels,), math.log(float(scale)))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_scale = self.log_scale.view(1, -1, 1, 1)
        z = (x.float() - torch.sigmoid(params.float())) * torch.exp(-log_scale)
        return -sum_per_image(0.5 * z.pow(2) + log_scale + 0.5 * LOG_2PI)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None):
        mean = torch.sigmoid(params.float())
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return (mean + noise * self.log_scale.exp().view(1, -1, 1, 1)).clamp(0, 1)


def to_symmetric(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], the scale PixelCNN++ writes its bins in (centres k * 2/255 - 1)."""
    return x.float() * 2 - 1


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012)."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_sigmoid_difference(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(sigmoid(upper) - sigmoid(lower)) for upper > lower, without cancellation: evaluated
    on the side where both are small, as sigmoid(a) - sigmoid(b) = sigmoid(-b) - sigmoid(-a)."""
    flip = (upper + lower) > 0
    a = torch.where(flip, -lower, upper)
    b = torch.where(flip, -upper, lower)
    log_a = F.logsigmoid(a)
    return log_a + log1mexp(F.logsigmoid(b) - log_a)


def discretized_logistic_log_prob(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log P(bin of x) under a logistic(mean, exp(log_scale)) cut into 256 bins on [-1, 1], the
    first and last bins open to -inf and +inf (Salimans et al. 2017, PixelCNN++): every value's
    probability is exact, and the 256 sum to 1. `x` is in [-1, 1]; all shapes broadcast."""
    inv_scale = torch.exp(-log_scale.clamp(min=MIN_LOG_SCALE))
    centred = x - mean
    upper = inv_scale * (centred + HALF_BIN)
    lower = inv_scale * (centred - HALF_BIN)
    upper = torch.where(x > 1 - HALF_BIN, torch.full_like(upper, EDGE), upper)
    lower = torch.where(x < -1 + HALF_BIN, torch.full_like(lower, -EDGE), lower)
    return log_sigmoid_difference(upper, lower)


def quantize(x_symmetric: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> the nearest 8-bit value, as a float in [0, 1]."""
    return torch.round((x_symmetric.clamp(-1, 1) + 1) * 127.5) / 255


def logistic_noise(shape, generator, device) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-5, 1 - 1e-5)
    return torch.log(u) - torch.log1p(-u)


class DiscretizedLogistic(Likelihood):
    """One discretized logistic per subpixel, with its own mean and log-scale: a true
    distribution over 8-bit images (Kingma et al. 2016, IAF; Vahdat & Kautz 2020, NVAE)."""

    name = "discretized_logistic"
    kind = "discrete"

    @classmethod
    def decoder_channels(cls, channels: int, **options) -> int:
        return 2 * int(channels)  # mean and log-scale for each channel

    def split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = params.float().split(self.channels, dim=1)
        return mean, log_scale

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mean, log_scale = self.split(params)
        return sum_per_image(discretized_logistic_log_prob(to_symmetric(x), mean, log_scale))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        # the logistic's mean, clipped into the image range (the open edge bins hold the tails)
        mean, _ = self.split(params)
        return (mean.clamp(-1, 1) + 1) / 2

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None):
        mean, log_scale = self.split(params)
        noise = logistic_noise(mean.shape, generator, mean.device)
        return quantize(mean + log_scale.clamp(min=MIN_LOG_SCALE).exp() * noise)


class DiscretizedLogisticMixture(Likelihood):
    """A mixture of `num_components` discretized logistics per pixel, shared by its channels, with
    PixelCNN++'s channel coupling (Salimans et al. 2017): within a component, green's mean moves
    with the red value and blue's with red and green, so colours are not independent.

    Decoder maps, in order: K mixture logits, K*C means, K*C log-scales, K*C(C-1)/2 coupling
    coefficients (tanh-squashed), each block channel-major.
    """

    name = "discretized_logistic_mixture"
    kind = "discrete"

    def __init__(self, channels: int, num_components: int = 10):
        super().__init__(channels)
        if int(num_components) < 1:
            raise UserError(
                f"model.likelihood.num_components={num_components} must be a positive integer"
            )
        self.num_components = int(num_components)

    @staticmethod
    def num_coefficients(channels: int) -> int:
        return channels * (channels - 1) // 2

    @classmethod
    def decoder_channels(cls, channels: int, num_components: int = 10, **options) -> int:
        c = int(channels)
        return int(num_components) * (1 + 2 * c + cls.num_coefficients(c))

    @property
    def out_channels(self) -> int:
        return self.decoder_channels(self.channels, self.num_components)

    def split(self, params: torch.Tensor):
        """-> logits (N, K, H, W); means, log-scales (N, C, K, H, W); coefficients (N, C(C-1)/2,
        K, H, W)."""
        n, _, h, w = params.shape
        k, c = self.num_components, self.channels
        logits, means, log_scales, coefficients = params.float().split(
            [k, k * c, k * c, k * self.num_coefficients(c)], dim=1
        )
        means = means.reshape(n, c, k, h, w)
        log_scales = log_scales.reshape(n, c, k, h, w).clamp(min=MIN_LOG_SCALE)
        coefficients = torch.tanh(coefficients.reshape(n, -1, k, h, w))
        return logits, means, log_scales, coefficients

    def coupled_means(
        self, means: torch.Tensor, coefficients: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """Each channel's mean shifted by the earlier channels' values `x` (N, C, 1 or K, H, W)."""
        shifted, index = [means[:, 0]], 0
        for channel in range(1, self.channels):
            mean = means[:, channel]
            for earlier in range(channel):
                mean = mean + coefficients[:, index] * x[:, earlier]
                index += 1
            shifted.append(mean)
        return torch.stack(shifted, dim=1)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        logits, means, log_scales, coefficients = self.split(params)
        x = to_symmetric(x).unsqueeze(2)  # (N, C, 1, H, W), broadcast over components
        means = self.coupled_means(means, coefficients, x)
        per_channel = discretized_logistic_log_prob(x, means, log_scales)
        per_component = per_channel.sum(1) + torch.log_softmax(logits, dim=1)  # (N, K, H, W)
        return sum_per_image(torch.logsumexp(per_component, dim=1))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        # E[x] per channel, each component's earlier channels at their own means (clipping at the
        # image edges ignored): the smooth image the grids show, not a sample
        logits, means, _, coefficients = self.split(params)
        component_means = self.coupled_means(means, coefficients, means).clamp(-1, 1)
        weights = torch.softmax(logits, dim=1).unsqueeze(1)
        # the weighted sum can round a hair past the edges (-6e-8 seen): clamp once more
        return (((component_means * weights).sum(2) + 1) / 2).clamp(0, 1)

    def sample(self, params: torch.Tensor, generator: torch.Generator | None = None):
        logits, means, log_scales, coefficients = self.split(params)
        u = torch.rand(logits.shape, generator=generator, device=logits.device)
        gumbel = -torch.log(-torch.log(u.clamp_(1e-5, 1 - 1e-5)))
        pick = F.one_hot((logits + gumbel).argmax(1), self.num_components)  # (N, H, W, K)
        pick = pick.permute(0, 3, 1, 2).unsqueeze(1).float()  # (N, 1, K, H, W)
        means = (means * pick).sum(2)  # (N, C, H, W): the chosen component's parameters
        log_scales = (log_scales * pick).sum(2)
        coefficients = (coefficients * pick).sum(2)
        noise = logistic_noise(means.shape, generator, means.device)
        values = []
        index = 0
        for channel in range(self.channels):  # red first: green and blue are coupled to it
            mean = means[:, channel]
            for earlier in range(channel):
                mean = mean + coefficients[:, index] * values[earlier]
                index += 1
            value = mean + log_scales[:, channel].exp() * noise[:, channel]
            values.append(quantize(value) * 2 - 1)  # coupling uses the drawn 8-bit value
        return (torch.stack(values, dim=1) + 1) / 2
