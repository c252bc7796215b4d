"""Epistemic uncertainty on top of a language model: an epinet and an ensemble of heads with random priors.

Both are epistemic neural networks (Osband et al. 2021, arXiv 2107.08924): given features h of an input and an
*epistemic index* z, they output an offset δ(h, z); varying z traces the model's posterior. preftune reads the
features from the LM's last hidden state at a sequence's final token and adds δ to the sequence's utility
(log π(y|x) / τ, `methods/joint.py`), so every index gives one plausible Luce choice model.

- `Epinet` (the ENN paper's epinet): z ~ N(0, I_D); δ(h, z) = σ_L([sg h, z])ᵀ z + a · σ_P(sg h)ᵀ z with a
  learnable MLP σ_L and a *fixed*, randomly initialised MLP σ_P (the prior network; no gradient ever reaches it)
  of scale a.
  The features are stop-gradient: the epinet never changes the LM's representation.
- `EnsembleHeads` (ensemble with randomised prior functions, Osband et al. 2018): z uniform in {0..M−1};
  δ(h, z) = learnable_z(sg h) + a · prior_z(sg h), M small MLP heads, each with its own fixed prior head.

Where queries were asked, training drives the learnable part to cancel the prior's disagreement; elsewhere
the prior's spread stays — the posterior is wide where there are no data. Both standardise each feature
dimension with a fixed mean and scale (`set_feature_scaling`, fitted once on the features of the inputs the
model will see, e.g. the whole enumerable response space): a random LM's last hidden states share a large common
component, and without removing it every response would get nearly the same prior draw, so the prior could not
tell one response's uncertainty from another's.
"""

from __future__ import annotations

import torch
from torch import nn


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class _Standardise(nn.Module):
    """(h − mean) / std per feature dimension, with fixed buffers (identity until `set_feature_scaling`)."""

    def __init__(self, feature_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features.detach().float() - self.mean) / self.std


def set_feature_scaling(head: nn.Module, features: torch.Tensor) -> None:
    """Fix the head's feature standardisation to the mean and std of ``features`` ``[N, H]``."""
    features = features.detach().float()
    head.standardise.mean.copy_(features.mean(0))
    head.standardise.std.copy_(features.std(0).clamp_min(1e-6))


def _init_prior(net: nn.Sequential) -> None:
    """He-scaled weights so the prior's outputs have about unit variance on standardised inputs; frozen."""
    for layer in net:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=(2.0 / layer.in_features) ** 0.5)
            nn.init.zeros_(layer.bias)
    net.requires_grad_(False)


class Epinet(nn.Module):
    """δ(h, z) = σ_L([sg h, z])ᵀ z + prior_scale · σ_P(sg h)ᵀ z / √D, z ~ N(0, I_D) (the epinet of arXiv 2107.08924)."""

    def __init__(self, feature_dim: int, index_dim: int = 8, hidden: int = 32, prior_scale: float = 1.0,
                 seed: int = 0):
        super().__init__()
        self.index_dim, self.prior_scale = index_dim, prior_scale
        self.standardise = _Standardise(feature_dim)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.learnable = _mlp(feature_dim + index_dim, hidden, index_dim)
            nn.init.zeros_(self.learnable[-1].weight)  # starts at δ = prior: the untrained posterior is the prior
            nn.init.zeros_(self.learnable[-1].bias)
            self.prior = _mlp(feature_dim, hidden, index_dim)
            _init_prior(self.prior)

    def sample_index(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n indices, ``[n, D]``, each z ~ N(0, I_D)."""
        return torch.randn(n, self.index_dim, generator=generator)

    def forward(self, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Offsets ``[S, N]`` for features ``[N, H]`` and indices ``[S, D]``: each index applied to every row."""
        h = self.standardise(features)
        z = index.to(h)
        s, n = z.shape[0], h.shape[0]
        pairs = torch.cat([h[None].expand(s, n, -1), z[:, None].expand(s, n, -1)], -1)
        learned = (self.learnable(pairs) * z[:, None]).sum(-1)
        prior = self.prior(h) @ z.T / self.index_dim ** 0.5  # [N, S]
        return learned + self.prior_scale * prior.T


class EnsembleHeads(nn.Module):
    """δ(h, m) = learnable_m(sg h) + prior_scale · prior_m(sg h), m uniform in {0..M−1} (Osband et al. 2018)."""

    def __init__(self, feature_dim: int, size: int = 10, hidden: int = 32, prior_scale: float = 1.0, seed: int = 0):
        super().__init__()
        self.size, self.prior_scale = size, prior_scale
        self.standardise = _Standardise(feature_dim)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.learnable = _mlp(feature_dim, hidden, size)
            nn.init.zeros_(self.learnable[-1].weight)
            nn.init.zeros_(self.learnable[-1].bias)
            self.prior = _mlp(feature_dim, hidden, size)
            _init_prior(self.prior)

    def sample_index(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n member indices, ``[n]``, uniform over the ensemble."""
        return torch.randint(self.size, (n,), generator=generator)

    def forward(self, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Offsets ``[S, N]`` for features ``[N, H]`` and member indices ``[S]``."""
        h = self.standardise(features)
        every = self.learnable(h) + self.prior_scale * self.prior(h)  # [N, M]
        return every[:, index.long()].T.contiguous()


def build_epistemic_head(kind: str, feature_dim: int, index_dim: int = 8, ensemble_size: int = 10,
                         hidden: int = 32, prior_scale: float = 1.0, seed: int = 0) -> nn.Module:
    """``epinet`` or ``ensemble``; a clear error for anything else."""
    if kind == "epinet":
        return Epinet(feature_dim, index_dim, hidden, prior_scale, seed)
    if kind == "ensemble":
        return EnsembleHeads(feature_dim, ensemble_size, hidden, prior_scale, seed)
    raise ValueError(f"epistemic head must be 'epinet' or 'ensemble', got {kind!r}")


def learnable_l2(head: nn.Module) -> torch.Tensor:
    """Σ‖θ‖² over the head's trainable weights: the ENN regulariser that pulls δ back to the prior off the data."""
    return sum(p.pow(2).sum() for p in head.parameters() if p.requires_grad)
