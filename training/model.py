"""The learnable style: a per-channel tone curve followed by a 3D colour LUT, both differentiable in torch.

A LUT captures a grade (teal shadows, orange highlights, muted greens) as a smooth map of colour space, applies in
milliseconds at any resolution and cannot alter identity or geometry. The smoothness penalty keeps colours that the
examples never show close to their neighbours instead of leaving them at arbitrary values.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class LutStyleModel(nn.Module):
    """`forward(rgb)`: rgb (..., 3) in 0..1 -> styled rgb (..., 3). LUT indexed `[r, g, b]`, initialised to identity."""

    def __init__(self, lut_size: int = 17, curve_knots: int = 16) -> None:
        super().__init__()
        self.lut_size, self.curve_knots = lut_size, curve_knots
        # the curve is a cumulative sum of positive steps: monotone by construction, identity at start
        self.curve_logits = nn.Parameter(torch.zeros(3, curve_knots - 1))
        self.lut_residual = nn.Parameter(torch.zeros(3, lut_size, lut_size, lut_size))
        axis = torch.linspace(0, 1, lut_size)
        r, g, b = torch.meshgrid(axis, axis, axis, indexing="ij")
        self.register_buffer("identity", torch.stack([r, g, b]), persistent=False)

    def curve_knots_values(self) -> torch.Tensor:
        """(3, K) curve values at K evenly spaced inputs, from 0 to 1, monotone."""
        steps = F.softmax(self.curve_logits, dim=1)
        return torch.cat([torch.zeros(3, 1, device=steps.device), torch.cumsum(steps, dim=1)], dim=1)

    def apply_curve(self, rgb: torch.Tensor) -> torch.Tensor:
        knots = self.curve_knots_values()
        pos = rgb.clamp(0, 1) * (self.curve_knots - 1)
        i0 = pos.floor().clamp(max=self.curve_knots - 2).long()
        frac = pos - i0
        out = []
        for c in range(3):
            k = knots[c]
            out.append(k[i0[..., c]] * (1 - frac[..., c]) + k[i0[..., c] + 1] * frac[..., c])
        return torch.stack(out, dim=-1)

    def lut(self) -> torch.Tensor:
        """(3, N, N, N) LUT values, channel-first, indexed [c, r, g, b]."""
        return self.identity + self.lut_residual

    def apply_lut(self, rgb: torch.Tensor) -> torch.Tensor:
        shape = rgb.shape
        pts = rgb.reshape(1, -1, 1, 1, 3)
        # grid_sample's last coordinate axis order is (W, H, D) = (b, g, r) for a [c, r, g, b] volume
        grid = pts.flip(-1) * 2 - 1
        out = F.grid_sample(self.lut().unsqueeze(0), grid, mode="bilinear", padding_mode="border",
                            align_corners=True)
        return out.reshape(3, -1).t().reshape(shape)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.apply_lut(self.apply_curve(rgb)).clamp(0, 1)

    def smoothness(self) -> torch.Tensor:
        """Mean squared difference of neighbouring LUT residuals along r, g and b."""
        res = self.lut_residual
        return sum(((res.diff(dim=d)) ** 2).mean() for d in (1, 2, 3))

    @torch.no_grad()
    def bake(self, size: int = 33) -> tuple[np.ndarray, np.ndarray]:
        """(lut (size^3, 3) with the curve folded in, curve (3, K)) as float32 numpy for `StyleToken`.

        Baking on a finer grid than the learnt LUT keeps the non-linear tone curve faithful after interpolation.
        """
        axis = torch.linspace(0, 1, size, device=self.lut_residual.device)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
        lut = self.forward(grid).clamp(0, 1).cpu().numpy().astype(np.float32)
        return lut, self.curve_knots_values().cpu().numpy().astype(np.float32)
