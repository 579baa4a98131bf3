"""The campaign's documents: one pydantic type per kind of thing that happens, in the spirit of
bluesky's event-model (start, events, stop; one schema per document kind).

The ledger writes each document in the same transaction as the state change it describes, and
only then hands it to its subscriber (the campaign publishes it on the bus's event stream under
its ``kind``). Resume, ``sdl status``, reports and live views read these types, never free dicts.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter

from sdl.experiment import DesignPoint, ExperimentResult, ProcessStep
from sdl.wire import WireModel


class Document(WireModel):
    kind: str
    at_unix_s: float = Field(default_factory=time.time)

    def line(self) -> str:
        """One line for a person: the kind and what it is about (``sdl status``)."""
        about = [str(v) for k, v in self.model_dump(include=set(_ABOUT)).items() if v is not None]
        return " ".join([time.strftime("%H:%M:%S", time.localtime(self.at_unix_s)), self.kind, *about])


_ABOUT = ("experiment_id", "service", "instrument", "station", "code", "state", "reason", "decision", "by", "note",
          "key", "action")


# -- the campaign --------------------------------------------------------------------------------


class CampaignStarted(Document):
    kind: Literal["campaign.started"] = "campaign.started"
    campaign_id: str
    design_fingerprint: str


class CampaignResumed(Document):
    kind: Literal["campaign.resumed"] = "campaign.resumed"
    campaign_id: str
    counts: dict[str, int]


class CampaignStopped(Document):
    """Always written, whatever ended the run (bluesky's stop document)."""

    kind: Literal["campaign.stopped"] = "campaign.stopped"
    state: Literal["completed", "interrupted", "failed"]
    reason: str
    wall_s: float


class LedgerRecovered(Document):
    """``sdl ledger recover`` rebuilt the ledger: from what, and what the instruments' journals gave back."""

    kind: Literal["ledger.recovered"] = "ledger.recovered"
    source: Literal["ledger", "backup"]
    journals: list[str]
    results: int = Field(ge=0, description="experiments finished from a journal's outcome")
    replanned: int = Field(ge=0, description="experiments planned after the backup, re-planned from the journal")
    damaged_copy: str | None = Field(default=None, description="where the damaged ledger was moved")


class TargetReached(Document):
    kind: Literal["campaign.target_reached"] = "campaign.target_reached"
    best: float
    target: float


# -- experiments ---------------------------------------------------------------------------------


class ExperimentPlanned(Document):
    kind: Literal["experiment.planned"] = "experiment.planned"
    experiment_id: str
    seq: int
    point: DesignPoint
    process: list[ProcessStep]
    planner: str
    idempotency_key: str
    predicted: dict[str, float] = Field(default_factory=dict, description="what the planner expects of it")


class ExperimentDispatched(Document):
    kind: Literal["experiment.dispatched"] = "experiment.dispatched"
    experiment_id: str
    instrument: str
    dispatch_count: int = Field(ge=1, description="1, or more when a resumed campaign sent it again")


class ExperimentStep(Document):
    """One station of a multi-station workflow finished; the specimen moves on."""

    kind: Literal["experiment.step"] = "experiment.step"
    experiment_id: str
    step: int = Field(ge=0)
    station: str
    instrument: str
    result: ExperimentResult


class ExperimentDone(Document):
    kind: Literal["experiment.done"] = "experiment.done"
    experiment_id: str
    result: ExperimentResult


class ExperimentFailed(Document):
    kind: Literal["experiment.failed"] = "experiment.failed"
    experiment_id: str
    code: str
    message: str
    station: str | None = None


InterruptedPolicy = Literal["fail", "rerun", "hold"]


class ExperimentInterrupted(Document):
    """The instrument says an earlier attempt at this command was cut off mid-action: the specimen's
    state is unknown. The instrument's ``on_interrupted`` policy says what happens next."""

    kind: Literal["experiment.interrupted"] = "experiment.interrupted"
    experiment_id: str
    instrument: str
    station: str
    attempt: int = Field(ge=1, description="the attempt that was cut off")
    message: str
    policy: InterruptedPolicy


class ExperimentDecided(Document):
    """What to do with an interrupted experiment: run the command once more, or record it failed;
    decided by an operator (``sdl decide``) or by the instrument's policy."""

    kind: Literal["experiment.decided"] = "experiment.decided"
    experiment_id: str
    decision: Literal["rerun", "fail"]
    attempt: int = Field(ge=1, description="the interrupted attempt this decision is about")
    by: str = Field(min_length=1, description="who decided: an operator's name, or 'policy'")
    note: str = ""


# -- agents ------------------------------------------------------------------------------------


class AgentPlaced(Document):
    """Where Ray put an agent: the first question when a cluster misbehaves."""

    kind: Literal["agent.placed"] = "agent.placed"
    service: str
    node_id: str
    pid: int


class AgentJoined(Document):
    kind: Literal["agent.joined"] = "agent.joined"
    service: str
    worker: str
    key: str = Field(default="", description="the key it authenticated with (a bus with keys)")


class AgentLost(Document):
    kind: Literal["agent.lost"] = "agent.lost"
    service: str
    worker: str
    reason: str


class SecurityRefused(Document):
    """The broker refused a key something it is not granted (to serve, to call, to publish)."""

    kind: Literal["security.refused"] = "security.refused"
    key: str
    action: str


class PlannerFailed(Document):
    kind: Literal["planner.failed"] = "planner.failed"
    error: str


class FeasibilityLearned(Document):
    kind: Literal["feasibility.learned"] = "feasibility.learned"
    service: str
    calphad_calls: int
    seconds: float
    target: dict[str, Any] = Field(default_factory=dict)


class ModelTrained(Document):
    """A training round of a model served on the bus (e.g. the MLIP committee in active learning): on
    how many labelled results, how long, where its weights were saved (what a resumed campaign starts
    from)."""

    kind: Literal["model.trained"] = "model.trained"
    service: str
    round: int = Field(ge=0)
    n_train: int = Field(ge=1)
    train_s: float = Field(ge=0)
    final_loss: list[float] = Field(default_factory=list)
    checkpoint: str | None = None
    trust_level_ev_per_ang: float | None = None


class RouteFallback(Document):
    """The process planner handed out a route that is not its policy's, and why (ledgers before
    ``process.route_planned``; read, no longer written)."""

    kind: Literal["process.route_fallback"] = "process.route_fallback"
    experiment_id: str
    source: str
    note: str


class RoutePlanned(Document):
    """How the process planner chose an experiment's route: its source (policy, textbook, as_cast),
    the hardness it expects, the expected return of each option it compared, and why."""

    kind: Literal["process.route_planned"] = "process.route_planned"
    experiment_id: str
    source: str
    expected_hardness_hv: float | None = None
    expected_returns: dict[str, float] = Field(default_factory=dict)
    note: str = ""


AnyDocument = Annotated[
    Union[CampaignStarted, CampaignResumed, CampaignStopped, LedgerRecovered, TargetReached, ExperimentPlanned, ExperimentDispatched,
          ExperimentStep, ExperimentDone, ExperimentFailed, ExperimentInterrupted, ExperimentDecided, AgentPlaced,
          AgentJoined, AgentLost, SecurityRefused, PlannerFailed, FeasibilityLearned, ModelTrained, RouteFallback,
          RoutePlanned],
    Field(discriminator="kind"),
]
_DOCUMENT = TypeAdapter(AnyDocument)


def parse_document(data: dict[str, Any] | str | bytes) -> Document:
    """A document from its JSON (a ledger row, an event payload); ValueError names what is wrong."""
    if isinstance(data, (str, bytes)):
        return _DOCUMENT.validate_json(data)
    return _DOCUMENT.validate_python(data)
