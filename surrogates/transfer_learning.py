"""Transfer learning across alloy systems: pre-train a Deep Sets model on a data-rich source system, and
measure what it is worth on a data-poor target system with an element the source never had.

- :func:`pretrain`: label the source system's random alloys (cached), train the ensemble, save it.
- :func:`evaluate`: learning curves on the target: for each number N of target samples and each seed,
  N alloys drawn from a labelled target pool, the regimes of :mod:`sdl.surrogates.deep_sets`
  fitted, their MAE on a held-out target test set recorded; medians and quartiles over the seeds, the
  reduction against training from scratch, and a plot. Beside them, two Gaussian processes on the
  composition: ``gp`` from scratch, the model a BO campaign starts with, and ``gp_prior`` with the
  source model's prediction as its prior mean (weight and offset fitted), the BO planner's transfer prior.

Configured by one YAML file (:class:`TransferConfig`), read by ``sdl transfer pretrain|evaluate``.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from sdl.env.solid_solutions import EMT_ELEMENTS, PROPERTIES, AlloyDataset, label_random_alloys
from sdl.settings import Section, load_yaml
from sdl.surrogates.deep_sets import REGIMES, DeepSetsArchitecture, DeepSetsEnsemble, Regime, TrainingSettings
from sdl.surrogates.gp import fit_single_task_gp

Progress = Callable[[str, int, int], None]  # (what, done, total)
GpRegime = Literal["gp", "gp_prior"]
GP_REGIMES: tuple[GpRegime, ...] = ("gp", "gp_prior")


class SystemSettings(Section):
    elements: list[str] = Field(min_length=2, description="the alloy system's elements (EMT: Al Cu Ni Pd Ag Pt Au)")
    alloys: int = Field(default=3000, ge=10, description="random alloys labelled (source: training set)")
    seed: int = 0


class TargetSettings(SystemSettings):
    alloys: int = Field(default=500, ge=10, description="the pool the N training alloys are drawn from")
    test_alloys: int = Field(default=500, ge=10, description="held-out alloys every regime is scored on")


class EvaluationSettings(Section):
    sizes: list[Annotated[int, Field(ge=2)]] = Field(default_factory=lambda: [10, 25, 50, 100], min_length=1,
                             description="numbers of target samples")
    seeds: int = Field(default=10, ge=1, description="draws of the target samples per size")
    regimes: list[Regime | GpRegime] = Field(default_factory=lambda: [*REGIMES, *GP_REGIMES], min_length=1,
                                             description="Deep Sets regimes, and GPs on the composition (gp: "
                                                         "from scratch; gp_prior: the source model as prior mean)")


class TransferConfig(Section):
    name: str = "transfer"
    property: str = Field(default="mixing_energy_ev_per_atom", description=f"one of {', '.join(PROPERTIES)}")
    source: SystemSettings = SystemSettings(elements=["Cu", "Ni", "Pd", "Ag", "Au"], seed=1)
    target: TargetSettings = TargetSettings(elements=["Cu", "Ni", "Pd", "Ag", "Au", "Pt"], seed=2)
    architecture: DeepSetsArchitecture = DeepSetsArchitecture()
    training: TrainingSettings = TrainingSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    seed: int = 0
    out: Path | None = Field(default=None, description="run folder (default runs/transfer/<name>)")

    @model_validator(mode="after")
    def _check(self) -> TransferConfig:
        if self.property not in PROPERTIES:
            raise ValueError(f"property {self.property!r}: one of {', '.join(PROPERTIES)}")
        for system in (self.source, self.target):
            unknown = sorted(set(system.elements) - set(EMT_ELEMENTS))
            if unknown:
                raise ValueError(f"the EMT oracle has no parameters for {', '.join(unknown)}; it models "
                                 f"{', '.join(EMT_ELEMENTS)}")
        if "embedding" in self.evaluation.regimes and set(self.target.elements) <= set(self.source.elements):
            raise ValueError("evaluation regime 'embedding' learns the target's elements that the source system "
                             "lacks, and the target has none; leave it out of evaluation.regimes")
        if max(self.evaluation.sizes) > self.target.alloys:
            raise ValueError(f"evaluation size {max(self.evaluation.sizes)} exceeds the target pool "
                             f"({self.target.alloys} alloys)")
        return self

    @builtins.property  # the field `property` shadows the builtin in this class body
    def folder(self) -> Path:
        return self.out or Path("runs/transfer") / self.name

    @builtins.property
    def checkpoint(self) -> Path:
        return self.folder / "source_model.pt"


def load_transfer_config(path: str | Path) -> TransferConfig:
    return load_yaml(TransferConfig, path, "transfer-learning config")


def _labelled(system: SystemSettings, n: int, seed: int, what: str, progress: Progress | None) -> AlloyDataset:
    report = None if progress is None else (lambda done, total: progress(what, done, total))
    return label_random_alloys(system.elements, n, seed, progress=report)


def pretrain(config: TransferConfig, *, progress: Progress | None = None) -> dict:
    """Label the source system, train the ensemble on it (a tenth held out to report its error), save it."""
    data = _labelled(config.source, config.source.alloys, config.source.seed, "label source alloys", progress)
    y = data.properties[config.property]
    order = np.random.default_rng(config.seed).permutation(len(data))
    held_out = order[: max(1, len(data) // 10)]
    train = order[len(held_out):]
    if progress is not None:
        progress("train source model", 0, 1)
    model = DeepSetsEnsemble(config.property, config.architecture, seed=config.seed).fit(
        data.elements, data.fractions[train], y[train], regime="scratch", training=config.training, seed=config.seed)
    if progress is not None:
        progress("train source model", 1, 1)
    mean, _ = model.predict(data.elements, data.fractions[held_out])
    model.save(config.checkpoint)
    write_dataset_csv(data, config.folder / "source_data.csv")
    summary = {"checkpoint": str(config.checkpoint), "property": config.property,
               "source": "-".join(data.elements), "alloys": len(data),
               "held_out_mae": float(np.abs(mean - y[held_out]).mean()), "property_sd": float(y.std())}
    config.folder.mkdir(parents=True, exist_ok=True)
    (config.folder / "pretrain.json").write_text(json.dumps(summary, indent=1))
    return summary


def write_dataset_csv(data: AlloyDataset, path: Path) -> None:
    """The labelled alloys as a table (one column per element's fraction, one per property): the source
    campaign's data as a peer optimiser takes it (BayBE's transfer learning)."""
    import pandas as pd

    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({**dict(zip(data.elements, data.fractions.T)), **data.properties}).to_csv(path, index=False)


def evaluate(config: TransferConfig, *, progress: Progress | None = None) -> dict:
    """Learning curves of every regime on the target system (the pre-trained checkpoint must exist)."""
    if not config.checkpoint.is_file():
        raise ValueError(f"{config.checkpoint}: no source model yet; run `sdl transfer pretrain` first")
    source = DeepSetsEnsemble.load(config.checkpoint)
    if source.property_name != config.property:
        raise ValueError(f"{config.checkpoint} predicts {source.property_name}, the config asks for {config.property}")
    if source.architecture != config.architecture:
        raise ValueError(f"{config.checkpoint} has another architecture than the config's; run `sdl transfer pretrain` "
                         "again (every regime, scratch included, uses the checkpoint's)")
    target = config.target
    data = _labelled(target, target.alloys + target.test_alloys, target.seed, "label target alloys", progress)
    y = data.properties[config.property]
    pool, test = np.arange(target.alloys), np.arange(target.alloys, len(data))
    source_mean, _ = source.predict(data.elements, data.fractions[test])
    evaluation = config.evaluation
    errors = {r: {n: [] for n in evaluation.sizes} for r in evaluation.regimes}
    total, done = len(evaluation.sizes) * evaluation.seeds * len(evaluation.regimes), 0
    for n in evaluation.sizes:
        for seed in range(evaluation.seeds):
            chosen = np.random.default_rng([config.seed, n, seed]).choice(pool, size=n, replace=False)
            for regime in evaluation.regimes:
                if regime in GP_REGIMES:
                    mean = gp_mean(data.elements, data.fractions[chosen], y[chosen], data.fractions[test],
                                   prior=source if regime == "gp_prior" else None, pool=data.fractions[pool])
                else:
                    model = source.fit(data.elements, data.fractions[chosen], y[chosen], regime=regime,
                                       training=config.training, seed=seed)
                    mean, _ = model.predict(data.elements, data.fractions[test])
                errors[regime][n].append(float(np.abs(mean - y[test]).mean()))
                done += 1
                if progress is not None:
                    progress("fit target models", done, total)
    curves = {r: {str(n): {"median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)),
                           "q75": float(np.quantile(v, 0.75)), "all": v} for n, v in by_n.items()}
              for r, by_n in errors.items()}
    summary = {"property": config.property, "source": "-".join(config.source.elements),
               "target": "-".join(data.elements), "test_alloys": len(test), "seeds": evaluation.seeds,
               "source_model_mae": float(np.abs(source_mean - y[test]).mean()),
               "target_property_sd": float(y[test].std()), "mae": curves}
    if "scratch" in errors:
        summary["reduction_vs_scratch"] = {
            r: {str(n): 1.0 - curves[r][str(n)]["median"] / curves["scratch"][str(n)]["median"]
                for n in evaluation.sizes} for r in errors if r != "scratch"}
    config.folder.mkdir(parents=True, exist_ok=True)
    (config.folder / "learning_curves.json").write_text(json.dumps(summary, indent=1))
    plot_learning_curves(summary, config.folder / "learning_curves.png")
    return summary


def gp_mean(elements: list[str], fractions: np.ndarray, y: np.ndarray, test_fractions: np.ndarray, *,
            prior: DeepSetsEnsemble | None, pool: np.ndarray) -> np.ndarray:
    """A GP's posterior mean at ``test_fractions`` after (fractions, y), inputs normalised over the unlabelled
    ``pool``'s range; with ``prior``, its prior mean is linear in that model's prediction (the BO planner's
    transfer prior), else constant. The last element is left out of the kernel: the fractions sum to 1."""
    x = torch.as_tensor(fractions, dtype=torch.double)
    pool_x = torch.as_tensor(pool, dtype=torch.double)
    bounds = torch.stack([pool_x.min(dim=0).values, pool_x.max(dim=0).values])
    options: dict = {}
    if prior is not None:
        def prediction(X: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():  # a fixed prior: only the GP's hyperparameters are fitted
                return prior.mean_feature(elements, X).to(X)

        values = prediction(pool_x)
        options = {"features": prediction, "feature_role": "mean",
                   "feature_bounds": torch.stack([values.min(), values.max() + 1e-12]).reshape(2, 1)}
    model = fit_single_task_gp(x, torch.as_tensor(y, dtype=torch.double).reshape(-1, 1), bounds=bounds,
                               columns=torch.arange(len(elements) - 1), **options)
    with torch.no_grad():
        return model.posterior(torch.as_tensor(test_fractions, dtype=torch.double)).mean.reshape(-1).numpy()


LABELS = {"scratch": ("C7", "from scratch"),
          "embedding": ("C5", "new-element embedding (unseen elements' embeddings learned, weights frozen)"),
          "feature": ("C0", "feature transfer (frozen encoder, new head)"),
          "partial": ("C1", "partial fine-tuning (frozen encoder; body and head, smaller learning rate)"),
          "finetune": ("C3", "fine-tuning (all weights, smaller learning rate)"),
          "embedding_finetune": ("C6", "new-element embedding, then fine-tuning"),
          "gp": ("C2", "GP on the composition, from scratch"),
          "gp_prior": ("C4", "GP with the source model as prior mean (BO's transfer prior)")}
# property -> (what it is, scale to the plotted unit, the unit)
PLOTTED = {"mixing_energy_ev_per_atom": ("mixing energy", 1000.0, "meV/atom"),
           "bulk_modulus_gpa": ("bulk modulus", 1.0, "GPa"), "lattice_parameter_ang": ("lattice parameter", 1000.0, "mÅ")}


def plot_learning_curves(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    what, scale, unit = PLOTTED[summary["property"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for regime, by_n in summary["mae"].items():
        colour, label = LABELS.get(regime, ("C2", regime))
        sizes = [int(n) for n in by_n]
        median = np.array([by_n[str(n)]["median"] for n in sizes]) * scale
        low = np.array([by_n[str(n)]["q25"] for n in sizes]) * scale
        high = np.array([by_n[str(n)]["q75"] for n in sizes]) * scale
        ax.plot(sizes, median, "o-", color=colour, label=label)
        ax.fill_between(sizes, low, high, color=colour, alpha=0.15)
    ax.axhline(summary["source_model_mae"] * scale, color="k", ls=":", lw=1,
               label="source model as it is (no target data)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes], minor=False)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.set_xlabel(f"target samples ({summary['target']})")
    ax.set_ylabel(f"held-out MAE of the {what} ({unit})")
    ax.set_title(f"Transfer {summary['source']} → {summary['target']}: median and quartiles over "
                 f"{summary['seeds']} draws", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
