"""Sparsification of task vectors: which entries of a delta (fine-tune minus base) a merge keeps, and how it
rescales what it keeps.

Three ways to choose the entries, as mergekit's ``sparsify.py`` defines them:

- :func:`magnitude` (TIES): keep the ``int(density * numel)`` entries of largest magnitude;
- :func:`random_drop` (DARE): keep each entry with probability ``density``;
- :func:`magnitude_outliers` (Model Breadcrumbs): drop the ``int(gamma * numel)`` largest entries and the smallest
  ones, keeping ``int(density * numel)``;

plus :func:`magnitude_threshold` (the original TIES code's trim over a whole model: keep entries at or above a
per-model magnitude computed over every tensor, see :func:`model_threshold`).

The kept entries can be rescaled (``rescale``): ``"l1"`` multiplies them so the delta keeps its L1 norm (mergekit's
``rescale: true``; nothing is rescaled when either norm is below 1e-7), ``"inverse_density"`` divides them by
``density`` (the DARE paper's ``1 / (1 - p)``), None leaves them as they are.

Example:
    >>> import torch
    >>> magnitude(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5)
    tensor([ 0., -3.,  2.,  0.])
    >>> magnitude(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5, rescale="inverse_density")
    tensor([ 0., -6.,  4.,  0.])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..config import coerced
from ..errors import ConfigError

__all__ = ["RESCALES", "RESCALE_TEXT", "rescale_field", "rescaled", "magnitude", "magnitude_threshold",
           "model_threshold", "random_drop", "magnitude_outliers"]

RESCALES = ("l1", "inverse_density")
RESCALE_TEXT = ("None (no rescaling), 'l1' (keep the L1 norm: mergekit's rescale=true) or 'inverse_density' "
                "(divide by density: the DARE paper's 1/(1-p)); True and False stand for 'l1' and None")
_NORM_EPS = 1e-7  # mergekit's: below this, a norm is treated as zero and nothing is rescaled


def _rescale_option(value: Any) -> Any:
    """mergekit spells the rescale as a bool (true = keep the L1 norm): accept that spelling."""
    if value is True:
        return "l1"
    if value is False:
        return None
    return value


def rescale_field(default: str | None) -> Any:
    """The ``rescale`` config field (``True``/``False`` accepted as mergekit's spelling of ``"l1"``/None)."""
    return coerced(_rescale_option, default)


def rescaled(delta: torch.Tensor, mask: torch.Tensor, rescale: str | None, density: float) -> torch.Tensor:
    """``delta * mask``, rescaled as ``rescale`` says (see the module docstring).

    Example:
        >>> rescaled(torch.tensor([1.0, -3.0]), torch.tensor([0.0, 1.0]), "l1", 0.5)
        tensor([ 0., -4.])
    """
    masked = delta * mask
    if rescale is None:
        return masked
    if rescale == "inverse_density":
        return masked / density
    if rescale == "l1":
        before, after = delta.abs().sum(), masked.abs().sum()
        if before < _NORM_EPS or after < _NORM_EPS:
            return masked
        return masked * (before / after)
    raise ConfigError(f"rescale must be {RESCALE_TEXT}; got {rescale!r}.")


def _ascending(delta: torch.Tensor) -> torch.Tensor:
    """Flat indices of ``delta`` by increasing magnitude (stable: equal magnitudes keep their order)."""
    return torch.sort(delta.abs().reshape(-1).float(), stable=True).indices


def magnitude(delta: torch.Tensor, density: float, *, rescale: str | None = None, name: str = "tensor") -> torch.Tensor:
    """Keep the ``int(density * numel)`` entries of largest magnitude (mergekit's ``magnitude``; TIES's trim).

    ``density >= 1`` keeps everything. Equal magnitudes at the cut are kept in index order (mergekit's argsort
    is not stable: with exact ties it may keep others).

    Raises:
        ConfigError: ``density`` keeps no entry of this tensor (mergekit stops on an assertion there too).

    Example:
        >>> magnitude(torch.tensor([[1.0, -4.0], [2.0, 3.0]]), 0.5)
        tensor([[ 0., -4.],
                [ 0.,  3.]])
    """
    if density >= 1:
        return delta
    k = int(density * delta.numel())
    if k <= 0:
        raise ConfigError(f"tensor {name!r}: density {density} keeps none of its {delta.numel()} entries "
                          f"(int(density * {delta.numel()}) = 0); raise density to at least {1 / delta.numel():.3g}.")
    mask = torch.zeros(delta.numel(), dtype=delta.dtype)
    mask[_ascending(delta)[-k:]] = 1
    return rescaled(delta, mask.view(delta.shape), rescale, density)


def magnitude_threshold(delta: torch.Tensor, threshold: float, density: float, *,
                        rescale: str | None = None) -> torch.Tensor:
    """Keep the entries whose magnitude is at least ``threshold`` (a trim whose threshold was computed over a
    whole model by :func:`model_threshold`).

    Example:
        >>> magnitude_threshold(torch.tensor([0.5, -2.0, 1.0]), 1.0, 0.5)
        tensor([ 0., -2.,  1.])
    """
    if density >= 1:
        return delta
    mask = (delta.abs() >= threshold).to(delta.dtype)
    return rescaled(delta, mask, rescale, density)


def model_threshold(deltas: Iterable[torch.Tensor], density: float) -> float:
    """The magnitude threshold of the original TIES code's trim over a whole model: every tensor's entries are
    flattened into one vector of ``d`` entries, and the threshold is its ``(d - int(density * d))``-th smallest
    magnitude (``torch.kthvalue``), so ``|x| >= threshold`` keeps ``int(density * d) + 1`` entries (more on ties),
    exactly as that code does. 0.0 (keep all) when ``density >= 1`` or there are no entries.

    Example:
        >>> model_threshold([torch.tensor([4.0, -1.0]), torch.tensor([[2.0, 3.0]])], 0.5)  # keeps 4, 3 and 2
        2.0
    """
    if density >= 1:
        return 0.0
    flat = [d.detach().abs().reshape(-1).float() for d in deltas]
    values = torch.cat(flat) if flat else torch.zeros(0)
    del flat
    if values.numel() == 0:
        return 0.0
    k = values.numel() - int(density * values.numel())
    return float(values.kthvalue(k).values)


def random_drop(delta: torch.Tensor, density: float, *, generator: torch.Generator,
                rescale: str | None = None) -> torch.Tensor:
    """Keep each entry with probability ``density``, drawn from ``generator`` (DARE's drop; mergekit's
    ``bernoulli``). ``density >= 1`` keeps everything.

    The mask is ``torch.bernoulli`` of ``density`` like mergekit's, but drawn from the tensor's own seeded
    generator: reproducible, while mergekit draws from torch's global random stream, so the same entries are not
    dropped bit for bit.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> kept = random_drop(torch.ones(1000), 0.3, generator=g)
        >>> 250 < int((kept != 0).sum()) < 350
        True
    """
    if density >= 1:
        return delta
    mask = torch.bernoulli(torch.full(delta.shape, float(density), dtype=torch.float32), generator=generator)
    return rescaled(delta, mask.to(delta.dtype), rescale, density)


def magnitude_outliers(delta: torch.Tensor, density: float, *, gamma: float,
                       rescale: str | None = None) -> torch.Tensor:
    """Model Breadcrumbs' trim (mergekit's ``magnitude_outliers``): of ``n = numel`` entries, keep
    ``int(density * n)``: drop the ``int(gamma * n)`` of largest magnitude (fewer when density + gamma > 1, to keep
    ``int(density * n)``) and the smallest ones. ``density >= 1`` keeps everything.

    One deliberate difference: when ``int(gamma * n)`` is 0 (gamma = 0, or a tensor of fewer than ``1 / gamma``
    entries), mergekit's slice ``indices[n_bot:-0]`` is empty and zeroes the whole delta; here it drops no large
    entry and keeps the largest ``int(density * n)``, what the definition says.

    Example:
        >>> magnitude_outliers(torch.tensor([1.0, 5.0, 3.0, 2.0, 4.0]), 0.4, gamma=0.2)
        tensor([0., 0., 3., 0., 4.])
    """
    if density >= 1:
        return delta
    n = delta.numel()
    keep, top = int(density * n), int(gamma * n)
    bottom = n - keep - top
    if bottom < 0:
        top, bottom = top + bottom, 0
    mask = torch.zeros(n, dtype=delta.dtype)
    mask[_ascending(delta)[bottom:n - top]] = 1
    return rescaled(delta, mask.view(delta.shape), rescale, density)
