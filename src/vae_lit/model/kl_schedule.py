"""How the KL weight beta moves with the training step.

`constant` keeps beta fixed; `linear` warms it up from 0 over `warmup_steps`; `cyclical` repeats
that warm-up every `cycle_steps` (Fu et al. 2019, "Cyclical Annealing Schedule"), ramping over the
first `ramp_fraction` of each cycle and holding beta for the rest.
"""

from vae_lit.errors import UserError

KINDS = ("constant", "linear", "cyclical")


class KLSchedule:
    def __init__(
        self,
        kind: str = "constant",
        beta: float = 1.0,
        warmup_steps: int = 0,
        cycle_steps: int = 0,
        ramp_fraction: float = 0.5,
    ):
        if kind not in KINDS:
            raise UserError(
                f"model.objective.kl_schedule.kind={kind!r} is unknown; "
                f"use one of: {', '.join(KINDS)}"
            )
        if beta < 0:
            raise UserError(f"model.objective.kl_schedule.beta={beta} must be >= 0")
        if kind == "linear" and warmup_steps <= 0:
            raise UserError("model.objective.kl_schedule.warmup_steps must be > 0 for kind=linear")
        if kind == "cyclical" and cycle_steps <= 0:
            raise UserError(
                "model.objective.kl_schedule.cycle_steps must be > 0 for kind=cyclical"
            )
        if not 0 < ramp_fraction <= 1:
            raise UserError(
                f"model.objective.kl_schedule.ramp_fraction={ramp_fraction} must be in (0, 1]"
            )
        self.kind, self.beta = kind, float(beta)
        self.warmup_steps, self.cycle_steps = int(warmup_steps), int(cycle_steps)
        self.ramp_fraction = float(ramp_fraction)

    def __call__(self, step: int) -> float:
        if self.kind == "linear":
            return self.beta * min(1.0, step / self.warmup_steps)
        if self.kind == "cyclical":
            phase = (step % self.cycle_steps) / self.cycle_steps
            return self.beta * min(1.0, phase / self.ramp_fraction)
        return self.beta

    def __repr__(self) -> str:
        return (
            f"KLSchedule(kind={self.kind!r}, beta={self.beta}, warmup_steps={self.warmup_steps}, "
            f"cycle_steps={self.cycle_steps}, ramp_fraction={self.ramp_fraction})"
        )
