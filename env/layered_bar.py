"""A layered or graded bar under uniaxial load: the physics behind the simulated tensile stage and the
closed form every inversion is checked against.

    d/dz ( E(z) du/dz ) = 0  on [0, L],   u(0) = 0,   E(L) u'(L) = sigma_0   (or u(L) = U)

With no body force the axial stress E u' is the same everywhere (sigma_0 = F / A), so

    u(z) = sigma_0 * integral_0^z dz' / E(z')

For layers (E piecewise constant) u is piecewise linear with slope sigma_0 / E_l in layer l, and
displacement and traction are continuous across each interface: the layers act as springs in series.
With a prescribed end displacement U instead of a load, sigma_0 = U / integral_0^L dz / E.

Units: lengths and displacements in mm, force in N, area in mm^2, moduli in GPa (stress in MPa =
N/mm^2, so u [mm] = sigma [MPa] / (1000 E [GPa]) * dz [mm]).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import integrate
from scipy.interpolate import CubicSpline

MPA_PER_GPA = 1000.0


@dataclass(frozen=True)
class LayeredBar:
    """Layers from the clamped end z = 0 to the loaded end z = L."""

    moduli_gpa: tuple[float, ...]
    thicknesses_mm: tuple[float, ...]
    area_mm2: float = 10.0

    def __post_init__(self) -> None:
        if len(self.moduli_gpa) != len(self.thicknesses_mm) or not self.moduli_gpa:
            raise ValueError(f"{len(self.moduli_gpa)} moduli for {len(self.thicknesses_mm)} layers")
        if min(self.moduli_gpa) <= 0 or min(self.thicknesses_mm) <= 0 or self.area_mm2 <= 0:
            raise ValueError("moduli, thicknesses and the area must be positive")

    @property
    def n_layers(self) -> int:
        return len(self.moduli_gpa)

    @property
    def length_mm(self) -> float:
        return float(sum(self.thicknesses_mm))

    @property
    def interfaces_mm(self) -> np.ndarray:
        """Positions of the n - 1 interfaces."""
        return np.cumsum(self.thicknesses_mm)[:-1]

    def layer_of(self, z_mm: np.ndarray) -> np.ndarray:
        """Index of the layer each position lies in (an interface belongs to the layer above it)."""
        return np.searchsorted(self.interfaces_mm, np.asarray(z_mm, dtype=float), side="right")

    def modulus_gpa(self, z_mm: np.ndarray) -> np.ndarray:
        return np.asarray(self.moduli_gpa)[self.layer_of(z_mm)]

    def compliance_mm_per_gpa(self) -> float:
        """integral_0^L dz / E."""
        return float(np.sum(np.asarray(self.thicknesses_mm) / np.asarray(self.moduli_gpa)))

    def displacement_mm(self, z_mm: np.ndarray, force_n: float) -> np.ndarray:
        """Exact u(z) under an end load (piecewise linear)."""
        z = np.asarray(z_mm, dtype=float)
        stress_mpa = force_n / self.area_mm2
        starts = np.concatenate([[0.0], self.interfaces_mm])
        # compliance accumulated below each layer, then the partial layer
        below = np.concatenate([[0.0], np.cumsum(np.asarray(self.thicknesses_mm) / self.moduli_gpa)[:-1]])
        layer = self.layer_of(z)
        return stress_mpa / MPA_PER_GPA * (below[layer] + (z - starts[layer]) / np.asarray(self.moduli_gpa)[layer])

    def force_for_end_displacement_n(self, end_displacement_mm: float) -> float:
        return end_displacement_mm * MPA_PER_GPA * self.area_mm2 / self.compliance_mm_per_gpa()


@dataclass(frozen=True)
class GradedBar:
    """A functionally graded bar: E(z) = E_0 + (E_L - E_0) (z / L)^exponent (the power-law profile of
    graded coatings and FGMs), which no set of homogeneous layers represents."""

    modulus_start_gpa: float
    modulus_end_gpa: float
    exponent: float
    length_mm: float
    area_mm2: float = 10.0
    _compliance: CubicSpline = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if min(self.modulus_start_gpa, self.modulus_end_gpa) <= 0 or self.exponent <= 0 or self.length_mm <= 0:
            raise ValueError("moduli, the exponent and the length must be positive")
        # integral_0^z dz'/E on a fine grid (quadrature to 1e-12): u at any z by interpolation
        grid = np.linspace(0.0, self.length_mm, 4001)
        pieces = [integrate.quad(lambda s: 1.0 / self.modulus_gpa(s), a, b, epsabs=1e-14)[0]
                  for a, b in zip(grid[:-1], grid[1:])]
        # the compliance is smooth, so cubic interpolation between 4001 exact values is exact to ~1e-12
        object.__setattr__(self, "_compliance", CubicSpline(grid, np.concatenate([[0.0], np.cumsum(pieces)])))

    def modulus_gpa(self, z_mm: np.ndarray) -> np.ndarray:
        t = np.clip(np.asarray(z_mm, dtype=float) / self.length_mm, 0.0, 1.0)
        return self.modulus_start_gpa + (self.modulus_end_gpa - self.modulus_start_gpa) * t ** self.exponent

    def compliance_mm_per_gpa(self) -> float:
        return float(self._compliance(self.length_mm))

    def displacement_mm(self, z_mm: np.ndarray, force_n: float) -> np.ndarray:
        return force_n / self.area_mm2 / MPA_PER_GPA * self._compliance(np.asarray(z_mm, dtype=float))

    def force_for_end_displacement_n(self, end_displacement_mm: float) -> float:
        return end_displacement_mm * MPA_PER_GPA * self.area_mm2 / self.compliance_mm_per_gpa()


Bar = LayeredBar | GradedBar


def random_layered_bar(rng: np.random.Generator, *, layers: int = 3, length_mm: float = 30.0,
                       modulus_range_gpa: tuple[float, float] = (50.0, 400.0), min_contrast: float = 1.5,
                       min_thickness_fraction: float = 0.15, area_mm2: float = 10.0) -> LayeredBar:
    """Moduli log-uniform in the range with neighbours differing by at least ``min_contrast`` (two
    neighbours of the same stiffness are one layer: no measurement can place an interface between them);
    thicknesses uniform on the simplex, none below ``min_thickness_fraction`` of the length."""
    low, high = modulus_range_gpa
    if layers > 1 and min_contrast > high / low:
        raise ValueError(f"no two moduli in [{low}, {high}] GPa differ by {min_contrast}x")
    moduli: list[float] = []
    while len(moduli) < layers:
        candidate = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        if not moduli or max(candidate / moduli[-1], moduli[-1] / candidate) >= min_contrast:
            moduli.append(candidate)
    if layers * min_thickness_fraction >= 1:
        raise ValueError(f"{layers} layers cannot each be {min_thickness_fraction:.0%} of the length")
    spare = rng.dirichlet(np.ones(layers)) * (1 - layers * min_thickness_fraction)
    thicknesses = (spare + min_thickness_fraction) * length_mm
    return LayeredBar(tuple(moduli), tuple(float(t) for t in thicknesses), area_mm2)


def random_graded_bar(rng: np.random.Generator, *, length_mm: float = 30.0,
                      modulus_range_gpa: tuple[float, float] = (50.0, 400.0), min_contrast: float = 2.0,
                      exponent_range: tuple[float, float] = (0.5, 3.0), area_mm2: float = 10.0) -> GradedBar:
    low, high = modulus_range_gpa
    while True:
        start, end = np.exp(rng.uniform(np.log(low), np.log(high), size=2))
        if max(start / end, end / start) >= min_contrast:
            break
    return GradedBar(float(start), float(end), float(rng.uniform(*exponent_range)), length_mm, area_mm2)


def sensors_per_layer(bar: LayeredBar, per_layer: int) -> np.ndarray:
    """``per_layer`` positions evenly inside each layer (an extensometer's gauge points placed by the
    nominal layer thicknesses), none on an interface."""
    starts = np.concatenate([[0.0], bar.interfaces_mm])
    return np.concatenate([start + thickness * (np.arange(per_layer) + 0.5) / per_layer
                           for start, thickness in zip(starts, bar.thicknesses_mm)])


def uniform_sensors(length_mm: float, count: int) -> np.ndarray:
    """``count`` evenly spaced points over the bar (a DIC subset grid), the clamp excluded."""
    return length_mm * np.arange(1, count + 1) / count

