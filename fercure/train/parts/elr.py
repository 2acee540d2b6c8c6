"""ELR (early-learning regularisation; Liu, Niles-Weed, Razavian, Fernandez-Granda, NeurIPS 2020)
as a part: a memorisation-resistant objective.

Each sample keeps a target t_i, an exponential moving average of the model's own (normalised)
predictions; the loss adds λ · log(1 − <p_i, t_i>), which pulls p_i towards the early-learning
prediction and so resists fitting a wrong label late in training. The targets are per-sample state
saved in every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fercure.train.parts.base import Context, Part, Step, register


@dataclass(frozen=True)
class ElrSettings:
    elr_lambda: float
    elr_beta: float


@register("elr", settings=ElrSettings, enabled=lambda c: c.elr)
class ElrPart(Part):
    def __init__(self, config: ElrSettings, ctx: Context) -> None:
        self.lam, self.beta = float(config.elr_lambda), float(config.elr_beta)
        self.targets = torch.zeros(ctx.n, ctx.num_classes, device=ctx.device)

    def loss(self, out, logits, step: Step):
        p = torch.softmax(logits, dim=1).clamp(1e-4, 1.0 - 1e-4)
        with torch.no_grad():
            q = p.detach() / p.detach().sum(dim=1, keepdim=True)
            new = step.idx[:step.fresh]  # fill rows of a fixed-shape step were updated earlier this epoch
            self.targets[new] = self.beta * self.targets[new] + (1.0 - self.beta) * q[:step.fresh]
        inner = (self.targets[step.idx] * p).sum(dim=1)
        return self.lam * torch.log((1.0 - inner).clamp_min(1e-4)).mean()

    def state(self):
        return {"targets": self.targets}

    def per_sample_state(self):
        return {"targets": self.targets}

    def load_state(self, state):
        if "targets" not in state:
            raise ValueError("the checkpoint has no ELR targets: it was written without --elr")
        self.targets.copy_(state["targets"].to(self.targets.device))
