"""Adapters that let peer optimisers (BayBE, Ax) plan through the controller's ``propose`` interface,
so ``sdl bench`` compares them on the same problems, budgets and seeds.

Both are ask/tell libraries: an adapter tells the peer every observation it has not yet seen, then
asks for ``n`` points. Both get the composition as its free elements with the balance element's
bounds as two linear inequality constraints (neither takes an equality constraint through its
high-level interface as BoTorch does). Ax receives a measured constraint as an outcome constraint;
BayBE has no outcome constraints, so an infeasible result is told as the worst value observed so
far (the usual workaround). Each peer runs with its own defaults otherwise.

Both are agent kinds (``planner.ax``, ``planner.baybe``), so a campaign can run them too. Install
with the ``peers`` extra: ``pip install -e '.[peers]'``.
"""

from __future__ import annotations

import importlib.util
import math
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from sdl.agents.base import AgentContext
from sdl.agents.planner import Planner, ProposeRequest
from sdl.experiment import Composition, DesignPoint
from sdl.objective import ConstraintConfig
from sdl.settings import ResolvedPath, Section
from sdl.surrogates.projection import project_capped_simplex


class PeerSettings(Section):
    initial_points: int = Field(default=8, ge=1, description="the peer's own initial design size")
    constraint: ConstraintConfig | None = Field(default=None, description="what counts as feasible in the measurements")


class PeerPlanner(Planner):
    Settings = PeerSettings
    library: ClassVar[str]  # the peer's import name

    @classmethod
    def check(cls, settings: PeerSettings, context: AgentContext) -> None:
        super().check(settings, context)
        if importlib.util.find_spec(cls.library) is None:
            raise ValueError(f"the {cls.name} planner needs the optional peers: pip install -e '.[peers]'")

    def __init__(self, settings: PeerSettings, context: AgentContext) -> None:
        super().__init__(settings, context)
        self.objective = context.objective
        self.constraint = settings.constraint
        self.initial_points = settings.initial_points
        self._told = 0
        self._asked: list = []  # peer-side handles of proposals not yet told, in order

    # Free coordinates (parameters, then free elements) and the balance element's linear bounds.
    def _free_bounds(self) -> dict[str, tuple[float, float]]:
        bounds = {n: (r.low, r.high) for n, r in self.space.parameters.items()}
        if self.space.composition is not None:
            comp = self.space.composition
            bounds.update({e: tuple(comp.elements[e]) for e in comp.free_elements})
        return bounds

    def _balance_sum_bounds(self) -> tuple[list[str], float, float] | None:
        if self.space.composition is None:
            return None
        comp = self.space.composition
        lo, hi = comp.elements[comp.balance_element]
        return comp.free_elements, 1.0 - hi, 1.0 - lo  # the free fractions' sum keeps the balance in bounds

    def _to_point(self, values: dict[str, float]) -> DesignPoint:
        bounds = self._free_bounds()
        values = {k: min(max(float(values[k]), bounds[k][0]), bounds[k][1]) for k in bounds}
        composition = None
        if self.space.composition is not None:
            comp = self.space.composition
            # A peer meets its linear constraints only to a tolerance, so the balance element can fall just
            # outside its bounds; the exact projection onto the bounded simplex puts the point back (scaling
            # the free fractions instead pushed one past its own upper bound when every bound binds).
            balance = 1.0 - math.fsum(values[e] for e in comp.free_elements)
            row = torch.tensor([[balance if e == comp.balance_element else values[e] for e in comp.elements]],
                               dtype=torch.double)
            low, high = (torch.tensor([comp.elements[e][i] for e in comp.elements], dtype=torch.double) for i in (0, 1))
            fractions = dict(zip(comp.elements, project_capped_simplex(row, low, high, 1.0)[0].tolist()))
            fractions[comp.balance_element] = min(max(1.0 - math.fsum(fractions[e] for e in comp.free_elements),
                                                      comp.elements[comp.balance_element][0]),
                                                  comp.elements[comp.balance_element][1])
            composition = Composition({e: fractions[e] for e in comp.elements})
        return DesignPoint(parameters={n: values[n] for n in self.space.parameters}, composition=composition)

    def propose(self, request: ProposeRequest) -> list[DesignPoint]:
        if request.pending:
            raise ValueError(f"the {self.name} adapter plans one batch at a time; it takes no pending points")
        new = request.observations[self._told:]
        if len(new) > len(self._asked):
            raise ValueError(f"{len(new)} new observations but only {len(self._asked)} points were asked of {self.name}")
        for observation, handle in zip(new, self._asked[: len(new)]):
            self._tell(handle, observation)
        self._asked = self._asked[len(new):]
        self._told = len(request.observations)
        points, handles = self._ask(request.n)
        self._asked.extend(handles)
        return points

    def _tell(self, handle, observation) -> None:
        raise NotImplementedError

    def _ask(self, n: int):
        raise NotImplementedError


class AxPlanner(PeerPlanner):
    """Ax (``ax.api.Client``): its default generation strategy (Sobol', then BoTorch)."""

    name = "ax"
    library = "ax"

    def __init__(self, settings: PeerSettings, context: AgentContext) -> None:
        super().__init__(settings, context)
        from ax.api.client import Client
        from ax.api.configs import RangeParameterConfig

        self.client = Client(random_seed=self.seed)
        constraints = []
        sums = self._balance_sum_bounds()
        if sums is not None:
            free, low, high = sums
            constraints = [f"{' + '.join(free)} <= {high:.12g}", f"{' + '.join(free)} >= {low:.12g}"]
        self.client.configure_experiment(
            parameters=[RangeParameterConfig(name=n, bounds=b, parameter_type="float")
                        for n, b in self._free_bounds().items()],
            parameter_constraints=constraints,
        )
        sign = "" if self.objective.direction == "maximize" else "-"
        outcome_constraints = []
        if self.constraint is not None:
            if len(self.constraint.measurements) != 1:
                raise ValueError("the Ax adapter takes a constraint on one measurement")
            m = self.constraint.measurements[0]
            if self.constraint.at_least is not None:
                outcome_constraints.append(f"{m} >= {self.constraint.at_least}")
            if self.constraint.at_most is not None:
                outcome_constraints.append(f"{m} <= {self.constraint.at_most}")
        self.client.configure_optimization(objective=f"{sign}{self.objective.measurement}",
                                           outcome_constraints=outcome_constraints)
        self.client.configure_generation_strategy(initialization_budget=self.initial_points,
                                                  initialization_random_seed=self.seed)

    def _ask(self, n: int):
        trials = self.client.get_next_trials(max_trials=n)
        return [self._to_point(dict(p)) for p in trials.values()], list(trials)

    def _tell(self, handle, observation) -> None:
        if observation.status != "done":
            self.client.mark_trial_failed(handle)
            return
        wanted = [self.objective.measurement] + (self.constraint.measurements if self.constraint else [])
        self.client.complete_trial(handle, raw_data={m: float(observation.measurements[m]) for m in wanted})


class BayBESettings(PeerSettings):
    source_data: ResolvedPath | None = Field(
        default=None, description="transfer learning: a CSV of another alloy system's results (a column per element's "
                                  "fraction, absent elements 0, and the objective's measurement), modelled by BayBE as "
                                  "a second task of a multi-task GP")
    source_points: int = Field(default=200, ge=1, le=5000, description="random rows of source_data used (BayBE's GP "
                                                                       "is exact: cubic in the data)")


class BayBEPlanner(PeerPlanner):
    """BayBE (``baybe.Campaign``) with its default recommenders; with ``source_data``, its transfer
    learning: a ``TaskParameter`` tells the source system's results from this campaign's, and only
    this campaign's task is recommended."""

    name = "baybe"
    library = "baybe"
    Settings = BayBESettings
    TASK = "alloy_system"

    @classmethod
    def check(cls, settings: BayBESettings, context: AgentContext) -> None:
        super().check(settings, context)
        if settings.source_data is not None:
            cls.source_table(settings, context)

    def __init__(self, settings: BayBESettings, context: AgentContext) -> None:
        super().__init__(settings, context)
        from baybe import Campaign
        from baybe.constraints import ContinuousLinearConstraint
        from baybe.objectives import SingleTargetObjective
        from baybe.parameters import NumericalContinuousParameter, TaskParameter
        from baybe.searchspace import SearchSpace as BayBESpace
        from baybe.targets import NumericalTarget
        from baybe.utils.random import set_random_seed

        set_random_seed(self.seed)
        constraints = []
        sums = self._balance_sum_bounds()
        if sums is not None:
            free, low, high = sums
            ones = [1.0] * len(free)
            constraints = [ContinuousLinearConstraint(parameters=free, operator="<=", coefficients=ones, rhs=high),
                           ContinuousLinearConstraint(parameters=free, operator=">=", coefficients=ones, rhs=low)]
        parameters = [NumericalContinuousParameter(n, bounds=b) for n, b in self._free_bounds().items()]
        source = self._source_rows(settings) if settings.source_data is not None else None
        if source is not None:
            parameters.append(TaskParameter(self.TASK, values=("source", "target"), active_values=("target",)))
        space = BayBESpace.from_product(parameters=parameters, constraints=constraints)
        target = NumericalTarget(self.objective.measurement, minimize=self.objective.direction == "minimize")
        self.campaign = Campaign(searchspace=space, objective=SingleTargetObjective(target))
        if source is not None:
            self.campaign.add_measurements(source, numerical_measurements_must_be_within_tolerance=False)
        self._values: list[float] = []

    @staticmethod
    def source_table(settings: BayBESettings, context: AgentContext):
        """The source system's results (every row, checked): a column per element's fraction, absent
        elements 0, and the objective's measurement. Elements outside the space, rows that do not sum
        to 1 and values that are not finite numbers are refused."""
        import pandas as pd
        from ase.data import chemical_symbols

        comp = context.require_space("BayBE's transfer learning", composition_only=True).composition
        where = f"source_data {settings.source_data}"
        try:
            table = pd.read_csv(settings.source_data)
        except (OSError, ValueError) as e:
            raise ValueError(f"{where}: cannot read it as CSV ({e})") from None
        measurement = context.objective.measurement
        if measurement not in table.columns:
            raise ValueError(f"{where} has no column {measurement!r} (the objective); it has {', '.join(table.columns)}")
        elements = [c for c in table.columns if c in chemical_symbols]
        foreign = [e for e in elements if e not in comp.elements and (table[e] != 0).any()]
        if foreign:
            raise ValueError(f"{where} has alloys with {', '.join(foreign)}, which the space ({', '.join(comp.elements)}) "
                             "lacks; give only alloys of the space's elements (absent ones 0)")
        if not any(e in comp.elements for e in elements):
            raise ValueError(f"{where} has none of the space's elements ({', '.join(comp.elements)}) as a column")
        used = table[[e for e in elements if e in comp.elements] + [measurement]]
        values = used.apply(pd.to_numeric, errors="coerce")
        if not np.isfinite(values.to_numpy(dtype=float)).all():
            raise ValueError(f"{where}: every fraction and {measurement} must be a finite number")
        sums = values[[e for e in elements if e in comp.elements]].sum(axis=1)
        if (abs(sums - 1.0) > 1e-6).any():
            raise ValueError(f"{where}: the fractions of row {int((abs(sums - 1.0) > 1e-6).idxmax()) + 2} sum to "
                             f"{float(sums[abs(sums - 1.0) > 1e-6].iloc[0]):.6g}, not 1")
        return values

    def _source_rows(self, settings: BayBESettings):
        """A random subset of the source table as BayBE measurements of the "source" task."""
        import pandas as pd

        comp = self.space.composition
        table = self.source_table(settings, self.context)
        rows = table.sample(n=min(settings.source_points, len(table)), random_state=self.seed)
        frame = pd.DataFrame({e: rows[e].to_numpy() if e in rows else 0.0 for e in comp.free_elements},
                             index=range(len(rows)))
        frame[self.TASK] = "source"
        frame[self.objective.measurement] = rows[self.objective.measurement].to_numpy()
        return frame

    def _ask(self, n: int):
        frame = self.campaign.recommend(batch_size=n)
        return [self._to_point(row) for row in frame.to_dict("records")], [frame.iloc[[i]] for i in range(len(frame))]

    def _tell(self, handle, observation) -> None:
        if observation.status != "done":
            return
        value = float(observation.measurements[self.objective.measurement])
        if self.constraint is not None and not self.constraint.satisfied(observation.measurements) and self._values:
            worst = min(self._values) if self.objective.direction == "maximize" else max(self._values)
            value = worst
        self._values.append(value)
        measured = handle.copy()
        measured[self.objective.measurement] = value
        self.campaign.add_measurements(measured)
