"""Generative surrogates under hard constraints (torch): alloys and microstructures that obey them by construction.

- :class:`CompositionCVAE`, a conditional variational autoencoder over compositions, conditioned on
  target properties (hardness, processability). Its decoder ends in the capped-simplex projection
  (:mod:`sdl.surrogates.projection`) onto the element bounds with fractions summing to 1, so every
  generated alloy is valid, during training too. A VAE rather than a GAN: a few thousand points
  in 3-4 dimensions train stably by maximum likelihood, and the encoder gives a latent space to
  sample around known good alloys; a GAN's adversarial game buys sharpness that a handful of
  fractions does not need.
- :class:`MicrostructureVAE`, a convolutional conditional VAE of 2-D two-phase fields (64 x 64 by
  default) whose decoder projects the continuous density field onto {0 <= rho <= 1, mean rho = f}:
  the volume fraction equals the prescribed one exactly (the chapter's electrode example),
  trained end to end; :func:`two_phase_fields` makes its training fields (thresholded Gaussian
  random fields), and the fraction to ask for can come from the twin's CALPHAD.

Plain torch; device-agnostic (``device="cuda"`` when one exists). Training data from the twin:
:func:`twin_composition_data`; from made specimens: :func:`measured_composition_data`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sdl.surrogates.projection import CappedSimplexProjection, project_capped_simplex

# -- data ----------------------------------------------------------------------------------------


@dataclass
class CompositionData:
    """Compositions (n x elements, fractions) and their conditions (n x names)."""

    elements: list[str]
    fractions: np.ndarray
    conditions: np.ndarray
    condition_names: list[str]

    def __add__(self, other: CompositionData) -> CompositionData:
        if other.elements != self.elements or other.condition_names != self.condition_names:
            raise ValueError("cannot join composition data with different elements or conditions")
        return CompositionData(self.elements, np.vstack([self.fractions, other.fractions]),
                               np.vstack([self.conditions, other.conditions]), self.condition_names)


def twin_composition_data(twin, space, n: int, *, route=None, seed: int = 0, target=None) -> CompositionData:
    """``n`` Sobol' alloys of ``space`` with the twin's hardness after ``route`` (default: the textbook
    route) and processability (the phase target: single gamma at solutionising, no brittle phase
    at ageing; from the twin's CALPHAD table)."""
    from scipy.stats import qmc

    sampler = qmc.Sobol(d=space.dimension, scramble=True, seed=seed)
    points = []
    while len(points) < n:
        accepted, _ = space.from_unit_cube(sampler.random(2 ** math.ceil(math.log2(max(256, n)))))
        points.extend(accepted)
    compositions = [p.composition.root for p in points[:n]]
    hardness, feasible = twin_labels(twin, compositions, route=route, target=target)
    elements = list(space.composition.elements)
    fractions = np.array([[c[e] for e in elements] for c in compositions])
    return CompositionData(elements, fractions, np.column_stack([hardness, feasible]), ["hardness_hv", "feasible"])


def twin_labels(twin, compositions: list[dict[str, float]], *, route=None, target=None) -> tuple[np.ndarray, np.ndarray]:
    """The twin's hardness after ``route`` (default: the textbook route) and processability (1.0 or
    0.0 by the phase target, from the CALPHAD table) of each composition."""
    from sdl.env.heat_treatment import textbook_route
    from sdl.env.phase_state import PhaseTarget

    route = route or textbook_route()
    target = target or PhaseTarget()
    hardness = twin.properties(compositions, route, phase_state="table").hardness_hv
    x = twin.free_fractions(compositions)
    at_solution = twin.table(x, target.solution_temperature_k)
    at_ageing = twin.table(x, target.ageing_temperature_k)
    feasible = np.array([target.reached({c: float(v[i]) for c, v in at_solution.items()},
                                        {c: float(v[i]) for c, v in at_ageing.items()})
                         for i in range(len(compositions))], float)
    return hardness, feasible


def measured_composition_data(specimens: Iterable[tuple[dict[str, float], dict[str, float]]], elements: Sequence[str],
                              *, objective: str = "hardness_hv", brittle_key: str = "xrd_brittle_detected"
                              ) -> CompositionData:
    """Made specimens as training data: each a (nominal composition, measurements) pair; the measured
    composition (``x_<El>``) where the melter analysed it, the objective, and feasible = no brittle
    phase seen (``brittle_key`` below 0.5, or not measured)."""
    rows, conditions = [], []
    for nominal, m in specimens:
        if objective not in m:
            continue
        measured = [m.get(f"x_{e}") for e in elements]
        rows.append(measured if None not in measured else [nominal[e] for e in elements])
        conditions.append([m[objective], 0.0 if m.get(brittle_key, 0.0) > 0.5 else 1.0])
    if not rows:
        raise ValueError(f"no specimens with a measured {objective}")
    return CompositionData(list(elements), np.array(rows), np.array(conditions), [objective, "feasible"])


# -- compositions --------------------------------------------------------------------------------


class CompositionCVAE(nn.Module):
    """q(z | x, c) and p(x | z, c); the decoder's last layer is the capped-simplex projection."""

    def __init__(self, low: Sequence[float], high: Sequence[float], condition_dim: int, *, latent_dim: int = 3,
                 hidden: int = 64) -> None:
        super().__init__()
        k = len(low)
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Linear(k + condition_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                     nn.SiLU(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim + condition_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                     nn.SiLU(), nn.Linear(hidden, k))
        self.project = CappedSimplexProjection(low, high, total=1.0)
        self.register_buffer("condition_mean", torch.zeros(condition_dim))
        self.register_buffer("condition_std", torch.ones(condition_dim))
        self.register_buffer("center", (torch.as_tensor(low) + torch.as_tensor(high)) / 2)
        self.register_buffer("scale", (torch.as_tensor(high) - torch.as_tensor(low)).clamp_min(1e-6))

    def _c(self, conditions: torch.Tensor) -> torch.Tensor:
        return (conditions - self.condition_mean) / self.condition_std

    def decode(self, z: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        raw = self.decoder(torch.cat([z, self._c(conditions)], dim=-1))
        return self.project(self.center + self.scale * raw)

    def forward(self, x: torch.Tensor, conditions: torch.Tensor):
        stats = self.encoder(torch.cat([(x - self.center) / self.scale, self._c(conditions)], dim=-1))
        mu, log_var = stats.chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return self.decode(z, conditions), mu, log_var

    @torch.no_grad()
    def sample(self, conditions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One composition per row of ``conditions`` (raw units), from z ~ N(0, I)."""
        z = torch.randn(conditions.shape[0], self.latent_dim, generator=generator, dtype=conditions.dtype)
        return self.decode(z.to(conditions.device), conditions)


def train_composition_cvae(data: CompositionData, low: Sequence[float], high: Sequence[float], *, epochs: int = 300,
                           batch_size: int = 256, beta: float = 0.05, learning_rate: float = 3e-3, seed: int = 0,
                           device: str = "cpu", progress: Callable[[int, float], None] | None = None
                           ) -> CompositionCVAE:
    """Maximise the conditional ELBO (reconstruction in bound-scaled units + beta x KL). A small beta
    keeps the latent in use: at 0.5 the decoder ignored z and mapped each target to one alloy."""
    torch.manual_seed(seed)
    model = CompositionCVAE(low, high, data.conditions.shape[1]).to(device)
    x = torch.as_tensor(data.fractions, dtype=torch.float32, device=device)
    c = torch.as_tensor(data.conditions, dtype=torch.float32, device=device)
    model.condition_mean.copy_(c.mean(0))
    model.condition_std.copy_(c.std(0).clamp_min(1e-6))
    return _fit_elbo(model, x, c, lambda recon, target: (((recon - target) / model.scale) ** 2).sum(-1).mean(),
                     epochs=epochs, batch_size=batch_size, beta=beta, learning_rate=learning_rate, seed=seed,
                     progress=progress)


MAX_GRADIENT_NORM = 100.0


def _fit_elbo(model: nn.Module, x: torch.Tensor, conditions: torch.Tensor, reconstruction, *, epochs: int,
              batch_size: int, beta: float, learning_rate: float, seed: int, progress) -> nn.Module:
    """The loop both VAEs share: Adam on minibatches of reconstruction(output, x) + beta x KL(q(z) || N(0, I))."""
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=generator).to(x.device)
        total = 0.0
        for batch in order.split(batch_size):
            out, mu, log_var = model(x[batch], conditions[batch])
            kl = (-0.5 * (1 + log_var - mu**2 - log_var.exp())).flatten(1).sum(-1).mean()
            loss = reconstruction(out, x[batch]) + beta * kl
            optimiser.zero_grad()
            loss.backward()
            # The microstructure loss sums ~1000 pixels through the fraction projection; a rare huge gradient
            # then upset Adam's moments and the run ended no better than the uniform field (seen with one thread).
            nn.utils.clip_grad_norm_(model.parameters(), MAX_GRADIENT_NORM)
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        if progress is not None:
            progress(epoch + 1, total / len(x))
    return model.eval()


def save_composition_cvae(model: CompositionCVAE, elements: Sequence[str], path: str | Path) -> None:
    torch.save({"elements": list(elements), "low": model.project.low.tolist(), "high": model.project.high.tolist(),
                "condition_dim": model.condition_mean.numel(), "latent_dim": model.latent_dim,
                "state": model.state_dict()}, path)


def load_composition_cvae(path: str | Path, device: str = "cpu") -> tuple[CompositionCVAE, list[str]]:
    blob = torch.load(path, map_location=device, weights_only=True)
    model = CompositionCVAE(blob["low"], blob["high"], blob["condition_dim"], latent_dim=blob["latent_dim"])
    model.load_state_dict(blob["state"])
    return model.to(device).eval(), blob["elements"]


# -- microstructures -----------------------------------------------------------------------------


def two_phase_fields(n: int, size: int = 64, *, seed: int = 0, fractions: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` binary two-phase fields (size x size, periodic): Gaussian random fields with a random
    correlation length (2-8 px), thresholded so the second phase takes a fraction f ~ U(0.05, 0.6)
    (or the given ``fractions``) of the pixels. Returns (fields, fractions actually drawn)."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.05, 0.6, n) if fractions is None else np.asarray(fractions, float)
    k = np.fft.fftfreq(size)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    fields = np.empty((n, size, size), np.float32)
    for i in range(n):
        length = rng.uniform(2.0, 8.0)
        noise = np.fft.fft2(rng.normal(size=(size, size)))
        smooth = np.real(np.fft.ifft2(noise * np.exp(-2 * (math.pi * length) ** 2 * k2)))
        threshold = np.quantile(smooth, 1.0 - f[i])
        fields[i] = smooth > threshold
    return fields, fields.reshape(n, -1).mean(1)


class MicrostructureVAE(nn.Module):
    """Conditional VAE of two-phase fields; the decoder's density field is projected onto
    {0 <= rho <= 1, mean(rho) = f} (capped simplex, bisection), so the phase fraction is exact.

    The latent is a spatial map (``latent_channels`` x size/8 x size/8), not a vector: a
    microstructure is a texture whose features sit anywhere, and a map of independent cells
    generates one at every position, where a single vector would have to encode the whole
    pattern (and blurs it)."""

    def __init__(self, size: int = 64, latent_channels: int = 4, channels: int = 32) -> None:
        super().__init__()
        if size % 8:
            raise ValueError(f"size {size}: use a multiple of 8")
        self.size, self.latent_channels, self.cells = size, latent_channels, size // 8
        c = channels

        def down(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 4, 2, 1, padding_mode="circular"), nn.SiLU()]

        # Upsample + convolution rather than transposed convolutions: no checkerboard artefacts.
        def up(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1, padding_mode="circular"),
                    nn.SiLU()]

        self.encoder = nn.Sequential(*down(2, c), *down(c, 2 * c), *down(2 * c, 2 * c),
                                     nn.Conv2d(2 * c, 2 * latent_channels, 3, padding=1, padding_mode="circular"))
        self.decoder = nn.Sequential(nn.Conv2d(latent_channels + 1, 2 * c, 3, padding=1, padding_mode="circular"),
                                     nn.SiLU(), *up(2 * c, 2 * c), *up(2 * c, c), *up(c, c),
                                     nn.Conv2d(c, 1, 3, padding=1, padding_mode="circular"))

    def decode(self, z: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
        plane = fraction[:, None, None, None].expand(-1, 1, self.cells, self.cells)
        density = 0.5 + self.decoder(torch.cat([z, plane], 1)).view(len(z), -1)  # an untrained net starts mid-range
        rho = project_capped_simplex(density, 0.0, 1.0, fraction * density.shape[-1], method="bisect")
        return rho.view(-1, self.size, self.size)

    def forward(self, fields: torch.Tensor, fraction: torch.Tensor):
        plane = fraction[:, None, None, None].expand(-1, 1, self.size, self.size)
        mu, log_var = self.encoder(torch.cat([fields[:, None], plane], 1)).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return self.decode(z, fraction), mu, log_var

    @torch.no_grad()
    def sample(self, fraction: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(len(fraction), self.latent_channels, self.cells, self.cells, generator=generator)
        return self.decode(z.to(fraction), fraction)


def train_microstructure_vae(fields: np.ndarray, fractions: np.ndarray, *, epochs: int = 20, batch_size: int = 64,
                             beta: float = 0.05, learning_rate: float = 3e-3, latent_channels: int = 4, channels: int = 32,
                             seed: int = 0, device: str = "cpu",
                             progress: Callable[[int, float], None] | None = None) -> MicrostructureVAE:
    """End to end through the projection: binary cross-entropy of the projected field + beta x KL."""
    torch.manual_seed(seed)
    model = MicrostructureVAE(fields.shape[-1], latent_channels, channels).to(device)
    x = torch.as_tensor(fields, dtype=torch.float32, device=device)
    f = torch.as_tensor(fractions, dtype=torch.float32, device=device)
    def cross_entropy(rho: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.binary_cross_entropy(rho.clamp(1e-6, 1 - 1e-6), target, reduction="none").sum((1, 2)).mean()

    return _fit_elbo(model, x, f, cross_entropy, epochs=epochs, batch_size=batch_size, beta=beta,
                     learning_rate=learning_rate, seed=seed, progress=progress)


# -- plots ---------------------------------------------------------------------------------------


def plot_generated(fractions: np.ndarray, check_hv: np.ndarray, data: CompositionData, elements: Sequence[str],
                   target: dict[str, float], path: str | Path) -> Path:
    """Generated alloys over the training alloys (two leading free elements), and the twin's hardness
    of the generated alloys against the training distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    free = [i for i, e in enumerate(elements) if data.fractions[:, i].std() > 0][-3:]
    a, b = free[0], free[1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    hardness = data.conditions[:, data.condition_names.index("hardness_hv")]
    points = left.scatter(data.fractions[:, a], data.fractions[:, b], c=hardness, s=4, cmap="viridis", alpha=0.35)
    left.scatter(fractions[:, a], fractions[:, b], c=check_hv, s=18, cmap="viridis", edgecolors="k", linewidths=0.5,
                 vmin=hardness.min(), vmax=hardness.max(), label="generated")
    fig.colorbar(points, ax=left, label="hardness (HV)")
    left.set_xlabel(f"x_{elements[a]}")
    left.set_ylabel(f"x_{elements[b]}")
    left.set_title("generated alloys (ringed) over the training alloys")
    left.legend(fontsize=8)
    bins = np.linspace(hardness.min(), hardness.max(), 40)
    right.hist(hardness, bins=bins, density=True, alpha=0.5, label="training alloys (the prior)")
    right.hist(check_hv, bins=bins, density=True, alpha=0.7, label="generated (twin check)")
    if "hardness_hv" in target:
        right.axvline(target["hardness_hv"], color="k", ls="--", label=f"target {target['hardness_hv']:g} HV")
    right.set_xlabel("hardness (HV)")
    right.set_title(", ".join(f"{k} = {v:g}" for k, v in target.items()))
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_fields(fields: np.ndarray, fraction: float, path: str | Path, *, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fields), figsize=(2.6 * len(fields), 2.9), squeeze=False)
    for ax, field in zip(axes[0], fields):
        ax.imshow(field, cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"mean {field.mean():.4f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title or f"two-phase fields, gamma-prime fraction {fraction:.3f} (exact)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
