"""A Deep Sets model of an alloy property that accepts any set of elements, and its transfer to a new system.

    y(x) = rho( sum_i x_i phi(d_i) )

phi (the *encoder*) maps an element's standardised descriptors d_i
(:mod:`sdl.surrogates.element_descriptors`) to an embedding; the embeddings are summed with the
mole fractions x_i as weights; rho (a *body* of hidden layers and a linear *head*) maps the pooled
vector to the property. A sum is invariant to the order of the elements, and an element with x_i = 0
adds nothing, so an alloy with a zero fraction is the same alloy without that element. An element
the model never saw enters through its descriptors alone.

Uncertainty: a deep ensemble (members from different initialisations, each with its own validation
split); the prediction is the members' mean, the uncertainty their standard deviation.

Six ways to fit data of a new (target) system, :meth:`DeepSetsEnsemble.fit`:

- ``scratch``: new members, trained on the target data only;
- ``embedding`` (new-element embedding): every network weight frozen; each element the model never saw
  gets a learned correction added to its embedding phi(d) (embedding_size weights per new element and
  member). What the source system taught (how embeddings combine into the property, and the known
  elements' embeddings) is kept whole, and the target data spend themselves on the one thing the source
  could not know: the new element, of which the descriptors give only a first guess. The analogue of
  adding new tokens to a pretrained language model and training only their embeddings. Best with few
  samples; with many, fine-tuning (which also moves these corrections) catches up and passes it;
- ``feature`` (feature transfer): the source model's encoder and body frozen, the head retrained from
  the source head; hidden_size + 1 weights learned (65 by default), the safer choice with very little data;
- ``partial`` (partial fine-tuning): the encoder frozen (what an element is, learned on the source system),
  the body and head trained from the source values at the smaller learning rate;
- ``finetune``: every weight trained from the source model's values, at a smaller learning rate;
- ``embedding_finetune``: ``embedding``, then ``finetune`` from there (when no element is new, the first
  step has nothing to learn and this is ``finetune``). Fine-tuning that starts with the new element
  already placed spends its few samples on what the source got wrong rather than on what it never knew;
  the order is that of linear probing then fine-tuning (LP-FT, Kumar et al. 2022). The best regime of the
  learning curves at every number of target samples.

With ``training.source_anchor`` the regimes that train source weights also pay for the squared distance
of those weights from the source model's (L2-SP, Li, Grandvalet & Davoine 2018): a few target samples
adjust the source model rather than let weight decay and noise pull it elsewhere.

Each trains with Adam on the standardised property and stops early on the member's validation split
(the best validation epoch's weights are kept). Plain torch.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from sdl.settings import Section
from sdl.surrogates.element_descriptors import DESCRIPTORS, raw_descriptors, standardisation

DTYPE = torch.double
Regime = Literal["scratch", "embedding", "feature", "partial", "finetune", "embedding_finetune"]
REGIMES: tuple[Regime, ...] = ("scratch", "embedding", "feature", "partial", "finetune", "embedding_finetune")
# parameters a transfer regime trains (else all)
TRAINED = {"embedding": ("corrections.",), "feature": ("head.",), "partial": ("body.", "head.")}


class DeepSetsArchitecture(Section):
    embedding_size: int = Field(default=32, ge=1, le=1024, description="length of phi(element)")
    hidden_size: int = Field(default=64, ge=1, le=4096, description="width of phi's and rho's hidden layers")
    hidden_layers: int = Field(default=2, ge=1, le=8, description="hidden layers of phi and of rho")
    members: int = Field(default=5, ge=1, le=64, description="ensemble members (uncertainty = their spread)")


class TrainingSettings(Section):
    learning_rate: float = Field(default=3e-3, gt=0)
    finetune_learning_rate_factor: float = Field(default=0.1, gt=0, le=1,
                                                 description="fine-tuning's learning rate, relative")
    embedding_learning_rate: float = Field(default=1e-2, gt=0, description=(
        "the embedding regime's: a few dozen new weights, each far from its zero start, take larger steps "
        "than a trained network's"))
    weight_decay: float = Field(default=1e-5, ge=0)
    source_anchor: float = Field(default=0.0, ge=0, description=(
        "L2-SP (Li et al. 2018): the regimes that train source weights add this times the squared distance "
        "of those weights from the source model's to the loss, so a few target samples adjust the source "
        "model instead of pulling it towards zero (weight_decay's pull); 0: none"))
    max_epochs: int = Field(default=2000, ge=1)
    batch_size: int = Field(default=128, ge=1)
    patience_epochs: int = Field(default=100, ge=1, description="stop after this many epochs without a better "
                                                                "validation loss")
    validation_fraction: float = Field(default=0.2, gt=0, lt=1)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.SiLU()]
    return nn.Sequential(*layers)


class DeepSetsNet(nn.Module):
    def __init__(self, descriptor_size: int, architecture: DeepSetsArchitecture) -> None:
        super().__init__()
        h, e, n = architecture.hidden_size, architecture.embedding_size, architecture.hidden_layers
        self.encoder = nn.Sequential(*_mlp([descriptor_size] + [h] * n), nn.Linear(h, e))
        self.body = _mlp([e] + [h] * n)
        self.head = nn.Linear(h, 1)
        self.corrections = nn.ParameterDict()  # element symbol -> learned correction of its embedding

    def add_corrections(self, elements: Sequence[str]) -> None:
        """A zero correction (a trainable parameter) for each of ``elements`` that has none yet."""
        reference = self.head.weight
        for element in elements:
            if element not in self.corrections:
                self.corrections[element] = nn.Parameter(reference.new_zeros(self.encoder[-1].out_features))

    def forward(self, descriptors: torch.Tensor, fractions: torch.Tensor, elements: Sequence[str]) -> torch.Tensor:
        """descriptors (k x D) of the k ``elements``, fractions (... x k) -> the property (...)."""
        embeddings = self.encoder(descriptors)
        if any(e in self.corrections for e in elements):
            zero = embeddings.new_zeros(embeddings.shape[-1])
            embeddings = embeddings + torch.stack([self.corrections[e] if e in self.corrections else zero
                                                   for e in elements])
        return self.head(self.body(fractions @ embeddings)).squeeze(-1)


class DeepSetsEnsemble:
    """An ensemble of :class:`DeepSetsNet` predicting one property (in its own units) of any alloy."""

    def __init__(self, property_name: str, architecture: DeepSetsArchitecture | None = None, *, seed: int = 0) -> None:
        self.property_name = property_name
        self.architecture = architecture or DeepSetsArchitecture()
        mean, sd = standardisation()
        self.descriptor_mean = torch.as_tensor(mean, dtype=DTYPE)
        self.descriptor_sd = torch.as_tensor(sd, dtype=DTYPE)
        self.members = self._new_members(seed)
        self.y_mean, self.y_sd = 0.0, 1.0
        self.trained_on: list[str] = []  # element sets of the data it was fitted to, in order ("Cu-Ni-Pd")

    def _new_members(self, seed: int) -> list[DeepSetsNet]:
        members = []
        with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's RNG
            for i in range(self.architecture.members):
                torch.manual_seed(seed * 1000 + i)
                members.append(DeepSetsNet(len(DESCRIPTORS), self.architecture).to(DTYPE))
        return members

    def descriptors(self, elements: Sequence[str]) -> torch.Tensor:
        raw = torch.as_tensor(np.stack([raw_descriptors(e) for e in elements]), dtype=DTYPE)
        return (raw - self.descriptor_mean) / self.descriptor_sd

    # ---- prediction ----------------------------------------------------------------------------------

    def member_predictions(self, elements: Sequence[str], fractions: torch.Tensor) -> torch.Tensor:
        """(members x ...) predictions in the property's units; differentiable in ``fractions``."""
        d = self.descriptors(elements)
        out = torch.stack([m(d, fractions.to(DTYPE), elements) for m in self.members])
        return out * self.y_sd + self.y_mean

    def mean_feature(self, elements: Sequence[str], fractions: torch.Tensor) -> torch.Tensor:
        """The ensemble's mean prediction as one input feature, (... x 1), differentiable in ``fractions``:
        what a GP's prior mean is made linear in (the BO planner's transfer prior, ``gp_prior`` curves)."""
        return self.member_predictions(elements, fractions).mean(dim=0).unsqueeze(-1)

    def predict(self, elements: Sequence[str], fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and ensemble standard deviation for rows of ``fractions`` (n x len(elements))."""
        fractions = np.atleast_2d(np.asarray(fractions, dtype=float))
        if fractions.shape[-1] != len(elements):
            raise ValueError(f"fractions have {fractions.shape[-1]} columns for {len(elements)} elements")
        with torch.no_grad():
            out = self.member_predictions(elements, torch.as_tensor(fractions, dtype=DTYPE))
        sd = out.std(dim=0) if len(self.members) > 1 else torch.zeros_like(out[0])
        return out.mean(dim=0).numpy(), sd.numpy()

    # ---- fitting -------------------------------------------------------------------------------------

    def fit(self, elements: Sequence[str], fractions: np.ndarray, y: np.ndarray, *, regime: Regime = "scratch",
            training: TrainingSettings | None = None, seed: int = 0) -> DeepSetsEnsemble:
        """A new ensemble fitted to (fractions, y) of the system ``elements``, from this one per ``regime``
        (``scratch`` ignores this one's weights); this ensemble is left as it was."""
        training = training or TrainingSettings()
        fractions = np.asarray(fractions, dtype=float)
        y = np.asarray(y, dtype=float).reshape(-1)
        if fractions.shape != (len(y), len(elements)):
            raise ValueError(f"fractions {fractions.shape} do not match {len(y)} values of {len(elements)} elements")
        if len(y) < 2 or not (np.isfinite(fractions).all() and np.isfinite(y).all()):
            raise ValueError(f"need at least 2 finite labelled alloys, got {len(y)}")
        self.check_regime(regime, elements)
        unseen = [e for e in elements if e not in self.seen_elements]
        if regime == "embedding_finetune":
            placed = (self.fit(elements, fractions, y, regime="embedding", training=training, seed=seed)
                      if unseen else self)
            model = placed.fit(elements, fractions, y, regime="finetune", training=training, seed=seed)
            model.trained_on = self.trained_on + ["-".join(elements)]
            return model
        model = copy.deepcopy(self)
        if regime == "scratch":
            model.members = model._new_members(seed)
            model.y_mean, model.y_sd = float(y.mean()), float(y.std()) or 1.0
            model.trained_on = []
        small = regime in ("partial", "finetune")
        learning_rate = training.learning_rate * (training.finetune_learning_rate_factor if small else 1)
        if regime == "embedding":
            learning_rate = training.embedding_learning_rate
        d = model.descriptors(elements)
        x = torch.as_tensor(fractions, dtype=DTYPE)
        target = torch.as_tensor((y - model.y_mean) / model.y_sd, dtype=DTYPE)
        rng = np.random.default_rng(seed)
        for member in model.members:
            if regime == "embedding":
                member.add_corrections(unseen)
            for name, p in member.named_parameters():
                p.requires_grad_(regime not in TRAINED or name.startswith(TRAINED[regime]))
            # L2-SP holds source weights near their values; the new corrections start at zero, not at
            # anything the source learned, so the embedding regime has nothing to hold them to
            _train(member, d, x, elements, target, training, learning_rate, rng,
                   anchored=regime not in ("scratch", "embedding"))
            for p in member.parameters():
                p.requires_grad_(True)
        model.trained_on = self.trained_on + ["-".join(elements)] if regime != "scratch" else ["-".join(elements)]
        return model

    def check_regime(self, regime: str, elements: Sequence[str]) -> None:
        """Refuse (ValueError) a regime that cannot adapt this model to the system ``elements``: an unknown
        one, or ``embedding`` where the model saw every element (it learns only the new ones')."""
        if regime not in REGIMES:
            raise ValueError(f"regime {regime!r}: one of {', '.join(REGIMES)}")
        if regime == "embedding" and set(elements) <= self.seen_elements:
            raise ValueError(f"regime 'embedding' learns the embeddings of elements the model never saw, and it "
                             f"was trained on every one of {', '.join(elements)}; use feature, partial or finetune")

    @property
    def seen_elements(self) -> set[str]:
        """The elements of every system this model was fitted to."""
        return {e for system in self.trained_on for e in system.split("-")}

    # ---- persistence ---------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": "sdl.deep_sets/1", "property": self.property_name,
                    "architecture": self.architecture.model_dump(), "descriptors": list(DESCRIPTORS.values()),
                    "descriptor_mean": self.descriptor_mean, "descriptor_sd": self.descriptor_sd,
                    "y_mean": self.y_mean, "y_sd": self.y_sd, "trained_on": self.trained_on,
                    "members": [m.state_dict() for m in self.members]}, path)

    @classmethod
    def load(cls, path: str | Path) -> DeepSetsEnsemble:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such Deep Sets checkpoint")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: say what it is not
            raise ValueError(f"{path} is not a Deep Sets checkpoint ({type(e).__name__})") from None
        if not isinstance(state, dict) or state.get("format") != "sdl.deep_sets/1":
            raise ValueError(f"{path} is not a Deep Sets checkpoint (format sdl.deep_sets/1)")
        if state["descriptors"] != list(DESCRIPTORS.values()):
            raise ValueError(f"{path} was trained on other descriptors ({', '.join(state['descriptors'])})")
        model = cls(state["property"], DeepSetsArchitecture(**state["architecture"]))
        model.descriptor_mean, model.descriptor_sd = state["descriptor_mean"], state["descriptor_sd"]
        model.y_mean, model.y_sd, model.trained_on = state["y_mean"], state["y_sd"], list(state["trained_on"])
        for member, weights in zip(model.members, state["members"]):
            member.add_corrections([k.removeprefix("corrections.") for k in weights if k.startswith("corrections.")])
            member.load_state_dict(weights)
        return model


def _train(net: DeepSetsNet, descriptors: torch.Tensor, x: torch.Tensor, elements: Sequence[str], y: torch.Tensor,
           training: TrainingSettings, learning_rate: float, rng: np.random.Generator, *,
           anchored: bool = False) -> None:
    """Adam on the mean squared error (plus, ``anchored``, the L2-SP pull towards the weights the member
    starts from); early stopping on a validation split of this member's own."""
    n = len(y)
    order = rng.permutation(n)
    n_val = max(1, int(round(training.validation_fraction * n)))
    val, fit = order[:n_val], order[n_val:]
    if len(fit) == 0:
        fit = val
    parameters = [p for p in net.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(parameters, lr=learning_rate, weight_decay=training.weight_decay)
    anchor = [p.detach().clone() for p in parameters] if anchored and training.source_anchor > 0 else None

    def anchor_penalty() -> torch.Tensor | float:
        if anchor is None:
            return 0.0
        return training.source_anchor * sum(((p - p0) ** 2).sum() for p, p0 in zip(parameters, anchor))

    best_loss, best_state, since_best = float("inf"), copy.deepcopy(net.state_dict()), 0
    with torch.no_grad():
        best_loss = float(torch.mean((net(descriptors, x[val], elements) - y[val]) ** 2))
    for _ in range(training.max_epochs):
        shuffled = fit[rng.permutation(len(fit))]
        for start in range(0, len(shuffled), training.batch_size):
            batch = torch.as_tensor(shuffled[start:start + training.batch_size])
            optimiser.zero_grad()
            loss = torch.mean((net(descriptors, x[batch], elements) - y[batch]) ** 2) + anchor_penalty()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            val_loss = float(torch.mean((net(descriptors, x[val], elements) - y[val]) ** 2))
        if val_loss < best_loss:
            best_loss, best_state, since_best = val_loss, copy.deepcopy(net.state_dict()), 0
        else:
            since_best += 1
            if since_best >= training.patience_epochs:
                break
    net.load_state_dict(best_state)
