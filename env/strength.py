"""Yield strength and hardness of a gamma/gamma-prime alloy from its composition and microstructure.

sigma_y = sigma_0 + sigma_ss + sigma_HP + M * min(tau_shear, tau_Orowan), then HV from Tabor's
relation. Shearing by weakly coupled dislocation pairs rises with precipitate radius, Orowan
bypassing falls with it: the minimum makes ageing under-aged, then peak-aged at the crossover, then
over-aged. Brittle phases (B2, sigma, other intermetallics) cost ductility, the second property.
Vectorised over specimens.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

STANDARD_GRAVITY_M_PER_S2 = 9.80665


class StrengthParameters(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Lattice friction of the Ni-base gamma matrix, ~20-50 MPa (Kozar et al., Metall. Mater. Trans. A 40, 2009).
    friction_stress_mpa: float = Field(default=40.0, ge=0)
    # Solid-solution coefficients k_i (MPa per (at. fraction)^0.5) combined as (sum k_i^2 c_i)^0.5
    # (Roth, Davis & Thomson, Metall. Mater. Trans. A 28, 1997: Al 225, Co 39.4, Cr 337).
    solid_solution_mpa: dict[str, float] = Field(default_factory=lambda: {"Al": 225.0, "Co": 39.4, "Cr": 337.0})
    # Hall-Petch coefficient for gamma/gamma-prime alloys, 0.71 MPa m^0.5 (Kozar et al. 2009).
    hall_petch_mpa_m05: float = Field(default=0.71, gt=0)
    # Ni: shear modulus ~77 GPa, Burgers vector a/sqrt(2) = 0.254 nm, Poisson 0.31; Taylor factor 3.06.
    shear_modulus_pa: float = Field(default=77e9, gt=0)
    burgers_vector_m: float = Field(default=0.254e-9, gt=0)
    poisson_ratio: float = Field(default=0.31, gt=0, lt=0.5)
    taylor_factor: float = Field(default=3.06, gt=0)
    # Antiphase-boundary energy of Ni3Al on {111}: 0.1-0.25 J/m^2 (e.g. Crudden et al., Acta Mater. 2014).
    apb_energy_j_per_m2: float = Field(default=0.20, gt=0)
    # Ductility: elongation of the single-phase alloy, reduced by gamma-prime and sharply by brittle
    # phases (a few percent of B2/sigma embrittle Ni alloys).
    base_elongation_pct: float = Field(default=45.0, gt=0)
    brittle_fraction_scale: float = Field(default=0.04, gt=0)


def solid_solution_mpa(fractions: dict[str, np.ndarray], p: StrengthParameters) -> np.ndarray:
    n = len(next(iter(fractions.values())))
    total = np.zeros(n)
    for element, k in p.solid_solution_mpa.items():
        if element in fractions:
            total += k**2 * np.asarray(fractions[element])
    return np.sqrt(total)


def precipitation_mpa(fraction: np.ndarray, radius_m: np.ndarray, p: StrengthParameters) -> np.ndarray:
    """Taylor factor x the weakest of three mechanisms for the precipitate size:

    weak-pair shearing (small particles, rises with r; Brown & Ham 1971), strong-pair shearing
    (falls with r; Hüther & Reppich 1978) and Orowan bypass (Ardell 1985). The weak/strong crossover
    is the peak-aged condition.
    """
    f = np.clip(np.asarray(fraction, dtype=float), 0.0, 0.95)
    r = np.asarray(radius_m, dtype=float)
    g, b, gamma = p.shear_modulus_pa, p.burgers_vector_m, p.apb_energy_j_per_m2
    present = (f > 1e-6) & (r > 0)
    f_s = np.where(present, f, 1e-6)
    r_s = np.where(present, r, b)
    weak_pair = gamma / (2 * b) * np.clip(np.sqrt(12 * gamma * f_s * r_s / (np.pi * g * b**2)) - f_s, 0.0, None)
    w = 1.0  # elastic repulsion of the paired dislocations, of order one
    strong_pair = (np.sqrt(3.0) / 2.0 * w * g * b * np.sqrt(f_s) / (np.pi**1.5 * r_s)
                   * np.sqrt(np.clip(2 * np.pi * gamma * r_s / (w * g * b**2) - 1.0, 0.0, None)))
    shear = np.minimum(weak_pair, strong_pair)
    mean_r = np.sqrt(2.0 / 3.0) * r_s  # mean planar radius of spheres
    spacing = 2 * mean_r * np.clip(np.sqrt(np.pi / (4 * f_s)) - 1.0, 0.05, None)
    orowan = 0.4 * g * b / (np.pi * np.sqrt(1 - p.poisson_ratio)) * np.log(np.maximum(2 * mean_r / b, 1.0 + 1e-9)) / spacing
    return np.where(present, p.taylor_factor * np.minimum(shear, orowan) / 1e6, 0.0)


def yield_strength_mpa(fractions: dict[str, np.ndarray], grain_size_m: np.ndarray, precipitate_fraction: np.ndarray,
                       precipitate_radius_m: np.ndarray, p: StrengthParameters) -> np.ndarray:
    return (p.friction_stress_mpa + solid_solution_mpa(fractions, p)
            + p.hall_petch_mpa_m05 / np.sqrt(grain_size_m)
            + precipitation_mpa(precipitate_fraction, precipitate_radius_m, p))


def vickers_hardness(yield_strength: np.ndarray) -> np.ndarray:
    """HV (kgf/mm^2) from Tabor's H ~ 3 sigma_y."""
    return 3.0 * np.asarray(yield_strength) / STANDARD_GRAVITY_M_PER_S2


def elongation_pct(brittle_fraction: np.ndarray, precipitate_fraction: np.ndarray, p: StrengthParameters) -> np.ndarray:
    return (p.base_elongation_pct * np.exp(-np.asarray(brittle_fraction) / p.brittle_fraction_scale)
            * (1.0 - 0.5 * np.clip(precipitate_fraction, 0.0, 1.0)))
