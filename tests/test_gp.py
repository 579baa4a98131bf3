"""The project's GP builder (surrogates/gp.py): hyperparameters fitted on a subset at scale."""

import torch

from sdl.surrogates.gp import fit_single_task_gp


def test_hyperparameters_fitted_on_a_subset_serve_a_gp_conditioned_on_every_observation():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(400, 2, generator=generator, dtype=torch.double)
    f = lambda x: torch.sin(6 * x[:, :1]) + x[:, 1:] ** 2  # noqa: E731
    y = f(x) + 0.05 * torch.randn(400, 1, generator=generator, dtype=torch.double)
    test = torch.rand(200, 2, generator=generator, dtype=torch.double)
    unit = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.double)
    full = fit_single_task_gp(x, y, bounds=unit)
    subset = fit_single_task_gp(x, y, bounds=unit, hyperparameter_subset=64, seed=3)
    assert subset.train_inputs[0].shape[-2] == 400  # conditions on all of them
    assert torch.equal(fit_single_task_gp(x, y, bounds=unit, hyperparameter_subset=64, seed=3).covar_module.lengthscale,
                       subset.covar_module.lengthscale)  # the subset is drawn by the seed
    assert not torch.equal(subset.covar_module.lengthscale, full.covar_module.lengthscale)
    ratio = subset.covar_module.lengthscale / full.covar_module.lengthscale
    assert ((ratio > 0.67) & (ratio < 1.5)).all(), ratio
    with torch.no_grad():
        errors = {name: float((m.posterior(test).mean - f(test)).pow(2).mean().sqrt()) for name, m in
                  (("full", full), ("subset", subset))}
    assert errors["subset"] < 1.1 * errors["full"] + 1e-3, errors
    # at most the subset's size: the plain fit
    small = fit_single_task_gp(x[:64], y[:64], bounds=unit, hyperparameter_subset=64)
    assert torch.equal(small.covar_module.lengthscale, fit_single_task_gp(x[:64], y[:64], bounds=unit).covar_module.lengthscale)
