"""Phase equilibria from CALPHAD (pycalphad), cached on disk and tabulated for fast lookups.

One equilibrium point costs seconds when computed alone but tens of milliseconds inside a grid, so
the twin never asks pycalphad for single points in its hot path: :meth:`PhaseEquilibria.grid`
computes the equilibria on a regular grid of free mole fractions and temperatures in batches,
stores every point in an SQLite cache keyed by the database's hash, the rounded composition and
the temperature, and returns a :class:`PhaseTable` that interpolates phase fractions for thousands
of candidates at once.

Phases are reported as microstructural constituents a metallurgist names, not as database phase
labels: the ordered and disordered FCC share the ``L12_FCC`` model in an order-disorder database,
so composition sets are told apart by their site fractions (``gamma`` disordered, ``gamma_prime``
ordered L1_2); likewise B2 (NiAl-type, brittle) from disordered BCC.

A grid is checked against thermodynamics before it is cached: the equilibrium Gibbs energy is convex in
composition, so a point above the chord of its neighbours is a metastable state, solved again a nudge
away. Points inside a region where pycalphad misses the equilibrium throughout cannot be told this
way (only the region's edge is above a chord), nor can points on the grid's edges or next to the
simplex's face (one neighbour only); the region's edges are counted and reported, not hidden. A point
asked for alone (:meth:`PhaseEquilibria.point`) is checked the same way against neighbours solved for it,
a tenth of an at.% either side along each free element.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import itertools
import json
import os
import re
import sqlite3
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.interpolate import RegularGridInterpolator

DEFAULT_DATABASE = "pycalphad:alcocrni.tdb"  # Al-Co-Cr-Ni, shipped with pycalphad's test databases
CONSTITUENTS = ("gamma", "gamma_prime", "b2", "bcc", "sigma", "liquid", "other")
BRITTLE = ("b2", "sigma", "other")
PRESSURE_PA = 101325.0
# A composition set counts as ordered when a species' site fractions on the two sublattices differ
# by more than this (disordered sets agree to numerical precision).
ORDER_THRESHOLD = 0.05
COMPOSITION_DECIMALS = 4
TRACE_FRACTION = 1e-6
# pycalphad compiles the models once per call (seconds), then costs ~25 ms a point: a few
# temperatures per call keep progress visible without paying the compile often.
TEMPERATURES_PER_CALL = 4
TEMPERATURE_DECIMALS = 1
# The equilibrium molar Gibbs energy is convex in composition, so a grid point whose Gibbs energy lies
# above the chord of its neighbours along an axis is not an equilibrium but a minimisation pycalphad left
# in a metastable single phase (seen: gamma-prime 1.0 at Al 0.1294, Co 0.1156, Cr 0.0231, 1050 K, 138 J/mol
# above the chord, where the neighbours hold 5-50 % and the true state about 27 %). Correct points lie on
# or below the chord to round-off (0 J/mol on a 9^3 grid); such a point is solved again a nudge away.
CONVEXITY_TOLERANCE_J_PER_MOL = 0.5
REPAIR_NUDGE = 2e-4  # mole fraction: 0.02 at.% moves a phase fraction by ~0.1 %, far below the grid's spacing
# The cache's entries are keyed by this revision too: a change in how equilibria are computed (revision 2:
# the convexity repair above) must not be served values of the old one.
SOLVER_REVISION = 2
# A point asked for alone is checked against neighbours this far (mole fraction) either side along each free
# element. Unchecked, one was seen 190 J/mol above its neighbours' chord: gamma-prime alone at Al 0.108,
# Co 0.0579, Cr 0.1817, 1100 K, where gamma + gamma-prime is stable, 25 HV too hard in the twin; the
# neighbours 0.001 away were solved right. Point revision 2 adds this check (revision 1 had none).
STENCIL_STEP = 1e-3
POINT_REVISION = 2


def default_cache_path() -> Path:
    """Where CALPHAD equilibria are cached between campaigns (``SDL_CACHE_DIR`` overrides)."""
    return Path(os.environ.get("SDL_CACHE_DIR", Path.home() / ".cache" / "sdl")) / "calphad.sqlite"


class CalphadError(ValueError):
    """A database or request pycalphad cannot serve (unknown file or element, bad temperature)."""


def resolve_database(database: str | Path) -> Path:
    """``pycalphad:NAME`` names a database shipped inside pycalphad (loaded as a package resource)."""
    text = str(database)
    if text.startswith("pycalphad:"):
        name = text.split(":", 1)[1]
        resource = importlib.resources.files("pycalphad.tests.databases") / name
        if not resource.is_file():
            shipped = sorted(p.name for p in importlib.resources.files("pycalphad.tests.databases").iterdir()
                             if p.name.lower().endswith(".tdb"))
            raise CalphadError(f"pycalphad ships no database {name!r}; available: {', '.join(shipped)}")
        return Path(str(resource))
    path = Path(text)
    if not path.is_file():
        raise CalphadError(f"thermodynamic database {path} does not exist")
    return path


_PARAMETER = re.compile(r"^(\s*)PARA\w*\s+([A-Z0-9_]+\([^)]*\))\s+(\S+)\s+(.*)$", re.IGNORECASE | re.DOTALL)


def _parameter_name(text: str) -> str:
    return re.sub(r"\s+", "", text).upper()


def shifted_database(database: str | Path, shifts_j_per_mol: dict[str, float], directory: str | Path) -> Path:
    """A copy of ``database`` with constants (J/mol of formula unit) added to named parameters, e.g.
    ``{"G(L12_FCC,NI:AL:VA;0)": -400}`` makes Ni3Al-type gamma-prime more stable: a thermodynamic
    description that disagrees with the original as one assessment disagrees with another (or with
    the world). Written under ``directory`` with a name from its content, so a campaign's cache keys
    (the file's hash) keep the two apart. Every temperature range of a parameter gets the shift."""
    source = resolve_database(database)
    wanted = {_parameter_name(k): float(v) for k, v in shifts_j_per_mol.items()}
    statements = source.read_text(encoding="latin-1").split("!")
    found = set()
    for i, statement in enumerate(statements):
        match = _PARAMETER.match(statement)
        if match is None or _parameter_name(match.group(2)) not in wanted:
            continue
        name = _parameter_name(match.group(2))
        shift = f"{wanted[name]:+.10g}"
        # Ranges: "T_low expr; T_high Y expr; ...; T_high N ref": the shift goes in front of every expr.
        ranges = match.group(4).split(";")
        ranges[0] = f"{shift}{ranges[0].strip()}"
        for j in range(1, len(ranges) - 1):
            high, flag, expression = (ranges[j].strip().split(None, 2) + ["", ""])[:3]
            if flag.upper() == "Y":
                ranges[j] = f" {high} Y {shift}{expression}"
        statements[i] = f"{match.group(1)}PARAMETER {match.group(2)} {match.group(3)} {';'.join(ranges)}"
        found.add(name)
    missing = sorted(set(wanted) - found)
    if missing:
        raise CalphadError(f"database {source.name} has no parameter {', '.join(missing)} to shift")
    text = "!".join(statements)
    digest = hashlib.sha256(text.encode("latin-1")).hexdigest()[:12]
    out = Path(directory) / f"{source.stem}-shifted-{digest}.tdb"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.is_file():
        tmp = out.with_suffix(".tmp")
        tmp.write_text(text, encoding="latin-1")
        os.replace(tmp, out)  # atomic: a concurrent bench task never reads half a file
    return out


@dataclass(frozen=True)
class PhaseTable:
    """Equilibrium constituent fractions tabulated on a grid; interpolates in composition and T."""

    free_elements: tuple[str, ...]
    balance_element: str
    axes: tuple[np.ndarray, ...]  # values of each free element's mole fraction
    temperatures_k: np.ndarray
    fractions: dict[str, np.ndarray]  # constituent -> array (T, *axes); NaN off the simplex

    @functools.cached_property
    def _interpolators(self) -> dict[str, RegularGridInterpolator]:
        """Built once per table: every furnace run and candidate batch interpolates through these."""
        return {name: RegularGridInterpolator((self.temperatures_k, *self.axes), np.nan_to_num(table, nan=0.0))
                for name, table in self.fractions.items()}

    def __call__(self, compositions: np.ndarray, temperatures_k: np.ndarray | float) -> dict[str, np.ndarray]:
        """Fractions for rows of ``compositions`` (n x free elements) at ``temperatures_k`` (n or scalar)."""
        x = np.atleast_2d(np.asarray(compositions, dtype=float))
        t = np.broadcast_to(np.asarray(temperatures_k, dtype=float), (len(x),))
        lo, hi = self.temperatures_k[0], self.temperatures_k[-1]
        if np.any((t < lo - 1e-9) | (t > hi + 1e-9)):
            raise CalphadError(f"temperatures {t.min():.1f}-{t.max():.1f} K outside the tabulated {lo:.1f}-{hi:.1f} K")
        for axis, column, name in zip(self.axes, x.T, self.free_elements):
            if np.any((column < axis[0] - 1e-9) | (column > axis[-1] + 1e-9)):
                raise CalphadError(f"x({name}) outside the tabulated range [{axis[0]}, {axis[-1]}]")
        points = np.column_stack([t, x])
        out = {name: np.clip(interpolate(points), 0.0, 1.0) for name, interpolate in self._interpolators.items()}
        total = sum(out.values())
        return {k: np.where(total > 0, v / np.where(total > 0, total, 1.0), 0.0) for k, v in out.items()}


class PhaseEquilibria:
    """Equilibria of one thermodynamic database for one set of elements, with a disk cache."""

    def __init__(self, database: str | Path = DEFAULT_DATABASE, *, elements: Sequence[str] = ("Al", "Co", "Cr", "Ni"),
                 cache_path: str | Path | None = None) -> None:
        from pycalphad import Database

        self.database_path = resolve_database(database)
        self.database_sha = hashlib.sha256(self.database_path.read_bytes()).hexdigest()[:16]
        self._cache_key = f"{self.database_sha}:r{SOLVER_REVISION}"
        self.db = Database(str(self.database_path))
        known = {e.capitalize() for e in self.db.elements if e not in ("/-", "VA")}
        unknown = sorted(set(elements) - known)
        if unknown:
            raise CalphadError(f"database {self.database_path.name} has no {unknown}; its elements: {sorted(known)}")
        self.elements = tuple(elements)
        self._components = [e.upper() for e in self.elements] + ["VA"]
        self._phases = sorted(set(self.db.phases) - {"GAS"})
        if cache_path is not None:
            Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        self._cache = sqlite3.connect(str(cache_path) if cache_path else ":memory:", check_same_thread=False)
        self._cache.execute(
            "CREATE TABLE IF NOT EXISTS equilibria (database TEXT, composition TEXT, temperature_k REAL,"
            " fractions TEXT NOT NULL, PRIMARY KEY (database, composition, temperature_k))"
        )
        self._point_key = f"{self._cache_key}:point{POINT_REVISION}"
        # rows of earlier solver revisions are never read again (the first revision keyed by the hash alone)
        self._cache.execute("DELETE FROM equilibria WHERE database=? OR (database LIKE ? AND database NOT LIKE ?)"
                            " OR (database LIKE ? AND database != ?)",
                            (self.database_sha, f"{self.database_sha}:r%", f"{self._cache_key}%",
                             f"{self._cache_key}:point%", self._point_key))
        self._cache.commit()
        self.computed_points = 0  # equilibria computed by pycalphad (not served from the cache)
        self.repaired_points = 0  # of those, points solved again off a metastable state onto the hull
        self.metastable_points = 0  # and those no nudge brought onto it (pycalphad misses a region there)
        self._workspace = None  # pycalphad.Workspace, built on first use
        # One caller at a time: an instrument with capacity > 1 calls from several threads, and both
        # the SQLite connection (one transaction at a time) and the Workspace (its conditions are
        # set, then solved) are shared state. Measured: "cannot commit - no transaction is active"
        # from a furnace of capacity 2 without it.
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._cache.close()

    # -- classification --------------------------------------------------------------------------

    def _constituent(self, phase: str, site_fractions: np.ndarray) -> str:
        if phase in ("L12_FCC", "FCC_A1", "BCC_B2", "BCC_A2"):
            model = self.db.phases[phase]
            species = [sorted(str(s) for s in sub if str(s) in self._components) for sub in model.constituents]
            ordered = False
            if len(species) >= 2 and species[0] == species[1]:
                n = len(species[0])
                ordered = bool(np.nanmax(np.abs(site_fractions[:n] - site_fractions[n:2 * n])) > ORDER_THRESHOLD)
            if phase in ("L12_FCC", "FCC_A1"):
                return "gamma_prime" if ordered else "gamma"
            return "b2" if ordered or phase == "BCC_B2" else "bcc"
        if phase.startswith("SIGMA"):
            return "sigma"
        if phase == "LIQUID":
            return "liquid"
        return "other"

    # -- computing -----------------------------------------------------------------------------

    def _key(self, free: dict[str, float], temperature_k: float, *, alone: bool = False) -> tuple[str, str, float]:
        # A point asked for alone is checked against neighbours of its own, not a grid's, so it is cached apart
        # from grid points: what it returns never depends on which grid happened to run first.
        composition = json.dumps({k: round(v, COMPOSITION_DECIMALS) for k, v in sorted(free.items())})
        return (self._point_key if alone else self._cache_key, composition,
                round(float(temperature_k), TEMPERATURE_DECIMALS))

    def _cached(self, keys: list[tuple[str, str, float]]) -> dict[tuple[str, str, float], dict[str, float]]:
        if len(keys) <= 64:  # a point or two: look each up by primary key, not by scanning the table
            found = {}
            for key in keys:
                row = self._cache.execute("SELECT fractions FROM equilibria WHERE database=? AND composition=?"
                                          " AND temperature_k=?", key).fetchone()
                if row is not None:
                    found[key] = json.loads(row[0])
            return found
        rows = self._cache.execute(
            "SELECT database, composition, temperature_k, fractions FROM equilibria WHERE database=?",
            (keys[0][0],),  # one kind of key per call: grid points or points solved alone
        )
        wanted = set(keys)
        return {k: json.loads(r[3]) for r in rows if (k := (r[0], r[1], r[2])) in wanted}

    def _store(self, computed: dict[tuple[str, str, float], dict[str, float]]) -> None:
        with self._cache:
            self._cache.executemany("INSERT OR REPLACE INTO equilibria VALUES (?, ?, ?, ?)",
                                    [(*k, json.dumps(f)) for k, f in computed.items()])

    def _solve(self, axes: dict[str, np.ndarray], temperatures_k: Sequence[float]):
        """One pycalphad call over the full grid of ``axes`` x ``temperatures_k`` (its xarray dataset)."""
        from pycalphad import Workspace
        from pycalphad import variables as v

        # pycalphad finds no equilibrium at a mole fraction of exactly zero; a trace stands in for it.
        conditions = {v.X(e.upper()): np.maximum(np.asarray(values, dtype=float), TRACE_FRACTION)
                      for e, values in axes.items()}
        conditions.update({v.T: np.asarray(temperatures_k, dtype=float), v.P: PRESSURE_PA, v.N: 1.0})
        # One Workspace for the life of this object: building the phase models costs ~2.4 s, after
        # which a single point costs ~25 ms. Changing its conditions keeps the models.
        if self._workspace is None or set(self._workspace.conditions) != set(conditions):
            self._workspace = Workspace(self.db, self._components, self._phases, conditions)
        else:
            self._workspace.conditions = conditions
        return self._workspace.eq.get_dataset()

    def _fractions(self, phases, amounts, sites) -> dict[str, float]:
        fractions = dict.fromkeys(CONSTITUENTS, 0.0)
        for label, np_, y in zip(phases, amounts, sites):
            if label and np.isfinite(np_):
                fractions[self._constituent(str(label), y)] += float(np_)
        return fractions

    def _parsed(self, result, names: Sequence[str]):
        """Phase labels, amounts, site fractions and molar Gibbs energy of a solved grid, each indexed
        temperature first, then one axis per free element in ``names`` (then vertex, then site)."""
        order = ["T"] + [f"X_{n.upper()}" for n in names] + ["vertex"]
        phase = result.Phase.squeeze(["N", "P"]).transpose(*order).values
        amount = result.NP.squeeze(["N", "P"]).transpose(*order).values
        sites = result.Y.squeeze(["N", "P"]).transpose(*order, "internal_dof").values
        gibbs = result.GM.squeeze(["N", "P"]).transpose(*order[:-1]).values
        return phase, amount, sites, gibbs

    def _compute(self, axes: dict[str, np.ndarray], temperatures_k: Sequence[float]) -> dict[tuple, dict[str, float]]:
        """Equilibria on the grid of ``axes`` x ``temperatures_k``: one pycalphad call, then the points that
        break the convexity of the Gibbs energy solved again (:meth:`_repaired`)."""
        result = self._solve(axes, temperatures_k)
        names = list(axes)
        phase, amount, sites, gibbs = self._parsed(result, names)
        excess = _above_chord(gibbs, [np.maximum(np.asarray(axes[n], dtype=float), TRACE_FRACTION) for n in names])
        out = {}
        for ti, temperature in enumerate(result.T.values):
            for index in itertools.product(*(range(len(axes[n])) for n in names)):
                free = {n: float(axes[n][i]) for n, i in zip(names, index)}
                fractions = dict.fromkeys(CONSTITUENTS, 0.0)
                if sum(free.values()) <= 1.0 + 1e-12:
                    at = (ti, *index)
                    fractions = self._fractions(phase[at], amount[at], sites[at])
                    if excess[at] > CONVEXITY_TOLERANCE_J_PER_MOL:
                        fractions = self._repaired(free, float(temperature), gibbs[at], gibbs[at] - excess[at]) \
                            or fractions
                out[self._key(free, temperature)] = fractions
        self.computed_points += len(out)
        return out

    def _compute_point(self, free: dict[str, float], temperatures_k: Sequence[float]) -> dict[tuple, dict[str, float]]:
        """Equilibria at one composition, checked like a grid point against neighbours of its own: one
        pycalphad line ``STENCIL_STEP`` either side along each free element (a star, not the 3^k cube: the
        chord test needs no diagonals), repaired where the point lies above any line's chord."""
        names = list(free)
        step = STENCIL_STEP if sum(free.values()) + STENCIL_STEP <= 1.0 else 0.0
        lines = [e for e in names if step and free[e] - step >= 0.0] or [None]  # None: the point alone
        centre, excesses = None, []
        for along in lines:
            axes = {n: np.array([x - step, x, x + step] if n == along else [x]) for n, x in free.items()}
            result = self._solve(axes, temperatures_k)
            phase, amount, sites, gibbs = self._parsed(result, names)
            at = (slice(None), *(1 if n == along else 0 for n in names))  # every temperature, the middle point
            excesses.append(_above_chord(gibbs, [np.maximum(axes[n], TRACE_FRACTION) for n in names])[at])
            if centre is None:  # every line solves the point itself; the first one's solution is kept
                temperatures = [float(t) for t in result.T.values]
                centre = phase[at], amount[at], sites[at], gibbs[at]
        worst = np.max(excesses, axis=0)
        phase, amount, sites, gibbs = centre
        out = {}
        for ti, temperature in enumerate(temperatures):
            fractions = self._fractions(phase[ti], amount[ti], sites[ti])
            if worst[ti] > CONVEXITY_TOLERANCE_J_PER_MOL:
                fractions = self._repaired(free, temperature, gibbs[ti], gibbs[ti] - worst[ti]) or fractions
            out[self._key(free, temperature, alone=True)] = fractions
        self.computed_points += len(out)
        return out

    def _repaired(self, free: dict[str, float], temperature_k: float, gibbs_j_per_mol: float,
                  chord_j_per_mol: float) -> dict[str, float] | None:
        """The constituents at a point pycalphad left above the chord of its neighbours, solved again at
        compositions a nudge away (every free element up, then down, then each one alone): the first whose
        tangent plane, extended back to the point, reaches the chord, else the most stable state found. None
        where no nudge finds a state more stable than the first solution: pycalphad misses the equilibrium
        over a region there, not at a point (counted in ``metastable_points``)."""
        elements = list(free)
        directions = [dict.fromkeys(elements, 1.0), dict.fromkeys(elements, -1.0)]
        directions += [{e: sign if e == one else 0.0 for e in elements} for one in elements for sign in (1.0, -1.0)]
        at_point = {e.upper(): max(x, TRACE_FRACTION) for e, x in free.items()}
        balance = next(c for c in self._components if c != "VA" and c not in at_point)
        at_point[balance] = 1.0 - sum(at_point.values())
        best = None
        for direction in directions:
            nudged = {e: x + direction[e] * REPAIR_NUDGE for e, x in free.items()}
            if min(nudged.values()) < 0 or sum(nudged.values()) > 1:
                continue
            result = self._solve({e: np.array([x]) for e, x in nudged.items()}, [temperature_k])
            mu = dict(zip(result.component.values.tolist(), result.MU.values.reshape(-1).tolist()))
            gibbs = sum(mu[c] * x for c, x in at_point.items())  # G(x) = sum mu_i x_i on the tangent plane
            if not np.isfinite(gibbs):
                continue  # pycalphad found no equilibrium at this nudge
            phases = result.Phase.values.reshape(-1)
            if best is None or gibbs < best[0]:
                best = (gibbs, self._fractions(phases, result.NP.values.reshape(-1),
                                               result.Y.values.reshape(len(phases), -1)))
            if gibbs <= chord_j_per_mol + CONVEXITY_TOLERANCE_J_PER_MOL:
                break
        if best is None or best[0] >= gibbs_j_per_mol - CONVEXITY_TOLERANCE_J_PER_MOL:
            self.metastable_points += 1
            return None
        if best[0] <= chord_j_per_mol + CONVEXITY_TOLERANCE_J_PER_MOL:
            self.repaired_points += 1
        else:
            self.metastable_points += 1  # more stable than the first solution, still above the chord
        return best[1]

    def point(self, free: dict[str, float], temperatures_k: Sequence[float]) -> dict[float, dict[str, float]]:
        """Constituent fractions at one composition (free element -> mole fraction) and temperatures.

        What the cache lacks is solved with its stencil (:meth:`_compute_point`): one pycalphad call per free
        element, about 0.1 s once the models are built.
        """
        balance = [e for e in self.elements if e not in free]
        if len(balance) != 1 or set(free) - set(self.elements):
            raise CalphadError(f"give mole fractions of all elements but one of {self.elements}; got {sorted(free)}")
        rounded = {e: round(float(x), COMPOSITION_DECIMALS) for e, x in free.items()}
        if min(rounded.values()) < 0 or sum(rounded.values()) > 1.0:
            raise CalphadError(f"mole fractions must be >= 0 and sum to at most 1, got {rounded}")
        keys = {float(t): self._key(rounded, t, alone=True) for t in temperatures_k}
        with self._lock:
            values = self._cached(list(keys.values()))
            missing = [t for t, k in keys.items() if k not in values]
            if missing:
                computed = self._compute_point(rounded, missing)
                self._store(computed)
                values.update(computed)
        return {t: values[k] for t, k in keys.items()}

    def grid(self, axes: dict[str, Sequence[float]], temperatures_k: Sequence[float], *,
             progress: Callable[[int, int], None] | None = None) -> PhaseTable:
        """Equilibria on the grid ``axes`` (free element -> mole fractions) x ``temperatures_k``.

        Cached points are read back; for each temperature with a missing point the whole slice is
        computed in one pycalphad call (batching is what makes CALPHAD affordable here).
        """
        free_elements = tuple(axes)
        balance = [e for e in self.elements if e not in free_elements]
        if len(balance) != 1 or set(free_elements) - set(self.elements):
            raise CalphadError(f"axes must name all elements but one of {self.elements}; got {free_elements}")
        arrays = {e: np.round(np.asarray(axes[e], dtype=float), COMPOSITION_DECIMALS) for e in free_elements}
        temperatures = np.asarray(sorted(temperatures_k), dtype=float)
        if np.any(temperatures <= 0):
            raise CalphadError(f"temperatures must be positive kelvin, got {temperatures.tolist()}")
        shape = (len(temperatures), *(len(a) for a in arrays.values()))
        indices = list(itertools.product(*(range(len(a)) for a in arrays.values())))
        keys = {(ti, index): self._key({e: float(arrays[e][i]) for e, i in zip(free_elements, index)}, temperature)
                for ti, temperature in enumerate(temperatures) for index in indices}
        with self._lock:
            values = self._cached(list(keys.values()))
            missing = sorted({ti for (ti, _), key in keys.items() if key not in values})
            metastable_before = self.metastable_points
            for start in range(0, len(missing), TEMPERATURES_PER_CALL):
                chunk = [float(temperatures[ti]) for ti in missing[start:start + TEMPERATURES_PER_CALL]]
                computed = self._compute(arrays, chunk)
                self._store(computed)
                values.update(computed)
                if progress is not None:
                    progress(min(start + TEMPERATURES_PER_CALL, len(missing)), len(missing))
            if self.metastable_points > metastable_before:
                warnings.warn(f"{self.metastable_points - metastable_before} of {len(keys)} equilibria of this grid "
                              f"({self.database_path.name}) stay above the convex hull of their neighbours after "
                              f"solving them again: pycalphad misses the equilibrium there", RuntimeWarning,
                              stacklevel=2)
        tables = {c: np.full(shape, np.nan) for c in CONSTITUENTS}
        for (ti, index), key in keys.items():
            if sum(arrays[e][i] for e, i in zip(free_elements, index)) <= 1.0 + 1e-12:
                for c in CONSTITUENTS:
                    tables[c][(ti, *index)] = values[key][c]
        return PhaseTable(free_elements, balance[0], tuple(arrays.values()), temperatures, tables)


def _above_chord(gibbs: np.ndarray, axes: Sequence[np.ndarray]) -> np.ndarray:
    """How far (J/mol) each grid point's Gibbs energy lies above the chord of its two neighbours, the most
    along any composition axis (``gibbs``: temperature x one axis per free element); 0 on the grid's edges
    and where a neighbour lies outside the composition simplex (NaN)."""
    excess = np.zeros_like(gibbs)
    for k, values in enumerate(axes):
        if len(values) < 3:
            continue
        g = np.moveaxis(gibbs, k + 1, 0)
        weight = ((values[1:-1] - values[:-2]) / (values[2:] - values[:-2])).reshape(-1, *([1] * (g.ndim - 1)))
        above = g[1:-1] - ((1 - weight) * g[:-2] + weight * g[2:])
        along = np.zeros_like(g)
        along[1:-1] = np.nan_to_num(above, nan=0.0)
        excess = np.maximum(excess, np.moveaxis(along, 0, k + 1))
    return excess
