"""Bayesian logistic phase classifier: calibrated on synthetic data with a known boundary; both
acquisition rules point at the boundary; NUTS agrees with SVI."""

import numpy as np
import pytest

from sdl.surrogates.phase_classifier import BayesianLogisticClassifier


def synthetic(n, seed):
    """A curved boundary with a soft (known) transition: P(1) = sigmoid(6 (x1 + x2^2 - 0.8))."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 2))
    p = 1 / (1 + np.exp(-6 * (x[:, 0] + x[:, 1] ** 2 - 0.8)))
    return x, (rng.random(n) < p).astype(float), p


@pytest.fixture(scope="module")
def fitted():
    x, y, _ = synthetic(600, seed=0)
    return BayesianLogisticClassifier(degree=2).fit(x, y)


def test_posterior_is_calibrated_on_held_out_data(fitted):
    x, y, p_true = synthetic(6000, seed=1)
    p, std = fitted.predict(x)
    bins = np.digitize(p, np.linspace(0, 1, 6)[1:-1])
    for b in range(5):
        inside = bins == b
        if inside.sum() > 200:
            assert abs(p[inside].mean() - y[inside].mean()) < 0.06, f"bin {b}"
    assert np.mean(np.abs(p - p_true)) < 0.06
    assert np.all(std >= 0) and std.max() > 0


def test_uncertainty_grows_away_from_the_data():
    x, y, _ = synthetic(200, seed=2)
    near = x[x[:, 0] < 0.5]
    classifier = BayesianLogisticClassifier(degree=1, num_steps=800).fit(near, y[x[:, 0] < 0.5])
    _, std_in = classifier.predict(np.array([[0.25, 0.5]]))
    _, std_out = classifier.predict(np.array([[0.5 + 0.45, 0.95]]))  # beyond the training range
    assert std_out[0] > std_in[0]


def test_acquisition_rules_pick_points_near_the_boundary(fitted):
    rng = np.random.default_rng(3)
    candidates = rng.uniform(0, 1, (300, 2))
    pool = rng.uniform(0, 1, (800, 2))
    distance = np.abs(candidates[:, 0] + candidates[:, 1] ** 2 - 0.8)
    eer = fitted.expected_error_reduction(candidates, pool)
    confidence = fitted.least_confidence(candidates)
    assert distance[np.argmin(eer)] < 0.15
    assert distance[np.argmax(confidence)] < 0.1
    # Labelling the point deepest inside a phase field helps less than labelling the chosen one.
    assert eer[np.argmax(distance)] > eer.min()


def test_nuts_agrees_with_svi():
    x, y, _ = synthetic(150, seed=4)
    svi = BayesianLogisticClassifier(degree=1, num_steps=1000).fit(x, y)
    nuts = BayesianLogisticClassifier(degree=1, inference="nuts", num_samples=150, warmup_steps=150).fit(x, y)
    grid = np.random.default_rng(5).uniform(0, 1, (200, 2))
    assert np.mean(np.abs(svi.predict(grid)[0] - nuts.predict(grid)[0])) < 0.05


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        BayesianLogisticClassifier().fit(np.zeros((3, 2)), np.array([0, 1, 2]))
    with pytest.raises(RuntimeError, match="call fit first"):
        BayesianLogisticClassifier().predict(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="inference must be 'svi' or 'nuts'"):
        BayesianLogisticClassifier(inference="laplace")
