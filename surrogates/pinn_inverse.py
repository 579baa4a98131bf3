"""Physics-informed neural-network (PINN) inversion of a bar's displacements: the moduli and interface
positions of its layers (:func:`invert_layers`), or a smoothly graded modulus E(z) (:func:`invert_graded`).

Loss = data misfit + residual of d/dz(E du/dz) = 0 at collocation points + boundary conditions
(u(0) = 0, E u'(L) = F/A) + continuity of displacement and traction at every interface.

Layers: **one small network per layer** (domain decomposition, as in cPINNs/XPINNs) rather than one
network for the whole bar. The exact u has a kink at each interface; a single smooth network can only
round it off, which biases the slopes, hence the moduli, of thin layers and drags the interfaces. Each
layer's network is smooth where the solution is, and the interface conditions the issue asks for are
then real loss terms. The moduli (log E_l) and the thicknesses (a softmax, so the layers stay ordered and
fill the bar) are trainable parameters. A sensor belongs to a layer through a smooth indicator
sigma((z - z_k) / w) whose width w sharpens geometrically during training, so the data pull on the
interfaces while the networks still have to agree with them; at the end the interfaces are fixed by
the continuity of u, where the neighbouring layers' solutions cross. Which sensor lies in which layer is
a combinatorial question gradient descent answers only locally, so many starts (interfaces placed in
different gaps between sensors) train at once with Adam, the best few are polished by L-BFGS one at a
time (a batch shares L-BFGS's line search and converges as slowly as its worst member), and the best of
those is finished. A fit that leaves a layer without two points, or whose misfit the stated sensor noise
cannot explain, is refused (:mod:`sdl.surrogates.bar_inversion`).

Graded: one network for u and a second for log E(z); the residual is d/dz(E u') (second derivatives by
forward-mode propagation through the tanh layers, written out because the networks are 1-D). E = (F/A)/u'
turns the sensors' noise into wiggles of E, so the curvature of ln E carries a prior whose weight the
stated noise sets (:class:`GradedPinnSettings`).

Uncertainty: randomise-then-optimise. Member 0 is the fit of the data; each further member refits, from
it, the data plus a fresh draw of the sensor noise (the stated noise floor, or the residual sd of the
fit). For a problem this close to linear in its parameters the members' spread approximates the
posterior standard deviation (with few members, roughly: 5 give the sd to about +-35 %). Every weight
has a leading batch axis (starts, members, layers), so the starts train as one network, on the GPU
when there is one.

Plain torch rather than DeepXDE: the unknown interfaces move the collocation points and the indicators
with the parameters, and the members and layers are batched along weight axes; DeepXDE's geometry is
fixed at set-up and its backend is chosen per process through an environment variable, which would
impose itself on every other torch model in a campaign.

Everything is non-dimensional inside: z / L, u / u_ref with u_ref the largest measured displacement, and
E / E_ref with E_ref = (F / A) L / u_ref, so each term is of order one.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import torch
from pydantic import Field

from sdl.env.layered_bar import MPA_PER_GPA
from sdl.settings import Section
from sdl.surrogates.bar_inversion import (
    BarData,
    LayerEstimate,
    NotIdentifiable,
    check_fit,
    check_identifiable,
    check_layers_resolved,
    points_per_layer,
    relative_l2_error,
)

DTYPE = torch.double


class PinnSettings(Section):
    hidden_size: int = Field(default=16, ge=2, le=256)
    hidden_layers: int = Field(default=2, ge=1, le=6)
    starts: int = Field(default=64, ge=1, le=1024, description="layers: fits from different initial interfaces "
                                                              "at once (at most), the best kept")
    members: int = Field(default=5, ge=1, le=64, description="member 0 fits the data; the others add noise draws "
                                                             "for the uncertainty (1: no uncertainty)")
    adam_steps: int = Field(default=1000, ge=0)
    polish: int = Field(default=4, ge=1, description="layers: the best starts after Adam, polished by L-BFGS")
    final_lbfgs_steps: int = Field(default=1000, ge=0, description="layers: further L-BFGS iterations that finish "
                                                                   "the best polished start")
    data_weight_start: float = Field(default=100.0, gt=0, description="weight of the data misfit against the "
                                     "physics terms at the start (the data place the layers) ...")
    data_weight: float = Field(default=1.0, gt=0, description="... and at the end (the physics holds the fit to "
                                                              "solutions of the equation)")
    lbfgs_steps: int = Field(default=300, ge=0, description="L-BFGS iterations after Adam, at the final width")
    learning_rate: float = Field(default=5e-3, gt=0)
    collocation_points: int = Field(default=16, ge=2, description="per layer (graded: over the bar, x4)")
    width_start: float = Field(default=0.05, gt=0, description="indicator width at the start, fraction of L")
    width_end: float = Field(default=0.002, gt=0, description="indicator width at the end, fraction of L")
    device: str = Field(default="auto", description="auto (GPU when there is one), cpu, cuda, cuda:1, ...")
    seed: int = 0


class GradedPinnSettings(PinnSettings):
    """A graded E(z) is a whole function, not a few numbers: longer training."""

    adam_steps: int = Field(default=2000, ge=0)
    lbfgs_steps: int = Field(default=1000, ge=0)
    # Second-order Tikhonov on ln E, weighted as a Gaussian prior against the data's likelihood: MAP of
    # sum r_i^2 / sigma^2 + integral (ln E)''^2 / s^2 is, in the loss's means, a penalty weight
    # (sigma / u_ref)^2 / (n s^2). So the stated noise and the sensor count set it, not a tuned number.
    # s = 3: the median RMS of (ln E)'' (z in units of L) over power-law gradings
    # E_0 + (E_L - E_0)(z/L)^p with p 0.5-3 and end contrast 2-8 (quartiles 2.0 and 6.3).
    curvature_prior: float | None = Field(default=3.0, gt=0, description="typical RMS curvature of ln E(z) over the "
                                          "bar, z in units of L (None: no penalty, the networks' own smoothness only)")


def torch_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: this machine has no CUDA GPU; use cpu or auto")
    return device


class BatchedMlp(torch.nn.Module):
    """``batch`` independent tanh MLPs R -> R, evaluated with their first and second derivatives."""

    def __init__(self, batch: tuple[int, ...], hidden_size: int, hidden_layers: int, generator: torch.Generator) -> None:
        super().__init__()
        sizes = [1] + [hidden_size] * hidden_layers + [1]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for a, b in zip(sizes[:-1], sizes[1:]):
            bound = math.sqrt(6.0 / (a + b))  # Glorot, as for tanh
            self.weights.append(torch.nn.Parameter((torch.rand(*batch, a, b, generator=generator, dtype=DTYPE) * 2 - 1)
                                                   * bound))
            self.biases.append(torch.nn.Parameter(torch.zeros(*batch, 1, b, dtype=DTYPE)))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (*batch, P) -> value, d/dz, d2/dz2, each (*batch, P). Forward-mode through tanh:
        h = tanh(a): h' = (1 - h^2) a',  h'' = (1 - h^2) a'' - 2 h (1 - h^2) a'^2."""
        x = z.unsqueeze(-1)
        dx, ddx = torch.ones_like(x), torch.zeros_like(x)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            a, da, dda = x @ w + b, dx @ w, ddx @ w
            if i == last:
                return a.squeeze(-1), da.squeeze(-1), dda.squeeze(-1)
            h = torch.tanh(a)
            g = 1 - h * h
            x, dx, ddx = h, g * da, g * dda - 2 * h * g * da * da
        raise AssertionError("unreachable")


def _indicators(z: torch.Tensor, interfaces: torch.Tensor, width: float) -> torch.Tensor:
    """Smooth membership of each point in each layer: z (members, P), interfaces (members, n-1) ->
    (members, n, P), summing to one over the layers."""
    step = torch.sigmoid((z.unsqueeze(1) - interfaces.unsqueeze(2)) / width)  # above interface k
    ones = torch.ones_like(step[:, :1])
    zeros = torch.zeros_like(step[:, :1])
    return torch.cat([ones, step], 1) - torch.cat([step, zeros], 1)


class _LayeredModel(torch.nn.Module):
    def __init__(self, members: int, n_layers: int, settings: PinnSettings, generator: torch.Generator) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.networks = BatchedMlp((members, n_layers), settings.hidden_size, settings.hidden_layers, generator)
        self.log_moduli = torch.nn.Parameter(torch.zeros(members, n_layers, dtype=DTYPE))
        self.thickness_logits = torch.nn.Parameter(torch.zeros(members, n_layers, dtype=DTYPE))
        self.t = torch.linspace(0, 1, settings.collocation_points, dtype=DTYPE)

    def interfaces(self) -> torch.Tensor:
        """(members, n + 1): 0, the n - 1 interfaces, 1."""
        edges = torch.cumsum(torch.softmax(self.thickness_logits, dim=1), dim=1)
        return torch.cat([torch.zeros_like(edges[:, :1]), edges[:, :-1], torch.ones_like(edges[:, :1])], 1)

    def losses(self, z_data: torch.Tensor, u_data: torch.Tensor, width: float) -> dict[str, torch.Tensor]:
        """Per-member loss terms (members,). z_data (P,), u_data (members, P) non-dimensional."""
        members = u_data.shape[0]
        edges = self.interfaces()
        low, high = edges[:, :-1], edges[:, 1:]  # (members, n)
        colloc = low.unsqueeze(-1) + (high - low).unsqueeze(-1) * self.t.to(low)  # (members, n, C)
        points = torch.cat([z_data.expand(members, self.n_layers, -1), colloc,
                            low.unsqueeze(-1), high.unsqueeze(-1)], dim=-1)
        u, du, ddu = self.networks(points)
        p, c = z_data.shape[-1], self.t.shape[0]
        moduli = torch.exp(self.log_moduli)  # (members, n)
        chi = _indicators(z_data.expand(members, -1), edges[:, 1:-1], width)  # (members, n, P)
        predicted = (chi * u[..., :p]).sum(1)
        data = ((predicted - u_data) ** 2).mean(-1)
        pde = ((moduli.unsqueeze(-1) * ddu[..., p:p + c]) ** 2).mean((-1, -2))  # d/dz(E_l u_l') in layer l
        u_low, u_high = u[..., -2], u[..., -1]
        flux_low, flux_high = moduli * du[..., -2], moduli * du[..., -1]
        continuity = ((u_high[:, :-1] - u_low[:, 1:]) ** 2).sum(-1)
        traction = ((flux_high[:, :-1] - flux_low[:, 1:]) ** 2).sum(-1)
        boundary = u_low[:, 0] ** 2 + (flux_high[:, -1] - 1.0) ** 2
        return {"data": data, "pde": pde, "boundary": boundary, "continuity": continuity, "traction": traction}


def _adam(model: torch.nn.Module, loss_fn, settings: PinnSettings, steps: int) -> None:
    """Adam with the indicator width, the data weight and the learning rate (to a hundredth) shrinking
    geometrically. ``loss_fn(width, data_weight)`` sums over the members (they are independent, so each
    gets its own gradient)."""
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimiser, gamma=0.01 ** (1 / max(steps, 1)))
    for step in range(steps):
        fraction = step / max(steps, 1)
        width = settings.width_start * (settings.width_end / settings.width_start) ** fraction
        data_weight = settings.data_weight_start * (settings.data_weight / settings.data_weight_start) ** fraction
        optimiser.zero_grad()
        loss = loss_fn(width, data_weight)
        loss.backward()
        optimiser.step()
        schedule.step()


def _lbfgs(model: torch.nn.Module, loss_fn, settings: PinnSettings, iterations: int | None = None) -> None:
    """L-BFGS at the final width and data weight, to convergence. One model's members share the line
    search, so this is run on one member at a time (a batch of members converges as slowly as its worst)."""
    iterations = settings.lbfgs_steps if iterations is None else iterations
    if not iterations:
        return
    lbfgs = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=iterations, tolerance_grad=1e-12,
                              tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        lbfgs.zero_grad()
        loss = loss_fn(settings.width_end, settings.data_weight)
        loss.backward()
        return loss

    lbfgs.step(closure)


def _members(source: torch.nn.Module, indices: list[int], target: torch.nn.Module) -> torch.nn.Module:
    """``target`` (a model of len(indices) members) with member k's weights those of source's indices[k]."""
    with torch.no_grad():
        for mine, theirs in zip(target.parameters(), source.parameters()):
            mine.copy_(theirs[indices])
    return target


def _stack(models: list[torch.nn.Module], target: torch.nn.Module) -> torch.nn.Module:
    """``target`` (a model of len(models) members) holding each one-member model as its member k."""
    with torch.no_grad():
        for k, model in enumerate(models):
            for mine, theirs in zip(target.parameters(), model.parameters()):
                mine[k] = theirs[0]
    return target


def _initial_interfaces(data: BarData, n_layers: int, most: int, rng: np.random.Generator) -> np.ndarray:
    """Initial interfaces (starts x n-1, fractions of L): each assignment of the interfaces to the gaps
    between sensors that leaves every layer two points on its line, at the gaps' middles (16 candidate
    positions at most, spread over the gaps, for dense sensors); ``most`` of them, drawn at random, if
    there are more."""
    z = data.positions_mm / data.length_mm
    candidates = (np.concatenate([[0.0], z]) + np.concatenate([z, [1.0]])) / 2
    if len(candidates) > 16:
        candidates = candidates[np.round(np.linspace(0, len(candidates) - 1, 16)).astype(int)]
    valid = [c for c in itertools.combinations(candidates, n_layers - 1)
             if np.all(points_per_layer(data, np.array(c) * data.length_mm) >= 2)]
    if not valid:
        raise NotIdentifiable(f"no placement of {n_layers} layers gives every layer two points on its line with "
                              f"{len(z)} sensors")
    if len(valid) > most:
        valid = [valid[i] for i in sorted(rng.choice(len(valid), size=most, replace=False))]
    return np.array(valid).reshape(len(valid), n_layers - 1)


def _scales(data: BarData) -> tuple[float, float]:
    """(u_ref in mm, E_ref in GPa) of the non-dimensional problem."""
    u_ref = float(np.max(np.abs(data.displacements_mm)))
    if u_ref == 0:
        raise ValueError("every displacement is zero: the bar was not loaded (or the sensors did not move)")
    return u_ref, data.stress_mpa / MPA_PER_GPA * data.length_mm / u_ref


def _noisy_targets(data: BarData, members: int, noise_sd_mm: float, u_ref: float, generator: torch.Generator,
                   device: torch.device) -> torch.Tensor:
    u = torch.as_tensor(data.displacements_mm / u_ref, dtype=DTYPE)
    draws = torch.randn(members, len(u), generator=generator, dtype=DTYPE) * (noise_sd_mm / u_ref)
    draws[0] = 0.0  # member 0: the data as measured
    return (u + draws).to(device)


def invert_layers(data: BarData, n_layers: int, settings: PinnSettings | None = None) -> LayerEstimate:
    """Moduli and interfaces of ``n_layers`` layers, with standard deviations (see the module).

    Starts from different initial interfaces (:func:`_initial_interfaces`) trained at once by Adam; the
    ``polish`` best refined by L-BFGS one by one, the best of them finished; then the uncertainty members,
    each started from it."""
    settings = settings or PinnSettings()
    started = time.perf_counter()
    check_identifiable(data, n_layers)
    device = torch_device(settings.device)
    u_ref, e_ref = _scales(data)
    z = torch.as_tensor(data.positions_mm / data.length_mm, dtype=DTYPE, device=device)
    generator = torch.Generator().manual_seed(settings.seed)

    def total(model: _LayeredModel, targets: torch.Tensor, width: float, data_weight: float) -> torch.Tensor:
        terms = model.losses(z, targets, width)
        return data_weight * terms.pop("data") + sum(terms.values())

    initial = _initial_interfaces(data, n_layers, settings.starts, np.random.default_rng(settings.seed))
    new = lambda members: _LayeredModel(members, n_layers, settings, generator).to(device)  # noqa: E731
    starts = new(len(initial))
    with torch.no_grad():
        edges = np.concatenate([np.zeros((len(initial), 1)), initial, np.ones((len(initial), 1))], axis=1)
        starts.thickness_logits.copy_(torch.as_tensor(np.log(np.diff(edges, axis=1)), dtype=DTYPE))
    measured = _noisy_targets(data, len(initial), 0.0, u_ref, generator, device)
    _adam(starts, lambda width, weight: total(starts, measured, width, weight).sum(), settings, settings.adam_steps)
    with torch.no_grad():
        ranked = torch.argsort(total(starts, measured, settings.width_end, settings.data_weight)).tolist()
    best, best_loss = None, math.inf
    for index in ranked[: settings.polish]:  # the most promising starts, each polished by L-BFGS
        candidate = _members(starts, [index], new(1))
        _lbfgs(candidate, lambda width, weight: total(candidate, measured[:1], width, weight).sum(), settings)
        with torch.no_grad():
            loss = float(total(candidate, measured[:1], settings.width_end, settings.data_weight))
        if loss < best_loss:
            best, best_loss = candidate, loss
    _lbfgs(best, lambda width, weight: total(best, measured[:1], width, weight).sum(), settings,
           settings.final_lbfgs_steps)
    with torch.no_grad():
        best_data_loss = float(best.losses(z, measured[:1], settings.width_end)["data"][0])
        best_interfaces = (best.interfaces()[0, 1:-1] * data.length_mm).cpu().numpy()
    # refuse an undetermined fit before the uncertainty members are trained around it
    check_layers_resolved(data, best_interfaces)
    check_fit(data, n_layers, best_data_loss * len(z) * u_ref ** 2)
    noise_sd = data.noise_sd_mm
    if noise_sd is None:  # the residual of the best fit says how noisy the data are
        dof = max(len(z) - (2 * n_layers - 1), 1)
        noise_sd = math.sqrt(best_data_loss * len(z) / dof) * u_ref
    targets = _noisy_targets(data, settings.members, noise_sd, u_ref, generator, device)
    fitted = [best]
    for k in range(1, settings.members):  # the uncertainty members, from the best fit, to their noisy data
        member = _members(best, [0], new(1))
        _lbfgs(member, lambda width, weight: total(member, targets[k:k + 1], width, weight).sum(), settings)
        fitted.append(member)
    model = _stack(fitted, new(settings.members))
    with torch.no_grad():
        terms = model.losses(z, targets, settings.width_end)
        moduli = (torch.exp(model.log_moduli) * e_ref).cpu().numpy()
        interfaces = (model.interfaces()[:, 1:-1] * data.length_mm).cpu().numpy()
    sd = (lambda a: a.std(0, ddof=1)) if settings.members > 1 else (lambda a: np.zeros(a.shape[1]))
    estimate = LayerEstimate(
        "PINN", moduli[0], sd(moduli), interfaces[0], sd(interfaces), data.length_mm,
        math.sqrt(float(terms["data"][0])) * u_ref, time.perf_counter() - started,
        extra={"pde_residual": float(terms["pde"][0].sqrt()), "continuity": float(terms["continuity"][0].sqrt()),
               "traction": float(terms["traction"][0].sqrt()), "boundary": float(terms["boundary"][0].sqrt()),
               "noise_sd_mm": noise_sd, "members": settings.members, "starts": settings.starts,
               "device": str(device)})
    return estimate


# ---- a graded bar -----------------------------------------------------------------------------------


class GradedEstimate:
    """E(z) and u(z) of a graded bar on a grid, the mean and standard deviation over the members."""

    def __init__(self, z_mm: np.ndarray, modulus_gpa: np.ndarray, displacement_mm: np.ndarray, residual_sd_mm: float,
                 seconds: float, extra: dict) -> None:
        self.z_mm = z_mm
        self.modulus_gpa, self.modulus_sd_gpa = modulus_gpa[0], (modulus_gpa.std(0, ddof=1) if len(modulus_gpa) > 1
                                                                  else np.zeros_like(z_mm))
        self.displacement_mm = displacement_mm[0]
        self.residual_sd_mm, self.seconds, self.extra = residual_sd_mm, seconds, extra
        self.method = "PINN (graded)"

    def relative_l2_error(self, true_modulus_gpa: np.ndarray) -> float:
        """|| E - E_true ||_2 / || E_true ||_2 over the grid."""
        return relative_l2_error(self.modulus_gpa, true_modulus_gpa)


class _GradedModel(torch.nn.Module):
    def __init__(self, members: int, settings: PinnSettings, generator: torch.Generator) -> None:
        super().__init__()
        self.displacement = BatchedMlp((members,), settings.hidden_size, settings.hidden_layers, generator)
        self.log_modulus = BatchedMlp((members,), settings.hidden_size, settings.hidden_layers, generator)
        self.colloc = torch.linspace(0, 1, 4 * settings.collocation_points, dtype=DTYPE)

    def losses(self, z_data: torch.Tensor, u_data: torch.Tensor, curvature_weight: float) -> dict[str, torch.Tensor]:
        members = u_data.shape[0]
        points = torch.cat([z_data, self.colloc.to(z_data), z_data.new_tensor([0.0])]).expand(members, -1)
        u, du, ddu = self.displacement(points)
        log_e, dlog_e, ddlog_e = self.log_modulus(points)
        e = torch.exp(log_e)
        p, c = z_data.shape[-1], self.colloc.shape[0]
        data = ((u[:, :p] - u_data) ** 2).mean(-1)
        # d/dz (E u') = E (u'' + (log E)' u')
        pde = ((e * (ddu + dlog_e * du))[:, p:p + c] ** 2).mean(-1)
        boundary = u[:, -1] ** 2 + (e * du)[:, p + c - 1].sub(1.0) ** 2  # u(0) = 0; E u'(L) = 1 (z = 1 is last)
        curvature = curvature_weight * (ddlog_e[:, p:p + c] ** 2).mean(-1)
        return {"data": data, "pde": pde, "boundary": boundary, "curvature": curvature}


def invert_graded(data: BarData, settings: GradedPinnSettings | None = None, grid_points: int = 201
                  ) -> GradedEstimate:
    """A smoothly graded E(z) (a second network), with the members' standard deviation."""
    settings = settings or GradedPinnSettings()
    started = time.perf_counter()
    data.stress_mpa  # no force: refused (ratios only)
    if len(data.positions_mm) < 8:
        raise ValueError(f"{len(data.positions_mm)} sensors cannot resolve a graded modulus: E(z) = (F/A) / u'(z) "
                         "needs the slope of u all along the bar; use a dense grid (DIC), 8 points at least")
    device = torch_device(settings.device)
    u_ref, e_ref = _scales(data)
    z = torch.as_tensor(data.positions_mm / data.length_mm, dtype=DTYPE, device=device)
    generator = torch.Generator().manual_seed(settings.seed)

    new = lambda members: _GradedModel(members, settings, generator).to(device)  # noqa: E731

    def loss_fn(model: _GradedModel, targets: torch.Tensor, curvature_weight: float):
        def total(width: float, data_weight: float) -> torch.Tensor:
            terms = model.losses(z, targets, curvature_weight)
            return (data_weight * terms.pop("data") + sum(terms.values())).sum()
        return total

    def curvature_weight(noise_sd_mm: float) -> float:  # see GradedPinnSettings.curvature_prior
        prior = settings.curvature_prior
        return 0.0 if prior is None else (noise_sd_mm / u_ref) ** 2 / (len(z) * prior ** 2)

    measured = _noisy_targets(data, 1, 0.0, u_ref, generator, device)
    noise_sd = data.noise_sd_mm
    weight = 0.0 if noise_sd is None else curvature_weight(noise_sd)
    best = new(1)
    _adam(best, loss_fn(best, measured, weight), settings, settings.adam_steps)
    _lbfgs(best, loss_fn(best, measured, weight), settings)
    if noise_sd is None:  # the residual of the fit says how noisy the data are; then the prior can weigh in
        with torch.no_grad():
            noise_sd = math.sqrt(float(best.losses(z, measured, 0.0)["data"][0])) * u_ref
        weight = curvature_weight(noise_sd)
        if weight:
            _lbfgs(best, loss_fn(best, measured, weight), settings)
    targets = _noisy_targets(data, settings.members, noise_sd, u_ref, generator, device)
    fitted = [best]
    for k in range(1, settings.members):
        member = _members(best, [0], new(1))
        _lbfgs(member, loss_fn(member, targets[k:k + 1], weight), settings)
        fitted.append(member)
    model = _stack(fitted, new(settings.members))
    with torch.no_grad():
        terms = model.losses(z, targets, weight)
    grid = torch.linspace(0, 1, grid_points, dtype=DTYPE, device=device).expand(settings.members, -1)
    with torch.no_grad():
        modulus = (torch.exp(model.log_modulus(grid)[0]) * e_ref).cpu().numpy()
        displacement = (model.displacement(grid)[0] * u_ref).cpu().numpy()
    return GradedEstimate(grid[0].cpu().numpy() * data.length_mm, modulus, displacement,
                          math.sqrt(float(terms["data"][0])) * u_ref, time.perf_counter() - started,
                          {"pde_residual": float(terms["pde"][0].sqrt()), "noise_sd_mm": noise_sd,
                           "curvature_weight": weight, "members": settings.members, "device": str(device)})
