"""Optimisers and learning-rate schedules of the published recipes.

Ranger is CARes-UNet's optimiser: RAdam (betas 0.95/0.999, eps 1e-5) + Lookahead (k=6, alpha=0.5) +
gradient centralisation on every tensor with more than one dimension. Its Lookahead slow weights
live in the optimiser state, so a checkpoint restores them and a resumed run continues exactly.
"""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


class Ranger(torch.optim.RAdam):
    def __init__(self, params, lr: float = 5e-4, betas=(0.95, 0.999), eps: float = 1e-5, weight_decay: float = 0.0,
                 k: int = 6, alpha: float = 0.5) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        for group in self.param_groups:
            group.setdefault("lookahead_k", k)
            group.setdefault("lookahead_alpha", alpha)
            group.setdefault("lookahead_step", 0)

    @torch.no_grad()
    def step(self, closure=None):
        initial = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and "slow_buffer" not in self.state[p]:  # slow weights start at the initial ones
                    initial[p] = p.detach().clone()
                if p.grad is not None and p.grad.dim() > 1:  # gradient centralisation
                    p.grad.sub_(p.grad.mean(dim=tuple(range(1, p.grad.dim())), keepdim=True))
        loss = super().step(closure)  # (RAdam creates its state on first use, so ours is added after)
        for p, weights in initial.items():
            self.state[p]["slow_buffer"] = weights
        for group in self.param_groups:
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"]:
                continue
            for p in group["params"]:
                if "slow_buffer" not in self.state[p]:
                    continue
                slow = self.state[p]["slow_buffer"]
                slow.add_(p - slow, alpha=group["lookahead_alpha"])
                p.copy_(slow)
        return loss


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "ranger":
        return Ranger(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """Multiplier of the base learning rate at ``epoch`` (0-based), applied for the whole epoch."""
    if epoch < cfg.warmup_epochs:
        return (epoch + 1) / (cfg.warmup_epochs + 1)
    if cfg.schedule == "step":
        lr = cfg.lr
        for start, value in sorted(cfg.lr_steps):
            if epoch >= start:
                lr = value
        return lr / cfg.lr
    if cfg.schedule == "cosine":
        span = max(1, cfg.epochs - cfg.warmup_epochs)
        t = (epoch - cfg.warmup_epochs) / span
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(cfg, epoch))
