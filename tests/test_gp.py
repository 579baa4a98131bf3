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


def test_the_gamma_lengthscale_prior_keeps_the_model_uncertain_where_the_default_calls_an_input_irrelevant():
    """lengthscale_prior 'gamma' (BoTorch's kernel before 0.12): on 20 random Hartmann-6 points the default prior
    fits some lengthscale past 0.7 of the unit cube (an input made nearly irrelevant), the gamma prior none, and
    its posterior is wider away from the data. The BO planner hands the setting to every GP it fits."""
    from botorch.test_functions import Hartmann
    from gpytorch.kernels import MaternKernel

    from sdl.agents.base import AgentContext
    from sdl.agents.planner import ProposeRequest, make_planner
    from sdl.experiment import Observation
    from sdl.objective import ObjectiveConfig
    from sdl.space import SearchSpace

    hartmann = Hartmann(dim=6)
    bounds = torch.stack([torch.zeros(6), torch.ones(6)]).double()
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        x = torch.rand(20, 6, generator=generator, dtype=torch.double)
        away = torch.rand(200, 6, generator=generator, dtype=torch.double)
        fitted = {prior: fit_single_task_gp(x, -hartmann(x).unsqueeze(-1), bounds=bounds, lengthscale_prior=prior)
                  for prior in ("dim_scaled", "gamma")}
        default, gamma = fitted["dim_scaled"].covar_module, fitted["gamma"].covar_module.base_kernel
        assert isinstance(gamma, MaternKernel) and gamma.lengthscale.max() < 0.7 < default.lengthscale.max()
        sd = {prior: model.posterior(away).variance.sqrt().median() for prior, model in fitted.items()}
        assert sd["gamma"] > sd["dim_scaled"]
    space = SearchSpace.model_validate({"parameters": {f"x{i}": {"low": 0, "high": 1} for i in range(6)}})
    planner = make_planner("bo", AgentContext(space=space, seed=0, objective=ObjectiveConfig(measurement="y")),
                           {"initial_points": 4, "num_restarts": 2, "raw_samples": 64, "mc_samples": 64,
                            "lengthscale_prior": "gamma"})
    observations = [Observation(point=p, status="done", measurements={"y": float(hartmann(planner.to_tensor([p])))})
                    for p in make_planner("sobol", AgentContext(space=space, seed=0)).propose(ProposeRequest(n=6))]
    _, y = planner._training_data(observations)
    assert isinstance(planner._gp(planner.to_tensor([o.point for o in observations]), y).covar_module.base_kernel,
                      MaternKernel)
    assert len(planner.propose(ProposeRequest(n=1, observations=observations))) == 1
