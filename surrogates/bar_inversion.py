"""What a tensile test with displacement sensors can tell about the layers inside a bar, and the classical
answer a user would pick before any neural network: a segmented least-squares fit.

The data (:class:`BarData`): displacements u_j at sensor positions z_j along a bar of length L
clamped at z = 0, with the force F and the cross-section A when the stage has a load cell.

Identifiability, which every inversion checks (:func:`check_identifiable`, :func:`check_layers_resolved`):

- In a bar the stress sigma_0 = F / A is the same in every layer and u is piecewise linear with slope
  sigma_0 / E_l, so the displacements fix only the slopes. Without a measured force only the ratios
  E_l / E_m are determined, never the moduli.
- A layer's line needs two points: two sensors in the layer (the clamp, u(0) = 0, counts as one for the
  first layer). An interface is where the lines of its two layers cross, so it is located only when
  both neighbours have their two points, and only as well as their slopes differ.

The baseline (:func:`segmented_fit`): a continuous piecewise-linear u(z) through the clamp with unknown
breakpoints, fitted by least squares. For given breakpoints the slopes follow linearly, so only the
breakpoints are searched (variable projection): every assignment of the breakpoints to the gaps between
sensors is ranked by its misfit with the breakpoints mid-gap, the best few are solved by scipy's bounded
least squares, and the best of those kept. Standard errors from the
Jacobian at the optimum. scipy has no segmented regression of its own; this is the method of
Muggeo (2003) in the form a metallurgist would code it.

Units: mm, N, mm^2, GPa (as :mod:`sdl.env.layered_bar`).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import integrate, optimize

from sdl.env.layered_bar import MPA_PER_GPA, GradedBar

SEGMENTED_REFINED = 12  # placements of the breakpoints solved exactly, of those ranked best mid-gap


class NotIdentifiable(ValueError):
    """The data cannot determine what was asked; the message names what is missing."""


@dataclass(frozen=True)
class BarData:
    positions_mm: np.ndarray
    displacements_mm: np.ndarray
    length_mm: float
    area_mm2: float
    force_n: float | None
    noise_sd_mm: float | None = None  # the sensors' stated noise floor, when the instrument knows it
    # the interfaces the specimen was made with (its design), if known: to check the sensors cover every
    # layer before fitting; never used as a starting point or a prior
    nominal_interfaces_mm: np.ndarray | None = None

    def __post_init__(self) -> None:
        z = np.asarray(self.positions_mm, dtype=float)
        u = np.asarray(self.displacements_mm, dtype=float)
        if z.ndim != 1 or z.shape != u.shape or len(z) == 0:
            raise ValueError(f"{z.size} sensor positions for {u.size} displacements")
        if not (np.isfinite(z).all() and np.isfinite(u).all()):
            raise ValueError("sensor positions and displacements must be finite numbers")
        if not (self.length_mm > 0 and self.area_mm2 > 0):
            raise ValueError(f"length {self.length_mm} mm and area {self.area_mm2} mm^2 must be positive")
        if z.min() <= 0 or z.max() > self.length_mm * (1 + 1e-9):
            raise ValueError(f"sensor positions must lie in (0, {self.length_mm:g}] mm (the clamp is z = 0); "
                             f"got {z.min():g} to {z.max():g}")
        if len(np.unique(z)) != len(z):
            raise ValueError("two sensors at the same position")
        if self.force_n is not None and not (math.isfinite(self.force_n) and self.force_n != 0):
            raise ValueError(f"force {self.force_n} N: a finite, non-zero load")
        order = np.argsort(z)
        if self.nominal_interfaces_mm is not None:
            nominal = np.sort(np.asarray(self.nominal_interfaces_mm, dtype=float).reshape(-1))
            if np.any(nominal <= 0) or np.any(nominal >= self.length_mm):
                raise ValueError(f"nominal interfaces {nominal.tolist()} must lie inside (0, {self.length_mm:g}) mm")
            object.__setattr__(self, "nominal_interfaces_mm", nominal)
        object.__setattr__(self, "positions_mm", z[order])
        object.__setattr__(self, "displacements_mm", u[order])

    @property
    def stress_mpa(self) -> float:
        if self.force_n is None:
            raise NotIdentifiable("no force readout: the displacements fix only the ratios E_l/E_m of the moduli, "
                                  "not the moduli; give the load (force_n) from the stage's load cell")
        return self.force_n / self.area_mm2

    # ---- the formats the data arrives in --------------------------------------------------------------

    @classmethod
    def from_measurements(cls, measurements: dict[str, float]) -> BarData:
        """From a tensile station's result: ``sensor_NN_position_mm`` / ``sensor_NN_displacement_mm``
        pairs, ``length_mm``, ``area_mm2``, and ``force_n``, ``displacement_noise_sd_mm`` and the made
        layers' ``nominal_interface_K_mm`` if known."""
        names = sorted(k[len("sensor_"):-len("_position_mm")] for k in measurements
                       if k.startswith("sensor_") and k.endswith("_position_mm"))
        missing = [k for k in ("length_mm", "area_mm2") if k not in measurements]
        missing += [f"sensor_{n}_displacement_mm" for n in names if f"sensor_{n}_displacement_mm" not in measurements]
        if not names or missing:
            raise ValueError("not a tensile test with displacement sensors: "
                             + (f"missing {', '.join(missing)}" if missing else "no sensor_NN_position_mm readings"))
        return cls(np.array([measurements[f"sensor_{n}_position_mm"] for n in names]),
                   np.array([measurements[f"sensor_{n}_displacement_mm"] for n in names]),
                   float(measurements["length_mm"]), float(measurements["area_mm2"]), measurements.get("force_n"),
                   measurements.get("displacement_noise_sd_mm"), _numbered(measurements, "nominal_interface_{}_mm"))

    def measurements(self) -> dict[str, float]:
        """The inverse of :meth:`from_measurements`."""
        out = {"length_mm": self.length_mm, "area_mm2": self.area_mm2}
        if self.force_n is not None:
            out["force_n"] = self.force_n
        if self.noise_sd_mm is not None:
            out["displacement_noise_sd_mm"] = self.noise_sd_mm
        for k, z in enumerate(self.nominal_interfaces_mm if self.nominal_interfaces_mm is not None else [], 1):
            out[f"nominal_interface_{k}_mm"] = float(z)
        for i, (z, u) in enumerate(zip(self.positions_mm, self.displacements_mm)):
            out[f"sensor_{i:02d}_position_mm"] = float(z)
            out[f"sensor_{i:02d}_displacement_mm"] = float(u)
        return out


def _numbered(measurements: dict[str, float], pattern: str) -> np.ndarray | None:
    values = []
    while pattern.format(len(values) + 1) in measurements:
        values.append(measurements[pattern.format(len(values) + 1)])
    return np.array(values) if values else None


CSV_HEADER_KEYS = ("length_mm", "area_mm2", "force_n", "displacement_noise_sd_mm")
CSV_TRUTH_KEYS = ("truth_moduli_gpa", "truth_interfaces_mm", "truth_grading")  # grading: E_0 E_L exponent


def write_csv(data: BarData, path: Path, truth: dict[str, list[float]] | None = None) -> None:
    """Two columns (position_mm, displacement_mm) under ``# key: value`` lines for the rest: what
    ``sdl pinn invert`` reads."""
    lines = [f"# {k}: {v!r}" for k, v in data.measurements().items() if k in CSV_HEADER_KEYS]
    if data.nominal_interfaces_mm is not None:
        lines.append(f"# nominal_interfaces_mm: {' '.join(repr(float(x)) for x in data.nominal_interfaces_mm)}")
    lines += [f"# {k}: {' '.join(repr(float(x)) for x in v)}" for k, v in (truth or {}).items()]
    lines.append("position_mm,displacement_mm")
    lines += [f"{float(z)!r},{float(u)!r}" for z, u in zip(data.positions_mm, data.displacements_mm)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def read_csv(path: Path) -> tuple[BarData, dict[str, np.ndarray]]:
    """(data, truth) from a file of :func:`write_csv`'s form; ValueError saying what is wrong."""
    header: dict[str, str] = {}
    rows: list[tuple[float, float]] = []
    text = Path(path).read_text().splitlines()
    columns_seen = False
    for number, line in enumerate(text, 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep and key.strip() in CSV_HEADER_KEYS + CSV_TRUTH_KEYS + ("nominal_interfaces_mm",):
                header[key.strip()] = value.strip()
            continue
        if not columns_seen:
            if [c.strip() for c in line.split(",")] != ["position_mm", "displacement_mm"]:
                raise ValueError(f"{path}:{number}: expected the columns 'position_mm,displacement_mm', got {line!r}")
            columns_seen = True
            continue
        try:
            z, u = (float(x) for x in line.split(","))
        except ValueError:
            raise ValueError(f"{path}:{number}: {line!r} is not two numbers (position_mm, displacement_mm)") from None
        rows.append((z, u))
    if not rows:
        raise ValueError(f"{path}: no readings (expected a 'position_mm,displacement_mm' table)")
    try:
        numbers = {k: float(v) for k, v in header.items() if k in CSV_HEADER_KEYS}
        truth = {k: np.array([float(x) for x in v.split()]) for k, v in header.items() if k in CSV_TRUTH_KEYS}
        nominal = np.array([float(x) for x in header["nominal_interfaces_mm"].split()]) \
            if "nominal_interfaces_mm" in header else None
    except ValueError:
        raise ValueError(f"{path}: a '# key: value' line does not hold numbers: {header}") from None
    for key in ("length_mm", "area_mm2"):
        if key not in numbers:
            raise ValueError(f"{path}: no '# {key}: NUMBER' line (the bar's {key.split('_')[0]})")
    z, u = np.array(rows).T
    return BarData(z, u, numbers["length_mm"], numbers["area_mm2"], numbers.get("force_n"),
                   numbers.get("displacement_noise_sd_mm"), nominal), truth


# ---- identifiability --------------------------------------------------------------------------------


def check_identifiable(data: BarData, n_layers: int) -> None:
    """Refuse, before fitting, what the set-up cannot determine (NotIdentifiable naming what is missing)."""
    if n_layers < 1:
        raise ValueError(f"layers must be at least 1, got {n_layers}")
    data.stress_mpa  # no force: ratios only
    needed = 2 * n_layers - 1  # two points per layer's line, the clamp being the first layer's first
    if len(data.positions_mm) < needed:
        raise NotIdentifiable(f"{len(data.positions_mm)} sensors cannot resolve {n_layers} layers: each layer needs two "
                              f"points on its line (the clamp counts as one for the first), {needed} sensors at least")
    if data.nominal_interfaces_mm is not None:
        if len(data.nominal_interfaces_mm) != n_layers - 1:
            raise ValueError(f"the specimen was made with {len(data.nominal_interfaces_mm) + 1} layers; "
                             f"{n_layers} were asked for")
        check_layers_resolved(data, data.nominal_interfaces_mm, "as made")


def points_per_layer(data: BarData, interfaces_mm: np.ndarray) -> np.ndarray:
    """Sensors in each layer, the clamp counted in the first."""
    layer = np.searchsorted(np.asarray(interfaces_mm), data.positions_mm, side="right")
    counts = np.bincount(layer, minlength=len(interfaces_mm) + 1)
    counts[0] += 1
    return counts


def check_layers_resolved(data: BarData, interfaces_mm: np.ndarray, which: str = "as fitted") -> None:
    """Refuse layers (as made, before a fit; as fitted, after one) with fewer than two points: that layer's
    modulus and the interfaces beside it are then not determined by the data."""
    counts = points_per_layer(data, interfaces_mm)
    bounds = np.concatenate([[0.0], interfaces_mm, [data.length_mm]])
    short = [f"layer {i + 1} ({which}: {bounds[i]:.2f}-{bounds[i + 1]:.2f} mm) has {c - (i == 0)} sensor(s)"
             for i, c in enumerate(counts) if c < 2]
    if short:
        raise NotIdentifiable("; ".join(short) + ": a layer needs two points on its line (the clamp counts for the "
                              "first), so its modulus and the interfaces beside it are not determined; add sensors "
                              "there or fit fewer layers")


def check_fit(data: BarData, n_layers: int, rss_mm2: float) -> None:
    """Refuse a fit whose misfit the stated sensor noise cannot explain (chi-square test at p < 0.001):
    then a layer is thinner than the sensors can resolve (its line rests on one point and the fit put
    the kink elsewhere), the layer count is wrong, or the noise is understated. Without a stated noise
    level nothing can be said, and nothing is checked."""
    dof = len(data.positions_mm) - (2 * n_layers - 1)
    if data.noise_sd_mm is None or data.noise_sd_mm <= 0 or dof <= 0:
        return
    from scipy import stats

    chi2 = rss_mm2 / data.noise_sd_mm ** 2
    p_value = float(stats.chi2.sf(chi2, dof))
    if p_value < 1e-3:
        raise NotIdentifiable(f"the readings do not fit {n_layers} layers within the stated noise (chi-square "
                              f"{chi2:.0f} for {dof} degrees of freedom, p = {p_value:.1g}): a layer is thinner "
                              "than the sensor spacing resolves, the number of layers is wrong, or the noise is "
                              "understated; add sensors or revisit the layer count")


def relative_l2_error(modulus_gpa: np.ndarray, true_modulus_gpa: np.ndarray) -> float:
    """|| E - E_true ||_2 / || E_true ||_2 over a grid."""
    return float(np.linalg.norm(modulus_gpa - true_modulus_gpa) / np.linalg.norm(true_modulus_gpa))


# ---- results ----------------------------------------------------------------------------------------


@dataclass
class LayerEstimate:
    """Inferred layers, each with a standard deviation; ``method`` says which inversion produced them."""

    method: str
    moduli_gpa: np.ndarray
    moduli_sd_gpa: np.ndarray
    interfaces_mm: np.ndarray
    interfaces_sd_mm: np.ndarray
    length_mm: float
    residual_sd_mm: float
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)  # method-specific diagnostics (PDE residual, ...)

    @property
    def thicknesses_mm(self) -> np.ndarray:
        return np.diff(np.concatenate([[0.0], self.interfaces_mm, [self.length_mm]]))

    def modulus_gpa(self, z_mm: np.ndarray) -> np.ndarray:
        return self.moduli_gpa[np.searchsorted(self.interfaces_mm, np.asarray(z_mm, dtype=float), side="right")]

    def displacement_mm(self, z_mm: np.ndarray, stress_mpa: float) -> np.ndarray:
        return _design(np.asarray(z_mm, dtype=float), self.interfaces_mm) @ (stress_mpa / MPA_PER_GPA / self.moduli_gpa)

    def measurements(self) -> dict[str, float]:
        """As a station records them: layer_k_modulus_gpa, layer_k_thickness_mm, interface_k_mm, each with _sd."""
        out: dict[str, float] = {"layers": float(len(self.moduli_gpa)), "residual_sd_mm": self.residual_sd_mm}
        thickness_sd = _thickness_sd(self.interfaces_sd_mm)
        for k, (e, e_sd, h, h_sd) in enumerate(zip(self.moduli_gpa, self.moduli_sd_gpa, self.thicknesses_mm,
                                                   thickness_sd), 1):
            out |= {f"layer_{k}_modulus_gpa": float(e), f"layer_{k}_modulus_sd_gpa": float(e_sd),
                    f"layer_{k}_thickness_mm": float(h), f"layer_{k}_thickness_sd_mm": float(h_sd)}
        for k, (z, z_sd) in enumerate(zip(self.interfaces_mm, self.interfaces_sd_mm), 1):
            out |= {f"interface_{k}_mm": float(z), f"interface_{k}_sd_mm": float(z_sd)}
        return out


def _thickness_sd(interfaces_sd: np.ndarray) -> np.ndarray:
    """sd of each layer's thickness from its bounding interfaces' (taken as independent; the ends are exact)."""
    padded = np.concatenate([[0.0], interfaces_sd, [0.0]])
    return np.sqrt(padded[:-1] ** 2 + padded[1:] ** 2)


def _design(z: np.ndarray, breaks: np.ndarray) -> np.ndarray:
    """Length of [0, z_j] inside each segment: u = design @ slopes is continuous, through the clamp."""
    edges = np.concatenate([[0.0], breaks])
    upper = np.concatenate([breaks, [np.inf]])
    return np.clip(np.minimum(z[:, None], upper[None, :]) - edges[None, :], 0.0, None)


# ---- the segmented least-squares baseline -----------------------------------------------------------


def segmented_fit(data: BarData, n_layers: int) -> LayerEstimate:
    """Continuous piecewise-linear least squares with ``n_layers - 1`` unknown breakpoints (see the module)."""
    started = time.perf_counter()
    check_identifiable(data, n_layers)
    z, u = data.positions_mm, data.displacements_mm
    gaps = np.concatenate([[0.0], z, [data.length_mm]])  # gap g spans (gaps[g], gaps[g + 1])
    assignments = []  # (lower, upper) bounds of the breakpoints for each placement in the gaps
    for chosen in itertools.combinations(range(len(gaps) - 1), n_layers - 1):
        low, high = gaps[list(chosen)], gaps[[g + 1 for g in chosen]]
        if np.all(high - low > 0) and np.all(points_per_layer(data, (low + high) / 2) >= 2):
            assignments.append((low, high))  # (a layer without its two points is not a determined fit)
    # Rank the placements by the misfit with the breakpoints mid-gap (one linear solve each), then solve
    # the most promising exactly: with dense sensors the gaps are narrow and the ranking is already right,
    # which turns thousands of nonlinear fits into a few.
    mid_rss = [float(np.sum(_slopes((low + high) / 2, z, u)[1] ** 2)) for low, high in assignments]
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for index in np.argsort(mid_rss)[:SEGMENTED_REFINED]:
        low, high = assignments[index]
        if n_layers == 1:
            breaks = np.zeros(0)
        else:
            fitted = optimize.least_squares(lambda b: _projected_residuals(b, z, u), (low + high) / 2,
                                            bounds=(low, high + 1e-12), xtol=1e-12, ftol=1e-12, gtol=1e-12)
            breaks = fitted.x
        slopes, residuals = _slopes(breaks, z, u)
        rss = float(residuals @ residuals)
        if best is None or rss < best[0]:
            best = (rss, breaks, slopes)
    if best is None:
        raise NotIdentifiable(f"no placement of {n_layers} layers gives every layer two points on its line "
                              f"with {len(z)} sensors")
    rss, breaks, slopes = best
    check_fit(data, n_layers, rss)
    stress = data.stress_mpa
    moduli = stress / MPA_PER_GPA / slopes
    dof = max(len(z) - (2 * n_layers - 1), 1)
    noise_sd = data.noise_sd_mm if data.noise_sd_mm is not None else math.sqrt(rss / dof)
    slope_sd, breaks_sd = _parameter_sd(z, slopes, breaks, noise_sd)
    return LayerEstimate("segmented least squares", moduli, np.abs(moduli) * slope_sd / np.abs(slopes), breaks,
                         breaks_sd, data.length_mm, math.sqrt(rss / len(z)), time.perf_counter() - started)


def _slopes(breaks: np.ndarray, z: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    design = _design(z, breaks)
    slopes = np.linalg.lstsq(design, u, rcond=None)[0]
    return slopes, design @ slopes - u


def _projected_residuals(breaks: np.ndarray, z: np.ndarray, u: np.ndarray) -> np.ndarray:
    return _slopes(breaks, z, u)[1]


def _parameter_sd(z: np.ndarray, slopes: np.ndarray, breaks: np.ndarray, noise_sd: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Standard deviations of slopes and breakpoints: noise_sd^2 (J^T J)^-1, J of u(z_j) in (slopes, breaks)."""
    jacobian = parameter_jacobian(z, slopes, breaks)
    covariance = noise_sd ** 2 * np.linalg.pinv(jacobian.T @ jacobian)
    sd = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    return sd[: len(slopes)], sd[len(slopes):]


def parameter_jacobian(z: np.ndarray, slopes: np.ndarray, breaks: np.ndarray) -> np.ndarray:
    """d u(z_j) / d(slopes, breaks) of the continuous piecewise-linear model: a breakpoint moved by db
    changes u above it by (s_left - s_right) db."""
    d_slopes = _design(z, breaks)
    d_breaks = np.stack([(z > b) * (slopes[k] - slopes[k + 1]) for k, b in enumerate(breaks)], axis=1) \
        if len(breaks) else np.zeros((len(z), 0))
    return np.concatenate([d_slopes, d_breaks], axis=1)


def cramer_rao_sd(moduli_gpa: np.ndarray, interfaces_mm: np.ndarray, positions_mm: np.ndarray, stress_mpa: float,
                  noise_sd_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """The smallest standard deviations of (moduli, interfaces) any unbiased inversion of these sensors can
    reach at this noise (the Cramér-Rao bound of the Gaussian model at the true layers)."""
    slopes = stress_mpa / MPA_PER_GPA / np.asarray(moduli_gpa, dtype=float)
    slope_sd, breaks_sd = _parameter_sd(np.asarray(positions_mm, dtype=float), slopes,
                                        np.asarray(interfaces_mm, dtype=float), noise_sd_mm)
    return np.asarray(moduli_gpa) * slope_sd / slopes, breaks_sd


def graded_cramer_rao_l2(bar: GradedBar, positions_mm: np.ndarray, stress_mpa: float, noise_sd_mm: float,
                         grid_points: int = 201) -> float:
    """The smallest expected relative L2 error of E(z) any unbiased inversion of these sensors can reach at
    this noise on a power-law graded bar, E(z) = E_0 + (E_L - E_0) (z / L)^p.

    The Cramér-Rao bound of (E_0, E_L, p), carried to E(z) on ``grid_points`` points by its gradient: an
    inversion that knows the profile is a power law reaches it, one that does not (the PINN) can only do
    worse, since every bar of the family is also a bar it must answer for. The expectation is over noise
    draws: one specimen's error can exceed it."""
    def gradient(z_mm: np.ndarray) -> np.ndarray:  # dE/d(E_0, E_L, p)
        t = z_mm / bar.length_mm
        power = t ** bar.exponent
        log_t = np.log(np.where(t > 0, t, 1.0))
        return np.stack([1.0 - power, power, (bar.modulus_end_gpa - bar.modulus_start_gpa) * power * log_t])

    # du/dtheta = -sigma_0 int_0^z (dE/dtheta) / E^2 dz', by the trapezoid rule on a fine grid
    dense = np.linspace(0.0, bar.length_mm, 20001)
    d_compliance = -integrate.cumulative_trapezoid(gradient(dense) / bar.modulus_gpa(dense) ** 2, dense,
                                                   initial=0.0, axis=1)
    jacobian = stress_mpa / MPA_PER_GPA * np.stack([np.interp(positions_mm, dense, row) for row in d_compliance],
                                                   axis=1)
    covariance = noise_sd_mm ** 2 * np.linalg.pinv(jacobian.T @ jacobian)
    grid = np.linspace(0.0, bar.length_mm, grid_points)
    g = gradient(grid)
    variance = np.einsum("ki,kl,li->i", g, covariance, g)
    return float(np.sqrt(variance.sum() / (bar.modulus_gpa(grid) ** 2).sum()))
