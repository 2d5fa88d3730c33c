"""SGD with momentum and Adam for fedkd's own training loops, step for step the updates of
torch.optim's single-tensor implementations (bit for bit on CPU: tests/test_optim.py checks it
against the installed torch).

Why not torch.optim itself: the first torch.optim optimizer a process constructs imports
torch._dynamo (about 1.9 s on a 2-core machine with torch 2.13), and every process that trains
pays it once: `fedkd run`, each Ray worker, and each ClientApp process a deployed SuperNode starts
for a message. DP-SGD teachers keep Opacus's optimizers (`fedkd.privacy.dpsgd`).

Owns: `SGD`, `Adam` (`zero_grad(set_to_none=True)`, `step()`). Must not touch: the losses and
loops (`fedkd.distill`).
"""

from __future__ import annotations

import torch


class _Optimizer:
    """The parameters that take steps, and clearing their gradients."""

    def __init__(self, params, lr: float):
        self.params = [p for p in params if p.requires_grad]
        self.lr = float(lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_()
                p.grad.zero_()

    def _with_grads(self):
        """(index, parameter) of every parameter that has a gradient this step."""
        return ((i, p) for i, p in enumerate(self.params) if p.grad is not None)


class SGD(_Optimizer):
    """SGD (Robbins & Monro) with heavy-ball momentum (Polyak) and L2 weight decay added to the
    gradient, as torch.optim.SGD without dampening or Nesterov:
    g = grad + wd * p;  b = g (first step), else b = m * b + g;  p -= lr * b."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.momentum, self.weight_decay = float(momentum), float(weight_decay)
        self.buffers: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def step(self) -> None:
        for i, p in self._with_grads():
            grad = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            if self.momentum != 0:
                if self.buffers[i] is None:
                    self.buffers[i] = grad.detach().clone()
                else:
                    self.buffers[i].mul_(self.momentum).add_(grad, alpha=1.0)
                grad = self.buffers[i]
            p.add_(grad, alpha=-self.lr)


class Adam(_Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction, as torch.optim.Adam without weight decay or
    AMSGrad: m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr)
        (self.beta1, self.beta2), self.eps = betas, eps
        self.state: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.params)
        self.steps = [0] * len(self.params)  # per parameter, as torch counts them

    @torch.no_grad()
    def step(self) -> None:
        for i, p in self._with_grads():
            if self.state[i] is None:
                self.state[i] = (torch.zeros_like(p, memory_format=torch.preserve_format),
                                 torch.zeros_like(p, memory_format=torch.preserve_format))
            exp_avg, exp_avg_sq = self.state[i]
            self.steps[i] += 1
            step = float(self.steps[i])
            grad = p.grad
            exp_avg.lerp_(grad, 1 - self.beta1)
            exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            step_size = self.lr / (1 - self.beta1 ** step)
            denom = (exp_avg_sq.sqrt() / (1 - self.beta2 ** step) ** 0.5).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)
