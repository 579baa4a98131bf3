"""CALPHAD features for the hybrid surrogate: the planner's own database, tabulated once, interpolated
in torch exactly as the twin's table is (scipy), differentiable, and bounded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.interpolate import RegularGridInterpolator

from sdl.env.calphad import BRITTLE, PhaseEquilibria
from sdl.surrogates.calphad_features import FEATURES, CalphadFeatures

BOUNDS = {"Al": (0.02, 0.14), "Co": (0.0, 0.15), "Cr": (0.0, 0.15)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("calphad") / "cache.sqlite"


@pytest.fixture(scope="module")
def features(cache):
    return CalphadFeatures(("Al", "Co", "Cr"), "Ni", BOUNDS, solution_temperature_k=1300.0,
                           ageing_temperature_k=1050.0, points_per_axis=3, cache_path=cache)


def test_features_interpolate_the_planners_own_table(features, cache):
    equilibria = PhaseEquilibria(elements=("Al", "Co", "Cr", "Ni"), cache_path=cache)
    axes = {e: np.linspace(lo, hi, 3) for e, (lo, hi) in BOUNDS.items()}
    table = equilibria.grid(axes, [1050.0, 1300.0])  # from the cache: the features' own computation
    equilibria.close()
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.uniform(lo, hi, 200) for lo, hi in BOUNDS.values()])
    ours = features(torch.as_tensor(x)).numpy()
    assert ours.shape == (200, len(FEATURES)) and np.all((ours >= 0) & (ours <= 1))

    def scipy(constituent_values, t_index):
        return RegularGridInterpolator(table.axes, np.nan_to_num(constituent_values[t_index]))(x)

    expected = np.column_stack([scipy(table.fractions["gamma_prime"], 0),
                                sum(scipy(table.fractions[c], 0) for c in BRITTLE),
                                1.0 - scipy(table.fractions["gamma"], 1)])
    np.testing.assert_allclose(ours, np.clip(expected, 0, 1), atol=1e-9)
    # At the grid's own points the table's values come back exactly.
    corner = torch.tensor([[0.14, 0.0, 0.15]], dtype=torch.double)
    assert features(corner)[0, 0].item() == pytest.approx(table.fractions["gamma_prime"][0, 2, 0, 2], abs=1e-12)


def test_features_are_differentiable_and_batch_shaped(features):
    x = torch.tensor([[0.071, 0.052, 0.093]], dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(features, (x,))
    batch = torch.rand(4, 5, 3, dtype=torch.double) * torch.tensor([0.12, 0.15, 0.15]) + torch.tensor([0.02, 0, 0])
    assert features(batch).shape == (4, 5, len(FEATURES))
    outside = features(torch.tensor([[0.5, -0.1, 0.15]], dtype=torch.double))  # clamped to the tabulated box
    np.testing.assert_allclose(outside, features(torch.tensor([[0.14, 0.0, 0.15]], dtype=torch.double)))
    with pytest.raises(ValueError, match="expected 3 columns"):
        features(torch.zeros(2, 2, dtype=torch.double))
    with pytest.raises(ValueError, match="ageing .* must be below solutionising"):
        CalphadFeatures(("Al",), "Ni", {"Al": (0.0, 0.1)}, solution_temperature_k=1000, ageing_temperature_k=1100)
