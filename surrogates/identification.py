"""The lab's causal graph and identification: may E[Y | do(X)] be computed from recorded data, and how?

Every causal estimate in sdl (:mod:`sdl.surrogates.causal`'s back-door and front-door estimators, the
SCM's simulation of ``do()``, ``planner.causal``) first asks :func:`identify`, which answers from the
graph alone, before any data are seen:

- **back-door** (Pearl 1993): a set Z of recorded non-descendants of X that blocks every path into X;
  then E[Y | do(x)] = E_Z[ E[Y | x, Z] ].
- **front-door** (Pearl 1995; *Causality* 3.3.2): when the confounding of X and Y is unrecorded, a set
  M of recorded variables that (i) intercepts every directed path X -> Y, (ii) has no open back-door
  path from X, and (iii) whose back-door paths to Y are all blocked by X; then
  E[Y | do(x)] = sum_m P(m | x) sum_x' P(x') E[Y | m, x'].
- **neither**: :class:`NotIdentifiable`, saying which path stays open.

Back-door is tried first (one regression, less variance), as DoWhy does. Identification is decided
with networkx's d-separation (``is_d_separator``, ``find_minimal_d_separator``); the front-door
search enumerates subsets of the candidate mediators, smallest first (the graphs here have tens of
variables, and the criterion is checked exactly rather than by a heuristic).

:func:`simulation_check` is the stricter question the SCM's simulation asks: an SCM that learns each
mechanism as E[v | recorded parents] is right only where no latent cause of v also reaches v's
recorded parents; the front-door graph is identified, but not simulable that way.

Plain networkx + pydantic; no torch, Ray or ZeroMQ.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import networkx as nx
from pydantic import Field, model_validator

from sdl.settings import Section

# More candidate mediators than this would make the exhaustive front-door search slow (2^n sets).
MAX_FRONT_DOOR_CANDIDATES = 16


class NotIdentifiable(ValueError):
    """No adjustment among the recorded variables identifies the effect (or the one named does not)."""


# -- the graph -----------------------------------------------------------------------------------


class GraphConfig(Section):
    """Variables in groups, edges between groups or variables (a group edge joins every pair), and
    latent common causes: ``latent: {lab_practice: [composition, process]}`` says an unrecorded
    practice drove both."""

    groups: dict[str, list[str]] = Field(default_factory=dict, description="group name -> variables (data columns)")
    edges: list[tuple[str, str]] = Field(min_length=1, description="[cause, effect] pairs of groups or variables")
    latent: dict[str, list[str]] = Field(default_factory=dict, description="unrecorded cause -> what it drives")

    @model_validator(mode="after")
    def _names(self) -> GraphConfig:
        variables = [v for members in self.groups.values() for v in members]
        clash = sorted(set(self.groups) & set(variables) | set(self.latent) & (set(variables) | set(self.groups)))
        if clash:
            raise ValueError(f"names used twice (as group, variable or latent): {clash}")
        return self

    def expand(self, name: str) -> list[str]:
        return list(self.groups.get(name, [name]))


class CausalGraph:
    """A DAG over recorded variables plus latent ones (``latent`` names), built from a GraphConfig."""

    def __init__(self, config: GraphConfig | dict) -> None:
        self.config = GraphConfig.model_validate(config)
        g = nx.DiGraph()
        for members in self.config.groups.values():
            g.add_nodes_from(members)
        for cause, effect in self.config.edges:
            for a, b in itertools.product(self.config.expand(cause), self.config.expand(effect)):
                if a == b:
                    raise ValueError(f"edge {cause} -> {effect} makes {a} its own cause")
                g.add_edge(a, b)
        for name, driven in self.config.latent.items():
            g.add_node(name)
            for target in driven:
                for b in self.config.expand(target):
                    g.add_edge(name, b)
        if not nx.is_directed_acyclic_graph(g):
            cycle = " -> ".join(a for a, _ in nx.find_cycle(g))
            raise ValueError(f"the causal graph has a cycle ({cycle}); a structural causal model needs a DAG")
        self.dag = g
        self.latent = set(self.config.latent)
        self.observed = [v for v in nx.topological_sort(g) if v not in self.latent]

    def parents(self, node: str) -> list[str]:
        """Recorded parents, in topological order."""
        found = set(self.dag.predecessors(node)) - self.latent
        return [v for v in self.observed if v in found]

    def descendants(self, nodes: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for v in nodes:
            out |= nx.descendants(self.dag, v)
        return out

    def check_names(self, treatments: Sequence[str], outcome: str) -> None:
        unknown = [v for v in [*treatments, outcome] if v not in self.observed]
        if unknown:
            raise ValueError(f"{unknown} are not recorded variables of the graph; known: {self.observed}")
        if outcome in treatments:
            raise ValueError(f"the outcome {outcome} cannot also be a treatment")
        if outcome not in self.descendants(treatments):
            raise NotIdentifiable(f"{outcome} is not a descendant of {list(treatments)} in the graph: no causal effect")

    def _without_treatment_exits(self, treatments: Sequence[str]) -> nx.DiGraph:
        g = self.dag.copy()
        g.remove_edges_from([(t, b) for t in treatments for b in list(self.dag.successors(t))])
        return g

    def check_adjustment_set(self, treatments: Sequence[str], outcome: str, adjustment: Iterable[str]) -> None:
        """Raise :class:`NotIdentifiable`, saying why, unless ``adjustment`` meets the back-door criterion."""
        treatments, z = list(treatments), set(adjustment)
        self.check_names(treatments, outcome)
        bad = sorted(z & (self.latent | set(treatments) | {outcome}))
        if bad:
            raise NotIdentifiable(f"cannot adjust for {bad}: latent, a treatment, or the outcome itself")
        unknown = sorted(z - set(self.observed))
        if unknown:
            raise ValueError(f"{unknown} are not variables of the graph; known: {self.observed}")
        downstream = sorted(z & self.descendants(treatments))
        if downstream:
            raise NotIdentifiable(f"{downstream} lie downstream of {treatments} (mediators or consequences): "
                                  "adjusting for them removes part of the effect or opens a collider path")
        g = self._without_treatment_exits(treatments)
        if not nx.is_d_separator(g, set(treatments), {outcome}, z):
            path = self._open_backdoor_path(g, treatments, outcome, z)
            raise NotIdentifiable(f"the back-door path {path} stays open given {sorted(z) or 'nothing'}")

    def adjustment_set(self, treatments: Sequence[str], outcome: str) -> list[str]:
        """A minimal back-door adjustment set among the recorded non-descendants of the treatments."""
        treatments = list(treatments)
        self.check_names(treatments, outcome)
        allowed = set(self.observed) - set(treatments) - {outcome} - self.descendants(treatments)
        g = self._without_treatment_exits(treatments)
        found = nx.find_minimal_d_separator(g, set(treatments), {outcome}, restricted=allowed)
        if found is None:
            path = self._open_backdoor_path(g, treatments, outcome, allowed)
            raise NotIdentifiable(
                f"no set of recorded variables blocks every back-door path from {treatments} to {outcome} "
                f"(e.g. {path} stays open even given all recorded non-descendants); "
                "record the confounder, or use an instrument or front-door design")
        self.check_adjustment_set(treatments, outcome, found)
        return [v for v in self.observed if v in found]

    # -- front-door ---------------------------------------------------------------------------

    def front_door_violation(self, treatments: Sequence[str], outcome: str, mediators: Iterable[str]) -> str | None:
        """Why ``mediators`` fail Pearl's front-door criterion for (treatments, outcome), or None if they meet it."""
        x, m = set(treatments), set(mediators)
        bad = sorted(m & (self.latent | x | {outcome}))
        if bad:
            return f"{bad} cannot be mediators (latent, a treatment, or the outcome)"
        unknown = sorted(m - set(self.observed))
        if unknown:
            return f"{unknown} are not variables of the graph"
        cut = self.dag.copy()
        cut.remove_nodes_from(m)
        for t in sorted(x):
            if outcome in nx.descendants(cut, t):
                path = nx.shortest_path(cut, t, outcome)
                return f"the directed path {' -> '.join(path)} bypasses {sorted(m)}"
        no_exits = self._without_treatment_exits(sorted(x))
        if not nx.is_d_separator(no_exits, x, m, set()):
            return f"a back-door path from {sorted(x)} into {sorted(m)} is open (the mediators are confounded)"
        mediator_exits = self.dag.copy()
        mediator_exits.remove_edges_from([(a, b) for a in m for b in list(self.dag.successors(a))])
        if not nx.is_d_separator(mediator_exits, m, {outcome}, x):
            return f"a back-door path from {sorted(m)} to {outcome} stays open given {sorted(x)}"
        return None

    def front_door_set(self, treatments: Sequence[str], outcome: str) -> list[str] | None:
        """A smallest set of recorded mediators meeting the front-door criterion, or None."""
        return _search_front_door(self, list(treatments), outcome)[0]

    def _open_backdoor_path(self, g: nx.DiGraph, treatments: Sequence[str], outcome: str, z: set[str]) -> str:
        """One path from a treatment to the outcome that ``z`` leaves unblocked, drawn with arrows."""
        skeleton = g.to_undirected(as_view=True)
        for t in treatments:
            for path in nx.all_simple_paths(skeleton, t, outcome, cutoff=8):
                if not _blocked(g, path, z):
                    return "".join(f"{a} {'->' if g.has_edge(a, b) else '<-'} " for a, b in zip(path, path[1:])) + outcome
        return f"{list(treatments)} ... {outcome}"


def _blocked(g: nx.DiGraph, path: list[str], z: set[str]) -> bool:
    for before, node, after in zip(path, path[1:], path[2:]):
        collider = g.has_edge(before, node) and g.has_edge(after, node)
        if collider and not ({node} | nx.descendants(g, node)) & z:
            return True
        if not collider and node in z:
            return True
    return False


# -- identification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identification:
    """How E[outcome | do(treatments)] follows from recorded data: the method and its sets."""

    treatments: tuple[str, ...]
    outcome: str
    method: Literal["back-door", "front-door"]
    adjustment: tuple[str, ...] = ()  # back-door: the set Z averaged over
    mediators: tuple[str, ...] = ()  # front-door: the set M every effect passes through

    def describe(self) -> str:
        if self.method == "back-door":
            return f"back-door, adjusting for {', '.join(self.adjustment) or 'nothing (no back-door path)'}"
        return f"front-door, through {', '.join(self.mediators)}"


def identify(graph: CausalGraph, treatments: str | Sequence[str], outcome: str) -> Identification:
    """Decide from the graph whether E[outcome | do(treatments)] is identified: by back-door, else by
    front-door; raise :class:`NotIdentifiable` with both reasons when neither applies."""
    treatments = [treatments] if isinstance(treatments, str) else list(treatments)
    try:
        z = graph.adjustment_set(treatments, outcome)
        return Identification(tuple(treatments), outcome, "back-door", adjustment=tuple(z))
    except NotIdentifiable as backdoor_failure:
        if outcome not in graph.descendants(treatments):
            raise
        reason = str(backdoor_failure)
    mediators, obstacle = _search_front_door(graph, treatments, outcome)
    if mediators is None:
        raise NotIdentifiable(f"{reason}; and no recorded mediators meet the front-door criterion ({obstacle})")
    return Identification(tuple(treatments), outcome, "front-door", mediators=tuple(mediators))


def simulation_check(graph: CausalGraph, treatments: Sequence[str], outcome: str) -> Identification:
    """Identify the effect, then check that an SCM of E[v | recorded parents] mechanisms simulates it
    right: every mechanism the intervention runs through (the treatments' descendants that lead to
    the outcome) must be unconfounded, i.e. no latent cause of v reaches v's recorded parents."""
    treatments = list(treatments)
    found = identify(graph, treatments, outcome)
    leads_to_outcome = nx.ancestors(graph.dag, outcome) | {outcome}
    downstream = graph.descendants(treatments) & leads_to_outcome
    for v in [v for v in graph.observed if v in downstream]:
        parents = set(graph.parents(v))
        for hidden in sorted(set(graph.dag.predecessors(v)) & graph.latent):
            if parents and not nx.is_d_separator(graph.dag, {hidden}, parents, set()):
                also = sorted((set(graph.dag.successors(hidden)) - {v}) - graph.latent)
                raise NotIdentifiable(
                    f"the SCM cannot simulate do({', '.join(treatments)}): {v}'s mechanism, learned from "
                    f"{sorted(parents)}, is confounded by the latent {hidden} (which also drives {also}), so "
                    f"E[{v} | parents] is not how {v} responds; the effect is identified by {found.describe()}: "
                    "estimate it that way")
    return found


def _search_front_door(graph: CausalGraph, treatments: list[str], outcome: str) -> tuple[list[str] | None, str]:
    """The smallest front-door set (candidates: recorded descendants of the treatments that lead to
    the outcome), or None and the reason the largest candidate set fails."""
    x = set(treatments)
    leads_to_outcome = nx.ancestors(graph.dag, outcome)
    candidates = [v for v in graph.observed
                  if v in graph.descendants(treatments) and v in leads_to_outcome and v not in x]
    if not candidates:
        return None, f"no recorded variable lies on a directed path from {treatments} to {outcome}"
    if len(candidates) > MAX_FRONT_DOOR_CANDIDATES:
        return None, (f"{len(candidates)} candidate mediators are too many to search "
                      f"(at most {MAX_FRONT_DOOR_CANDIDATES})")
    for size in range(1, len(candidates) + 1):
        for subset in itertools.combinations(candidates, size):
            if graph.front_door_violation(treatments, outcome, subset) is None:
                return list(subset), ""
    return None, str(graph.front_door_violation(treatments, outcome, candidates))
