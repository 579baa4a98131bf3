"""Campaign configuration: YAML validated by pydantic, with defaults that run on one machine.

Every section has defaults, so a config names only what differs. Agents are named as
``{kind, settings}``: the kind is looked up in the ``sdl.agents`` entry points and its settings are
validated by the kind's own model, once, here; each agent then checks that it can work in this
campaign (its space, its objective, the capabilities it needs from other agents). An invalid file
raises :class:`~sdl.settings.ConfigError` naming the field, what was wrong, and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from sdl.agents.base import AgentContext, AgentKind, Role
from sdl.agents.instrument_driver import instrument_service
from sdl.agents.registry import agent_class, qualified, validate_settings
from sdl.bus import KeyRing
from sdl.bus.broker import loopback
from sdl.experiment import DesignPoint, ProcessStep
from sdl.instruments.base import driver_parameters
from sdl.instruments.limits import ProcessLimits
from sdl.objective import ObjectiveConfig
from sdl.process_design import DesignedHold, corner_routes, designed_route
from sdl.settings import Section, load_yaml, validate
from sdl.space import SearchSpace
from sdl.wire import ServiceName


class GrantConfig(Section):
    """What a key may do on the bus; shell-style patterns (``instrument.*:describe``)."""

    serve: list[str] = Field(default_factory=list, description="services it may serve")
    call: list[str] = Field(default_factory=list, description="service:method it may call (service alone: any)")
    publish: list[str] = Field(default_factory=list, description="event topics it may publish")


class BusConfig(Section):
    """Where the broker listens, and who may talk to it. ``*`` picks a free port; a lab with external
    instruments fixes one, and then needs keys (CurveZMQ): the broker refuses to listen beyond this
    machine without them."""

    frontend: str = "tcp://127.0.0.1:*"
    events: str = "tcp://127.0.0.1:*"
    keys: Path | None = Field(
        default=None, description="the deployment's keys directory (`sdl keys`; default: SDL_KEYS_DIR); none: no "
                                  "authentication, loopback only")
    grants: dict[str, GrantConfig] = Field(
        default_factory=dict, description="what each key may do beyond the defaults (an external instrument's key "
                                          "serves its instrument; the controller and its agents need nothing here)")
    advertise_host: str | None = Field(
        default=None, description="host name peers use to reach a broker bound to 0.0.0.0 (default: this node's IP)"
    )
    join_timeout_s: float = Field(default=180.0, gt=0, description="how long to wait for every agent to join")

    @field_validator("frontend", "events")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not re.fullmatch(r"(tcp://[^:\s]+:(\*|\d{1,5}))|(ipc://\S+)", value):
            raise ValueError(f"{value!r} is not a ZeroMQ endpoint; use tcp://HOST:PORT, tcp://HOST:* or ipc://PATH")
        return value

    def key_ring(self) -> KeyRing | None:
        return KeyRing(self.keys) if self.keys is not None else KeyRing.from_env()

    @model_validator(mode="after")
    def _keys_beyond_loopback(self) -> BusConfig:
        exposed = [e for e in (self.frontend, self.events) if not loopback(e)]
        if exposed and self.key_ring() is None:
            raise ValueError(f"{exposed[0]} is reachable from other machines, and the bus has no keys: make them "
                             "with `sdl keys new broker` (and one per instrument PC) and set bus.keys or SDL_KEYS_DIR")
        return self


class RayConfig(Section):
    address: str | None = Field(default=None, description="existing cluster ('auto' or HOST:PORT); None starts one")
    num_cpus: int | None = Field(default=2, ge=1, description="CPUs for a local Ray started by the campaign")
    max_restarts: int = Field(default=3, ge=-1, description="times Ray restarts a dead agent (-1: forever)")


class LedgerConfig(Section):
    synchronous: Literal["full", "normal"] = "full"
    backup_every: int = Field(default=25, ge=0, description="an online backup of the ledger (ledger.backup.sqlite) "
                                                           "after every this many finished experiments, and at the "
                                                           "end; 0: none")


class AgentSpec(Section):
    """An agent the campaign starts: its kind, its settings, its bus name and its resources."""

    prefix: ClassVar[str]  # entry-point names of this section's kinds start with it
    role: ClassVar[Role]

    kind: str = Field(description="an agent kind of this section (see `sdl agents`)")
    settings: Any = Field(default=None, description="the kind's own settings (validated by its Settings model)")
    name: ServiceName | None = Field(default=None, description="its service name on the bus (default: <section>.<kind>)")
    timeout_s: float | None = Field(default=None, gt=0,
                                    description="how long the campaign waits for one of its answers (default: the kind's)")
    num_cpus: float = Field(default=0.0, ge=0, description="CPUs Ray reserves for it (agents mostly wait)")
    num_gpus: float | Literal["auto"] | None = Field(
        default=None, description="GPUs Ray reserves for it; auto: one when the cluster has one free; default: the kind's")

    @model_validator(mode="before")
    @classmethod
    def _validate_settings(cls, data: Any) -> Any:
        kind = data.get("kind", cls.model_fields["kind"].default) if isinstance(data, dict) else None
        if not isinstance(kind, str):
            return data  # the field validators say what is missing
        name = cls.full_kind(kind)
        return {**data, "settings": validate_settings(agent_class(name, role=cls.role), data.get("settings"), name=name)}

    @classmethod
    def full_kind(cls, kind: str) -> str:
        return qualified(kind, cls.prefix)

    @property
    def agent_kind(self) -> str:
        """The kind's entry-point name, e.g. ``planner.bo``."""
        return self.full_kind(self.kind)

    @property
    def agent_class(self) -> type[AgentKind]:
        return agent_class(self.agent_kind)

    @property
    def service_name(self) -> str:
        return self.name or self.agent_kind

    @property
    def request_timeout_s(self) -> float:
        return self.agent_class.default_timeout_s if self.timeout_s is None else self.timeout_s

    @property
    def gpus(self) -> float | Literal["auto"]:
        return self.agent_class.default_num_gpus if self.num_gpus is None else self.num_gpus


class PlannerSpec(AgentSpec):
    prefix = "planner"
    role = "planner"


class ProcessPlannerSpec(AgentSpec):
    """The process planner: a heat-treatment route for every proposed composition."""

    prefix = "planner"
    role = "process_planner"
    kind: str = "process"


class SurrogateSpec(AgentSpec):
    prefix = "surrogate"
    role = "surrogate"


class SimulatorSpec(AgentSpec):
    prefix = "simulator"
    role = "simulator"


class InstrumentConfig(Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$", description="joins the bus as instrument.<name>")
    driver: str
    station: str = Field(default="measure", pattern=r"^[a-z][a-z0-9_]*$", description="its step in the workflow")
    host: Literal["ray", "external"] = Field(
        default="ray", description="ray: the campaign starts it as an actor; external: `sdl instrument serve`"
    )
    capacity: int = Field(default=1, ge=1, le=64, description="specimens it handles at once")
    key: str | None = Field(default=None, description="host external, on a bus with keys: the key its PC "
                                                      "authenticates with (default: its name)")
    timeout_s: float = Field(default=60.0, gt=0, description="per attempt, before a retry")
    retries: int = Field(default=2, ge=0, le=20)
    options: dict[str, Any] = Field(default_factory=dict, description="the driver's parameters")
    destructive: bool = Field(default=False, description="its actions change the specimen irreversibly (a real "
                                                         "furnace, a press): a command cut off mid-action is held")
    on_interrupted: Literal["fail", "rerun", "hold"] | None = Field(
        default=None, description="a command cut off mid-action (its state unknown): record it failed, run it "
                                  "once more, or hold it for an operator's `sdl decide` (default: hold if "
                                  "destructive, else rerun)")

    @property
    def service_name(self) -> str:
        return instrument_service(self.name)

    @property
    def interrupted_policy(self) -> Literal["fail", "rerun", "hold"]:
        if self.on_interrupted is not None:
            return self.on_interrupted
        return "hold" if self.destructive else "rerun"

    @property
    def process_limits(self) -> ProcessLimits | None:
        """The route limits the driver declares in its parameters (None if it runs no routes)."""
        limits = getattr(driver_parameters(self.driver, self.options), "limits", None)
        return limits if isinstance(limits, ProcessLimits) else None

    @property
    def composition_range(self) -> tuple[str, dict[str, tuple[float, float]]] | None:
        """(balance, free element -> (low, high)) the driver can model, if it declares one (a simulated
        furnace: its twin's CALPHAD table)."""
        declared = getattr(driver_parameters(self.driver, self.options), "composition_range", None)
        return declared() if callable(declared) else None

    @model_validator(mode="after")
    def _driver_options(self) -> InstrumentConfig:
        driver_parameters(self.driver, self.options)
        return self


class StopConfig(Section):
    max_experiments: int = Field(default=40, ge=1, description="budget: experiments finished, done or failed")
    max_in_flight: int = Field(default=4, ge=1, description="experiments dispatched and not yet finished")
    max_wall_s: float | None = Field(default=None, gt=0)


class CampaignConfig(Section):
    name: str = Field(default="campaign", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    seed: int = 0
    space: SearchSpace
    objective: ObjectiveConfig = ObjectiveConfig()
    process: list[ProcessStep] = Field(default_factory=list, description="heat-treatment route for every experiment")
    planner: PlannerSpec = Field(default_factory=lambda: PlannerSpec(kind="sobol"))
    process_planner: ProcessPlannerSpec | None = Field(
        default=None, description="ask planner.process for each experiment's route (instead of `process`)")
    process_design: list[DesignedHold] = Field(
        default_factory=list, description="holds of `process` whose temperature or duration each design point sets")
    surrogates: list[SurrogateSpec] = Field(default_factory=list, description="surrogate agents (gp, mlip, generative)")
    simulators: list[SimulatorSpec] = Field(
        default_factory=list, description="simulator agents (phase_boundary: P(feasible) from CALPHAD; test_function)")
    instruments: list[InstrumentConfig] = Field(min_length=1)
    workflow: list[str] = Field(
        default_factory=lambda: ["measure"],
        description="stations every specimen visits in order (e.g. melt, heat_treat, hardness, xrd)",
    )
    stop: StopConfig = StopConfig()
    bus: BusConfig = BusConfig()
    ray: RayConfig = RayConfig()
    ledger: LedgerConfig = LedgerConfig()
    campaign_dir: Path | None = Field(default=None, description="default: runs/<name>")

    @property
    def agents(self) -> list[AgentSpec]:
        """Every agent the campaign starts but the instruments, planner first."""
        return [self.planner, *([self.process_planner] if self.process_planner else []), *self.surrogates,
                *self.simulators]

    def agent_context(self) -> AgentContext:
        return AgentContext(space=self.space, objective=self.objective, seed=self.seed,
                            process_limits=ProcessLimits.tightest(
                                limits for i in self.instruments if (limits := i.process_limits) is not None))

    def provider(self, capability: str) -> AgentSpec | None:
        """The first agent that provides ``capability`` (feasibility, recommendation, truth), if any."""
        return next((a for a in self.agents if capability in a.agent_class.provides), None)

    @model_validator(mode="after")
    def _consistent(self) -> CampaignConfig:
        names = [i.name for i in self.instruments]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"instrument names must be unique; repeated: {duplicates}")
        services = [a.service_name for a in self.agents] + [i.service_name for i in self.instruments]
        repeated = sorted({s for s in services if services.count(s) > 1})
        if repeated:
            raise ValueError(f"service names must be unique; repeated: {repeated} (give one of them a `name`)")
        stations = {i.station for i in self.instruments}
        unserved = [s for s in self.workflow if s not in stations]
        if unserved:
            raise ValueError(f"workflow stations {unserved} have no instrument; instruments serve {sorted(stations)}")
        unused = sorted(stations - set(self.workflow))
        if unused:
            raise ValueError(f"instruments serve stations {unused} that are not in the workflow {self.workflow}")
        if self.process_planner is not None and self.process:
            raise ValueError("give either a fixed `process` route or a `process_planner`, not both")
        self._check_process_design()
        runs_routes = [i.name for i in self.instruments if i.process_limits is not None]
        if runs_routes and not self.process and self.process_planner is None:
            raise ValueError(f"instruments {runs_routes} run heat-treatment routes, and the campaign gives none: set "
                             "`process` (a fixed route) or `process_planner` (e.g. {kind: process})")
        extremes = self._extreme_routes() if self.process else []
        for instrument in self.instruments:  # a route is checked against every instrument that runs routes
            limits = instrument.process_limits
            if limits is not None:
                for route in extremes:
                    try:
                        limits.check(route, instrument=instrument.service_name)
                    except ValueError as e:
                        designed = " (at the ends of the designed ranges)" if self.process_design else ""
                        raise ValueError(f"process{designed}: {e}") from None
        for instrument in self.instruments:
            declared = instrument.composition_range
            if declared is not None and self.space.composition is not None:
                self._check_composition_range(instrument.name, *declared)
        context = self.agent_context()
        for agent in self.agents:
            cls = agent.agent_class
            try:
                cls.check(agent.settings, context)
            except ValueError as e:
                raise ValueError(f"{agent.service_name}: {e}") from None
            for call in cls.consults(agent.settings):
                if call.split(":")[0] not in services:
                    raise ValueError(f"{agent.service_name} consults {call.split(':')[0]}, which this campaign does not "
                                     f"start (services: {', '.join(sorted(services))})")
            for capability in sorted(cls.requires(agent.settings)):
                if self.provider(capability) is None:
                    raise ValueError(f"{agent.service_name} needs an agent that provides {capability!r}, and none "
                                     "does (e.g. simulators: [{kind: phase_boundary}] for feasibility)")
        return self

    def route_for(self, point: DesignPoint) -> tuple[ProcessStep, ...]:
        """The fixed ``process`` route with each designed hold set from ``point``'s parameters."""
        return designed_route(self.process, self.process_design, point)

    def _check_process_design(self) -> None:
        if not self.process_design:
            return
        if not self.process:
            raise ValueError("process_design sets holds of the `process` route: give that route (with a "
                             "process_planner, the planner decides every route)")
        steps = [h.step for h in self.process_design]
        if len(set(steps)) != len(steps):
            raise ValueError(f"process_design names a step more than once: {steps}")
        for hold in self.process_design:
            if hold.step > len(self.process):
                raise ValueError(f"process_design step {hold.step}: the process route has {len(self.process)} steps")
            for name in (hold.temperature_k, hold.duration):
                if name is not None and name not in self.space.parameters:
                    raise ValueError(f"process_design step {hold.step}: {name!r} is not a parameter of the space "
                                     f"(parameters: {', '.join(self.space.parameters) or 'none'})")

    def _extreme_routes(self) -> list[tuple[ProcessStep, ...]]:
        """The route at every corner of the designed parameters' ranges (the fixed route where none is
        designed): the hottest, coldest, longest and shortest a campaign can ask a furnace for."""
        ranges = {name: (p.low, p.high) for name, p in self.space.parameters.items()}
        return corner_routes(self.process, self.process_design, ranges)

    def _check_composition_range(self, name: str, balance: str, free: dict[str, tuple[float, float]]) -> None:
        comp = self.space.composition
        if comp.balance_element != balance or set(comp.free_elements) != set(free):
            raise ValueError(f"instrument {name} models {sorted(free)} with balance {balance}; the space designs "
                             f"{sorted(comp.free_elements)} with balance {comp.balance_element}")
        for e in sorted(free):
            lo, hi = comp.elements[e]
            if lo < free[e][0] - 1e-9 or hi > free[e][1] + 1e-9:
                raise ValueError(f"instrument {name} tabulates CALPHAD for {e} in [{free[e][0]}, {free[e][1]}]; the "
                                 f"space allows [{lo}, {hi}]: widen its twin.grid or narrow the space")

    def design_fingerprint(self) -> str:
        """Hash of what defines the experiments (space, objective, planners, seed, process, instruments,
        simulators). A resumed campaign must match it; stop rules, addresses, surrogates, where agents
        run and how long the campaign waits for them may change."""
        design = self.model_dump(mode="json", include={"seed", "space", "objective", "process", "process_planner",
                                                       "planner", "simulators", "instruments", "workflow"})
        design["objective"].pop("target", None)
        if self.process_design:  # only where given, so the fingerprints of campaigns without one stay as they were
            design["process_design"] = [h.model_dump(mode="json") for h in self.process_design]
        for agent in [design["planner"], design.get("process_planner"), *design["simulators"]]:
            for key in ("timeout_s", "num_cpus", "num_gpus"):
                (agent or {}).pop(key, None)
        for instrument in design["instruments"]:
            # not `host`: an instrument's journal is what answers for exactly-once, and it moves with the host
            for key in ("timeout_s", "retries", "destructive", "on_interrupted"):
                instrument.pop(key, None)
        return hashlib.sha256(json.dumps(design, sort_keys=True).encode()).hexdigest()[:16]


BUS_FILENAME = "bus.json"  # in the campaign directory: the bus's addresses and the campaign's pid


def journal_path(campaign_dir: str | Path, instrument: str) -> Path:
    """Where the journal of an instrument the campaign starts lives: with the campaign, so that a resumed
    campaign's restarted drivers (and `sdl ledger recover`) find what they executed."""
    return Path(campaign_dir) / "instruments" / f"{instrument}.sqlite"


def load_config(path: str | Path) -> CampaignConfig:
    return load_yaml(CampaignConfig, path)


def parse_config(data: Any, *, source: str = "config") -> CampaignConfig:
    return validate(CampaignConfig, data, source=source)
