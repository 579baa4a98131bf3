"""Active learning of a phase boundary: which CALPHAD points to compute next.

The learner holds a pool of candidate compositions, asks a labelling function (the CALPHAD oracle
in practice, any ``x -> {0, 1}`` here) for a space-filling start, then repeats: fit the Bayesian
logistic classifier, pick the next batch by expected error reduction (or least confidence), label
it. Random and grid designs of the same budget are the baselines the bench compares against.
Plain numpy/torch/pyro: no Ray, no bus.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np

from sdl.space import SearchSpace
from sdl.surrogates.phase_classifier import BayesianLogisticClassifier

Strategy = Literal["eer", "least_confidence", "random", "grid"]
STRATEGIES: tuple[str, ...] = ("eer", "least_confidence", "random", "grid")

# Expected error reduction is scored on the candidates the classifier is least sure of: points deep
# inside a phase field cannot reduce the expected error much, and scoring all would cost O(pool^2).
EER_SHORTLIST = 150
EER_POOL = 600


class PhaseBoundaryLearner:
    """Sequential active learner over a fixed candidate pool (rows of inputs inside ``bounds``)."""

    def __init__(self, label: Callable[[np.ndarray], np.ndarray], candidates: np.ndarray, bounds: np.ndarray, *,
                 strategy: Strategy = "eer", initial: int = 12, batch: int = 4, degree: int = 3, seed: int = 0,
                 num_steps: int = 1500, warm_steps: int = 300) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; available: {', '.join(STRATEGIES)}")
        if initial < 2 or batch < 1:
            raise ValueError(f"need initial >= 2 and batch >= 1, got initial={initial}, batch={batch}")
        self.label = label
        self.candidates = np.asarray(candidates, dtype=float)
        self.bounds = np.asarray(bounds, dtype=float)
        self.strategy = strategy
        self.initial = initial
        self.batch = batch
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.classifier = BayesianLogisticClassifier(degree=degree, bounds=self.bounds, seed=seed,
                                                     num_steps=num_steps, warm_start=True, warm_steps=warm_steps)
        self.x = np.empty((0, self.candidates.shape[1]))
        self.y = np.empty(0)
        self._unlabelled = np.ones(len(self.candidates), dtype=bool)
        self._order = self.rng.permutation(len(self.candidates))  # the random baseline's sequence
        self._fitted_on = -1

    @property
    def calls(self) -> int:
        return len(self.y)

    def _take(self, indices: np.ndarray) -> None:
        indices = np.asarray(indices, dtype=int)
        self._unlabelled[indices] = False
        labels = np.asarray(self.label(self.candidates[indices]), dtype=float)
        self.x = np.vstack([self.x, self.candidates[indices]])
        self.y = np.concatenate([self.y, labels])

    def fit(self) -> BayesianLogisticClassifier:
        if self._fitted_on != self.calls:
            self.classifier.fit(self.x, self.y)
            self._fitted_on = self.calls
        return self.classifier

    def _next_random(self, n: int) -> np.ndarray:
        order = self._order[self._unlabelled[self._order]]
        return order[:n]

    def _next_batch(self, n: int) -> np.ndarray:
        free = np.flatnonzero(self._unlabelled)
        if self.strategy in ("random", "grid"):  # grid: what its lattice left of the budget
            return self._next_random(n)
        if self.calls < self.initial:
            # Space-filling start: the pool is in Sobol' order, so its first points spread out.
            return free[: min(n, self.initial - self.calls)]
        classifier = self.fit()
        confidence = classifier.least_confidence(self.candidates[free])
        if self.strategy == "least_confidence":
            score = -confidence  # lower is better below
        else:
            shortlist = free[np.argsort(-confidence)[:EER_SHORTLIST]]
            pool = self.candidates[self.rng.choice(len(self.candidates), min(EER_POOL, len(self.candidates)),
                                                   replace=False)]
            score_short = classifier.expected_error_reduction(self.candidates[shortlist], pool)
            free, score = shortlist, score_short
        # Greedy batch with a minimum spacing, so one round does not label near-duplicates.
        scaled = (self.candidates[free] - self.bounds[:, 0]) / np.maximum(np.ptp(self.bounds, axis=1), 1e-12)
        chosen: list[int] = []
        for i in np.argsort(score, kind="stable"):
            if all(np.linalg.norm(scaled[i] - scaled[j]) > 0.08 for j in chosen):
                chosen.append(int(i))
            if len(chosen) == n:
                break
        return free[chosen]

    def run(self, budget: int, *, progress: Callable[[int, int], None] | None = None) -> BayesianLogisticClassifier:
        """Label until ``budget`` calls have been spent in total, then fit and return the classifier."""
        if budget > len(self.candidates):
            raise ValueError(f"budget {budget} exceeds the {len(self.candidates)} candidates in the pool")
        if self.strategy == "grid":
            if self.calls == 0:
                self._take(grid_design(self.candidates, self.bounds, budget))
        while self.calls < budget:
            self._take(self._next_batch(min(self.batch, budget - self.calls)))
            if progress is not None:
                progress(self.calls, budget)
        return self.fit()


def grid_design(candidates: np.ndarray, bounds: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the candidates nearest to the finest regular lattice with at most ``budget`` points
    inside the pool's region (the lattice is trimmed to the region by nearest-candidate distance)."""
    k = candidates.shape[1]
    scaled = (candidates - bounds[:, 0]) / np.maximum(np.ptp(bounds, axis=1), 1e-12)
    best = np.arange(min(budget, len(candidates)))
    for m in range(2, 64):
        axis = (np.arange(m) + 0.5) / m
        lattice = np.stack(np.meshgrid(*([axis] * k), indexing="ij"), axis=-1).reshape(-1, k)
        distances = np.linalg.norm(scaled[None, :, :] - lattice[:, None, :], axis=-1)
        nearest = distances.argmin(axis=1)
        inside = distances[np.arange(len(lattice)), nearest] < 0.5 / m * np.sqrt(k) * 0.6
        picked = np.unique(nearest[inside])
        if len(picked) > budget:
            break
        best = picked
    return best


def candidate_pool(space: SearchSpace, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` compositions of ``space`` in scrambled Sobol' order, as free-element fractions (n x k)."""
    from scipy.stats import qmc

    if space.composition is None or space.parameters:
        raise ValueError("a phase-boundary pool needs a space with a composition and no other parameters")
    sampler = qmc.Sobol(d=space.dimension, scramble=True, seed=seed)
    rows: list[list[float]] = []
    while len(rows) < n:
        points, _ = space.from_unit_cube(sampler.random_base2(int(np.ceil(np.log2(max(256, 2 * n))))))
        rows.extend([p.composition[e] for e in space.composition.free_elements] for p in points)
    return np.asarray(rows[:n])
