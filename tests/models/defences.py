"""The three defences of issue 20 around the digits MLP: gradients that exist but lie.

Each leaves the MLP's forward pass almost as it is and makes its input gradient useless:

- :class:`PartlyQuantised` rounds 92% of the pixels to the data's own 1/16 grid (clean
  inputs pass unchanged) and leaves 8% differentiable, so the gradient is zero on most
  pixels;
- :class:`Rippled` rounds every pixel and adds a tiny high-frequency ripple, whose
  derivative is all the gradient there is;
- :class:`Mirrored` computes the exact forward pass but mirrors the gradient's sign on
  half the pixels (``x.detach() + (x - x.detach()) * s``); no operation in it lacks a
  gradient, so BPDA has nothing to replace.

And the randomised one: :class:`Noisy` adds Gaussian noise to its input in every forward
pass, so each call scores another draw.

``model = "defences:partly_quantised"`` and a state_dict of the whole module as weights.
"""

from __future__ import annotations

import torch

#: the digits' own grid: pixel values are multiples of 1/16
LEVELS = 16


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def _pixels(share: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(64, generator=generator) < share


class PartlyQuantised(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()
        self.levels = LEVELS
        self.register_buffer("quantised", _pixels(0.92, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rounded = torch.round(x * self.levels) / self.levels
        return self.net(torch.where(self.quantised, rounded, x))


class Rippled(torch.nn.Module):
    def __init__(self, amplitude: float = 1e-3, frequency: float = 600.0) -> None:
        super().__init__()
        self.net = mlp()
        self.levels, self.amplitude, self.frequency = LEVELS, amplitude, frequency

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rounded = torch.round(x * self.levels) / self.levels
        return self.net(rounded + self.amplitude * torch.sin(self.frequency * x))


class Mirrored(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()
        self.register_buffer("sign", torch.where(_pixels(0.5, 2), -1.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.detach() + (x - x.detach()) * self.sign)


class Noisy(torch.nn.Module):
    def __init__(self, sigma: float = 0.3) -> None:
        super().__init__()
        self.net = mlp()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + self.sigma * torch.randn_like(x))


def partly_quantised() -> torch.nn.Module:
    return PartlyQuantised()


def rippled() -> torch.nn.Module:
    return Rippled()


def mirrored() -> torch.nn.Module:
    return Mirrored()


def noisy() -> torch.nn.Module:
    return Noisy()


DEFENCES = {"partly_quantised": PartlyQuantised, "rippled": Rippled, "mirrored": Mirrored}
