"""The planner's own estimate of an alloy's aged hardness: textbook strengthening at its CALPHAD phase fractions.

A metallurgist designing a gamma/gamma-prime alloy does not treat hardness as a black box: the
precipitates can give at most their *peak-aged* strength, which grows with the gamma-prime fraction
thermodynamics allows at the ageing temperature, and the matrix adds solid-solution strengthening
that follows from the composition alone (the "alloys-by-design" practice: CALPHAD fractions fed
into strength models). :class:`PeakHardnessEstimate` is that estimate, in HV:

    HV_est = Tabor(sigma_ss(c) + max over r of sigma_p(f_CALPHAD(c, T_ageing), r))

from the planner's *own* database (:class:`~sdl.surrogates.calphad_features.CalphadFeatures`) and its
own strength parameters (:class:`~sdl.env.strength.StrengthParameters`, literature values by default;
a lab that believes other values configures them). Friction and Hall-Petch terms are the same for
every alloy of a campaign and left to the prior mean's fitted offset. It leaves out what a planner
cannot know before measuring: how far the campaign's ageing hold is from peak, how wrong the
database is, and the lab's own scatter. The BO planner therefore uses it only as a prior mean
linear in the estimate (weight and offset fitted with the GP, which models the residual), never as
the answer.

Plain torch on top of the CALPHAD table: differentiable in the composition (and in a designed ageing
temperature), so the acquisition optimiser follows it; no CALPHAD call after the table is built.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from sdl.env.strength import StrengthParameters, precipitation_mpa, vickers_hardness
from sdl.surrogates.calphad_features import FEATURES, CalphadFeatures

DTYPE = torch.double
GAMMA_PRIME_COLUMN = FEATURES.index("gamma_prime_at_ageing")
SOLVUS_COLUMN = FEATURES.index("solvus_margin_k")
# How blurred the planner's gamma-prime solvus is: the table's interpolation error near the solution
# temperature is under about 5 K (calphad_features.FINE_STEP_K's ladder).
SOLVUS_WIDTH_K = 5.0
# Precipitate radii scanned for the peak (m): from a nucleus to well past any peak of these alloys.
PEAK_SEARCH_RADII_M = np.geomspace(5e-10, 5e-7, 400)
FRACTION_GRID = np.linspace(0.0, 0.95, 381)


def peak_precipitation_mpa(fractions: np.ndarray, strength: StrengthParameters) -> np.ndarray:
    """The largest precipitation strengthening (MPa) any precipitate radius gives at each fraction:
    the peak-aged condition of the strength model (the weak/strong-pair crossover, or Orowan).
    The peak is a cusp, so a coarse scan over radius finds its bracket and a second scan inside it
    finds the peak (as exact as one fine scan of 4,000 radii, in a tenth of the time)."""
    f = np.asarray(fractions, dtype=float)
    coarse = PEAK_SEARCH_RADII_M[:, None] * np.ones_like(f)
    best = precipitation_mpa(np.broadcast_to(f, coarse.shape), coarse, strength).argmax(axis=0)
    low = PEAK_SEARCH_RADII_M[np.maximum(best - 1, 0)]
    high = PEAK_SEARCH_RADII_M[np.minimum(best + 1, len(PEAK_SEARCH_RADII_M) - 1)]
    fine = np.geomspace(low, high, len(PEAK_SEARCH_RADII_M))  # (radii, fractions)
    return precipitation_mpa(np.broadcast_to(f, fine.shape), fine, strength).max(axis=0)


def check_coefficients(strength: StrengthParameters, elements: Iterable[str]) -> None:
    """Refuse solid-solution coefficients for elements the alloys cannot contain."""
    unknown = sorted(set(strength.solid_solution_mpa) - set(elements))
    if unknown:
        raise ValueError(f"solid-solution coefficients for {unknown}, which are not elements of the space "
                         f"({sorted(elements)})")


class PeakHardnessEstimate:
    """HV of each alloy aged to peak, by the textbook strength model at the CALPHAD gamma-prime
    fraction: a function of the inputs ``features.inputs`` (free fractions, and the designed ageing
    temperature where there is one), (..., k) -> (...)."""

    def __init__(self, features: CalphadFeatures, balance: str, strength: StrengthParameters | None = None) -> None:
        self.features = features
        self.strength = strength or StrengthParameters()
        free = features.free_elements
        check_coefficients(self.strength, (*free, balance))
        # sigma_ss^2 = sum_i k_i^2 c_i is linear in the free fractions (the balance's c = 1 - sum of them)
        k2 = {e: k**2 for e, k in self.strength.solid_solution_mpa.items()}
        self.ss_constant = k2.get(balance, 0.0)
        self.ss_weights = torch.tensor([k2.get(e, 0.0) - self.ss_constant for e in free], dtype=DTYPE)
        self.fraction_grid = torch.as_tensor(FRACTION_GRID, dtype=DTYPE)
        self.peak_grid = torch.as_tensor(peak_precipitation_mpa(FRACTION_GRID, self.strength), dtype=DTYPE)
        self.hv_per_mpa = float(vickers_hardness(1.0))

    def solid_solution_mpa(self, x_free: torch.Tensor) -> torch.Tensor:
        squared = self.ss_constant + x_free[..., : len(self.ss_weights)].to(DTYPE) @ self.ss_weights
        return squared.clamp_min(1e-12).sqrt()

    def precipitation_mpa(self, fraction: torch.Tensor) -> torch.Tensor:
        """Peak-aged strengthening at these fractions: the tabulated curve, interpolated linearly
        (differentiable; the curve is smooth on the grid's 0.0025 steps)."""
        grid, values = self.fraction_grid, self.peak_grid
        f = fraction.clamp(grid[0], grid[-1])
        i = torch.searchsorted(grid, f.detach().contiguous(), right=True).sub(1).clamp(0, len(grid) - 2)
        t = (f - grid[i]) / (grid[i + 1] - grid[i])
        return values[i] * (1 - t) + values[i + 1] * t

    def __call__(self, x: torch.Tensor, tabulated: torch.Tensor | None = None) -> torch.Tensor:
        """``tabulated``: ``self.features(x)`` where the caller has it already (one interpolation, not two)."""
        gamma_prime = (self.features(x) if tabulated is None else tabulated)[..., GAMMA_PRIME_COLUMN]
        return self.hv_per_mpa * (self.solid_solution_mpa(x) + self.precipitation_mpa(gamma_prime))


def incomplete_solutionising(features: CalphadFeatures, x: torch.Tensor,
                             tabulated: torch.Tensor | None = None) -> torch.Tensor:
    """0 where the solution hold dissolves every gamma-prime particle, 1 where some survive it, by the
    planner's CALPHAD solvus (smoothed over :data:`SOLVUS_WIDTH_K`). Gamma-prime left undissolved
    coarsens at the solution temperature and adds little to hardening, and the fine precipitates of
    the ageing hold grow on it; the peak-aged estimate above assumes they all start from a clean
    solid solution. How much an incomplete solution costs is not the planner's to guess: as a second
    feature of the linear prior mean, its weight is fitted from the measurements (zero until one is
    made beyond the solvus)."""
    tabulated = features(x) if tabulated is None else tabulated
    return torch.sigmoid(-tabulated[..., SOLVUS_COLUMN] / SOLVUS_WIDTH_K)
