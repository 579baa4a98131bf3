"""What every agent kind is: a pydantic ``Settings`` model beside a thin bus service, built from the
settings and the campaign's :class:`AgentContext`.

An agent kind is registered under a name in the ``sdl.agents`` entry-point group
(:mod:`sdl.agents.registry`); a campaign config names it as ``{kind, settings}``. Its settings are
validated once, when the config is loaded, and checked against the rest of the campaign there
(:meth:`AgentKind.check`); the launcher hands the validated model to the Ray actor, which calls
:meth:`AgentKind.build`. A lab adds its own planner or surrogate with one entry point in its own
package, without editing ``sdl``.

Roles are what the campaign loop asks of an agent:

* ``planner``: ``propose`` the next experiments (:class:`sdl.agents.planner.Planner`);
* ``process_planner``: ``route`` a batch of compositions to heat-treatment routes;
* ``surrogate`` and ``simulator``: serve models and ground truth to whoever asks; the loop calls
  on them only through the capabilities they declare in :attr:`AgentKind.provides` —
  ``feasibility`` (a :class:`~sdl.surrogates.phase_classifier.FeasibilityModel` for planners that
  weigh by P(feasible)), ``recommendation`` (``fit``: the best point by posterior mean) and
  ``truth`` (``evaluate``: noiseless values, for benchmarks).
* ``instrument``: an instrument driver behind the bus.

Besides what the loop asks, an agent may consult other agents itself (:meth:`AgentKind.consults`):
the MLIP selector planner asks ``surrogate.mlip`` for uncertainties and training rounds. It calls
them over the same authenticated bus, granted exactly the calls its kind declares.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from sdl.bus import BusClient, CurveKeys, Service
from sdl.instruments.limits import ProcessLimits
from sdl.objective import ObjectiveConfig
from sdl.settings import NoSettings, Section
from sdl.space import SearchSpace

Role = Literal["planner", "process_planner", "surrogate", "simulator", "instrument"]
Capability = Literal["feasibility", "recommendation", "truth"]


class AgentContext(Section):
    """What a campaign tells every agent it starts, beside the agent's own settings."""

    space: SearchSpace | None = None
    objective: ObjectiveConfig = ObjectiveConfig()
    seed: int = 0
    process_limits: ProcessLimits | None = Field(
        default=None, description="the tightest limits of the instruments that run a specimen's route")
    # Where the agent runs (set by its host, not by a config): the broker it serves, and its own keys on
    # a bus with keys; an agent that consults others (``AgentKind.consults``) calls them through these.
    bus_address: str | None = Field(default=None, exclude=True)
    bus_keys: CurveKeys | None = Field(default=None, exclude=True)

    def bus_client(self, what: str) -> BusClient:
        """A client of the campaign's bus for ``what`` (it may call only what its kind ``consults``)."""
        if self.bus_address is None:
            raise ValueError(f"{what} consults other agents over the bus; run it in a campaign (`sdl run`)")
        return BusClient(self.bus_address, curve=self.bus_keys)

    def require_space(self, what: str, *, composition: bool = False, composition_only: bool = False) -> SearchSpace:
        """The campaign's space, or ValueError saying what ``what`` needs of it."""
        if self.space is None:
            raise ValueError(f"{what} needs a search space")
        if (composition or composition_only) and self.space.composition is None:
            raise ValueError(f"{what} works on compositions; the space has none")
        if composition_only and self.space.parameters:
            raise ValueError(f"{what} works on compositions alone; the space also has parameters "
                             f"{sorted(self.space.parameters)}")
        return self.space


class AgentKind:
    """The class-level contract of an agent kind (what the registry loads)."""

    role: ClassVar[Role]
    Settings: ClassVar[type[Section]] = NoSettings
    provides: ClassVar[frozenset[Capability]] = frozenset()
    # "auto": a GPU when the cluster has a free one (the MLIP and the generative models); a number: exactly that
    default_num_gpus: ClassVar[float | Literal["auto"]] = 0.0
    default_timeout_s: ClassVar[float] = 60.0  # how long a campaign waits for one answer, unless configured

    @classmethod
    def check(cls, settings: Section, context: AgentContext) -> None:
        """Refuse (ValueError) settings that cannot work in this campaign; called at config load."""

    @classmethod
    def requires(cls, settings: Section) -> frozenset[Capability]:
        """Capabilities another agent of the campaign must provide for this one to work."""
        return frozenset()

    @classmethod
    def consults(cls, settings: Section) -> tuple[str, ...]:
        """``service:method`` this agent calls itself over the bus (e.g. a selector planner asking
        ``surrogate.mlip:predict``); the broker grants these calls to its key and no others, and the
        campaign refuses a config that does not start the services named."""
        return ()

    @classmethod
    def build(cls, settings: Section, context: AgentContext) -> Service:
        """The bus service this agent runs (inside its Ray actor, or an external process)."""
        raise NotImplementedError


class Agent(Service, AgentKind):
    """An agent that is itself the bus service: ``Agent(settings, context)``."""

    def __init__(self, settings: Section, context: AgentContext) -> None:
        self.settings = settings
        self.context = context

    @property
    def kind(self) -> str:  # what ``describe`` reports
        return self.role

    @classmethod
    def build(cls, settings: Section, context: AgentContext) -> Service:
        return cls(settings, context)
