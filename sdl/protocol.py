"""Every message that crosses the lab bus, as a pydantic v2 model.

The wire is two ZeroMQ frames: a header naming the peer's role (:data:`CLIENT_HEADER` or
:data:`WORKER_HEADER`) and a JSON body, one of the envelope models below, told apart by ``kind``.
Envelopes carry the protocol version, a unique ``id``, a ``correlation_id`` (a reply's is the id
of the request it answers) and the time they were sent. Hardware commands also carry an
``idempotency_key``: a driver that sees a key twice returns the first result instead of acting again.

Payload models (what a service's method takes and returns) live here too, so that a driver
written in another language needs only this module's JSON schema.

Validate once, at the edge: :func:`decode` and the payload models reject bad input with messages
that say what is allowed; code inside the controller trusts the types.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from typing import Annotated, Any, Literal, Union

from ase.data import chemical_symbols
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

PROTOCOL_VERSION = 1
CLIENT_HEADER = b"SDLC1"  # frames from clients (campaign, CLI)
WORKER_HEADER = b"SDLW1"  # frames from services (agents, instrument drivers)
MAX_FRAME_BYTES = 16 * 1024 * 1024

# Liveness (Majordomo's "paranoid pirate" heartbeating): peers beat every interval; a peer silent
# for LIVENESS intervals is dead. 1 s x 3 detects a dead service in about 3 s, inside the 5 s promise.
HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_LIVENESS = 3

# Fractions must sum to one within this tolerance (the contract for compositions).
COMPOSITION_SUM_TOLERANCE = 1e-6
KNOWN_ELEMENTS = frozenset(chemical_symbols[1:])  # chemical_symbols[0] is ASE's dummy "X"

ServiceName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_\-]*(\.[a-z0-9_\-]+)*$", max_length=128)]


class ProtocolError(ValueError):
    """A frame that is not a valid message: not JSON, unknown kind, or an invalid field."""


def new_id() -> str:
    return uuid.uuid4().hex


class _Model(BaseModel):
    # Non-finite floats travel as JSON's Infinity/NaN constants rather than silently becoming null.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


# ---------------------------------------------------------------------------------------------
# Domain payloads
# ---------------------------------------------------------------------------------------------


class Composition(RootModel[dict[str, float]]):
    """Mole fractions by element symbol; each in [0, 1], summing to 1 within 1e-6."""

    model_config = ConfigDict(frozen=True)

    @field_validator("root")
    @classmethod
    def _check(cls, fractions: dict[str, float]) -> dict[str, float]:
        if not fractions:
            raise ValueError("a composition needs at least one element")
        unknown = sorted(set(fractions) - KNOWN_ELEMENTS)
        if unknown:
            raise ValueError(
                f"unknown element symbol(s) {unknown}; use chemical symbols such as 'Ni', 'Al', 'Co'"
            )
        for element, fraction in fractions.items():
            if not math.isfinite(fraction) or not 0.0 <= fraction <= 1.0:
                raise ValueError(f"fraction of {element} is {fraction}; fractions must lie in [0, 1]")
        total = math.fsum(fractions.values())
        if abs(total - 1.0) > COMPOSITION_SUM_TOLERANCE:
            raise ValueError(
                f"fractions sum to {total:.9g}; they must sum to 1 within {COMPOSITION_SUM_TOLERANCE:g}"
            )
        return fractions

    def __getitem__(self, element: str) -> float:
        return self.root[element]


class ProcessStep(_Model):
    """One heat-treatment step. Units are in the field names.

    ``temperature_k`` takes kelvin as a number, or a string that names its unit ("1100 K",
    "827 °C", "827 C"), converted here at the boundary; a bare numeric string is refused as
    ambiguous, and so is a field spelled ``temperature`` or ``temperature_c``.
    """

    operation: Literal["homogenise", "solutionise", "age", "anneal", "quench"]
    temperature_k: float = Field(gt=0.0, le=4000.0, description="hold temperature in kelvin")
    duration_s: float = Field(ge=0.0, le=10 * 365 * 86400.0, description="hold time in seconds")
    ramp_k_per_s: float | None = Field(default=None, gt=0.0, description="heating/cooling rate")
    quench_medium: Literal["water", "oil", "air", "furnace"] | None = None

    @field_validator("temperature_k", mode="before")
    @classmethod
    def _temperature_with_unit(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        match = re.fullmatch(r"\s*([-+]?\d+(?:\.\d*)?)\s*(K|°C|C|degC)?\s*", value)
        if match is None or match.group(2) is None:
            raise ValueError(
                f"temperature {value!r} is ambiguous; give kelvin as a number, or a string with its unit: '1100 K' or '827 °C'"
            )
        number, unit = float(match.group(1)), match.group(2)
        return number if unit == "K" else number + 273.15


class DesignPoint(_Model):
    """Where in the design space an experiment sits: continuous parameters and/or a composition."""

    parameters: dict[str, float] = Field(default_factory=dict)
    composition: Composition | None = None

    @field_validator("parameters")
    @classmethod
    def _finite(cls, parameters: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in parameters.items() if not math.isfinite(v)}
        if bad:
            raise ValueError(f"parameters must be finite numbers; got {bad}")
        return parameters


class AtomicStructure(_Model):
    """An atomistic configuration (what a "DFT instrument" is asked to compute): element symbols,
    Cartesian positions and cell vectors (rows) in angstrom, periodic in all directions or none."""

    symbols: list[str] = Field(min_length=1, max_length=100000)
    positions_ang: list[tuple[float, float, float]]
    cell_ang: tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]] = (
        (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    periodic: bool = True

    @model_validator(mode="after")
    def _check(self) -> AtomicStructure:
        unknown = sorted(set(self.symbols) - KNOWN_ELEMENTS)
        if unknown:
            raise ValueError(f"unknown element symbol(s) {unknown}; use chemical symbols such as 'Ni', 'Cu'")
        if len(self.positions_ang) != len(self.symbols):
            raise ValueError(f"{len(self.symbols)} symbols but {len(self.positions_ang)} positions; give one per atom")
        if not all(math.isfinite(v) for row in (*self.positions_ang, *self.cell_ang) for v in row):
            raise ValueError("positions and cell must be finite numbers (angstrom)")
        if self.periodic:
            a, b, c = self.cell_ang
            volume = abs(a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
                         + a[2] * (b[0] * c[1] - b[1] * c[0]))
            if volume < 1e-6:
                raise ValueError("a periodic structure needs three linearly independent cell vectors (volume > 0)")
        return self

    @classmethod
    def from_atoms(cls, atoms) -> AtomicStructure:
        """From an ``ase.Atoms`` (all-periodic or non-periodic)."""
        pbc = [bool(p) for p in atoms.pbc]
        if any(pbc) and not all(pbc):
            raise ValueError(f"periodic boundary conditions must be all True or all False, got {pbc}")
        return cls(symbols=atoms.get_chemical_symbols(), positions_ang=atoms.positions.tolist(),
                   cell_ang=atoms.cell[:].tolist(), periodic=all(pbc))

    def to_atoms(self):
        from ase import Atoms

        return Atoms(symbols=self.symbols, positions=self.positions_ang, cell=self.cell_ang, pbc=self.periodic)


class ExperimentSpec(_Model):
    """What an instrument is asked to make or measure."""

    experiment_id: str = Field(min_length=1, max_length=128)
    campaign_id: str = Field(min_length=1, max_length=128)
    point: DesignPoint = Field(default_factory=DesignPoint)
    structure: AtomicStructure | None = Field(default=None, description="for atomistic instruments (DFT, MLIP)")
    process: list[ProcessStep] = Field(default_factory=list)
    station: str = Field(default="measure", description="the workflow step this command is for")
    specimen: dict[str, float] = Field(
        default_factory=dict, description="what earlier stations of the workflow measured on this specimen"
    )


class ExperimentResult(_Model):
    """What an instrument measured. ``replayed`` is true when served from its idempotency journal."""

    experiment_id: str
    instrument: str
    measurements: dict[str, float]
    started_at_unix_s: float
    finished_at_unix_s: float
    attempts: int = Field(default=1, ge=1)
    replayed: bool = False
    lab_time_s: float = Field(default=0.0, ge=0.0, description="time the specimen spent on the instrument (simulated time for simulated instruments)")
    arrays: dict[str, list[list[float]]] = Field(
        default_factory=dict, description="array-valued results, e.g. forces_ev_per_ang (atoms x 3)"
    )

    @field_validator("measurements")
    @classmethod
    def _finite(cls, measurements: dict[str, float]) -> dict[str, float]:
        bad = sorted(k for k, v in measurements.items() if not math.isfinite(v))
        if bad:
            raise ValueError(f"measurements {bad} are not finite; a driver reports a failed measurement as a fault")
        return measurements

    @field_validator("arrays")
    @classmethod
    def _finite_arrays(cls, arrays: dict[str, list[list[float]]]) -> dict[str, list[list[float]]]:
        bad = sorted(k for k, rows in arrays.items() if not all(math.isfinite(v) for row in rows for v in row))
        if bad:
            raise ValueError(f"arrays {bad} hold non-finite values; a driver reports a failed calculation as a fault")
        return arrays


class Observation(_Model):
    """A finished experiment as a planner sees it."""

    point: DesignPoint
    status: Literal["done", "failed"]
    measurements: dict[str, float] = Field(default_factory=dict)


class FeasibilityModel(_Model):
    """A learned P(target phase state | inputs) a planner evaluates (and differentiates) itself.

    Bayesian logistic regression on polynomial features (up to ``degree``) of the inputs scaled as
    (x - low) / span; the weights' posterior as a Gaussian (mean, covariance); P by the probit
    approximation. Inputs are element symbols (mole fractions) or process-parameter names.
    """

    inputs: list[str] = Field(min_length=1)
    low: list[float]
    span: list[float]
    degree: int = Field(ge=1, le=6)
    weight_mean: list[float]
    weight_covariance: list[list[float]]
    calphad_calls: int = Field(ge=0)
    target: dict[str, Any] = Field(default_factory=dict, description="the phase state the classifier predicts")

    @model_validator(mode="after")
    def _shapes(self) -> FeasibilityModel:
        k = len(self.inputs)
        if len(self.low) != k or len(self.span) != k or any(s <= 0 for s in self.span):
            raise ValueError(f"low and span need {k} entries each (span > 0)")
        n = math.comb(k + self.degree, self.degree)  # polynomial terms up to the degree, constant included
        if len(self.weight_mean) != n or len(self.weight_covariance) != n or any(len(r) != n for r in self.weight_covariance):
            raise ValueError(f"{k} inputs at degree {self.degree} need {n} weights and an {n} x {n} covariance")
        return self


class FeasibilityRequest(_Model):
    calphad_calls: int | None = Field(default=None, ge=1, description="learn until this many (default: configured)")


class ProposeRequest(_Model):
    n: int = Field(ge=1, le=10_000)
    observations: list[Observation] = Field(default_factory=list)
    pending: list[DesignPoint] = Field(default_factory=list)
    feasibility: FeasibilityModel | None = Field(default=None, description="for planners that weigh by P(feasible)")


class Proposal(_Model):
    points: list[DesignPoint]
    planner: str
    planner_seconds: float = Field(ge=0.0)
    predicted: list[dict[str, float]] = Field(
        default_factory=list, description="per point, what the planner expects (e.g. hardness_hv, hardness_hv_std)")


class RouteLimits(_Model):
    """What a furnace can do; a process planner refuses to hand out a route outside it."""

    min_temperature_k: float = Field(default=900.0, gt=0.0)
    max_temperature_k: float = Field(default=1500.0, gt=0.0)
    max_duration_s: float = Field(default=7 * 86400.0, gt=0.0, description="per step")
    max_steps: int = Field(default=8, ge=1)

    def check(self, steps: list[ProcessStep]) -> None:
        """Raise ValueError naming the first step outside the limits."""
        holds = [s for s in steps if s.operation != "quench"]
        if len(holds) > self.max_steps:
            raise ValueError(f"route has {len(holds)} holds; the limit is {self.max_steps}")
        for i, step in enumerate(steps, 1):
            if step.operation != "quench":
                self.check_step(step, number=i)

    def check_step(self, step: ProcessStep, *, number: int = 1) -> None:
        """Raise ValueError if this one hold is outside the temperature range or too long."""
        if not self.min_temperature_k <= step.temperature_k <= self.max_temperature_k:
            raise ValueError(f"step {number} ({step.operation}) at {step.temperature_k} K is outside the furnace's "
                             f"{self.min_temperature_k}-{self.max_temperature_k} K")
        if step.duration_s > self.max_duration_s:
            raise ValueError(f"step {number} ({step.operation}) lasts {step.duration_s} s; the furnace allows at most "
                             f"{self.max_duration_s} s")


class RouteRequest(_Model):
    """Ask the process planner how to heat-treat an alloy."""

    composition: Composition


class Route(_Model):
    """A heat-treatment route for one composition, and where it came from."""

    steps: list[ProcessStep] = Field(min_length=1)
    source: Literal["policy", "textbook"]
    expected_hardness_hv: float | None = None
    note: str = ""


class RunExperiment(_Model):
    experiment: ExperimentSpec


class ServiceDescription(_Model):
    kind: str
    methods: list[str]
    details: dict[str, Any] = Field(default_factory=dict)


class FitRequest(_Model):
    observations: list[Observation]
    objective: str
    direction: Literal["minimize", "maximize"] = "minimize"


class FitSummary(_Model):
    n_train: int
    recommended: DesignPoint | None
    recommended_mean: float | None
    recommended_std: float | None


class PredictRequest(_Model):
    points: list[DesignPoint] = Field(min_length=1)


class Prediction(_Model):
    mean: list[float]
    std: list[float]


class EvaluateRequest(_Model):
    points: list[DesignPoint] = Field(min_length=1)


class Evaluation(_Model):
    values: list[dict[str, float]]


class Empty(_Model):
    pass


# ---------------------------------------------------------------------------------------------
# Envelopes
# ---------------------------------------------------------------------------------------------

ErrorCode = Literal[
    "bad_message",  # the frame did not decode or failed validation
    "unknown_method",  # the service has no such method
    "invalid_payload",  # the payload failed the method's model
    "missing_idempotency_key",  # a hardware command came without one
    "handler_error",  # the service's own code raised
    "instrument_fault",  # the instrument reported a fault (trip, lost specimen, offline)
    "service_unavailable",  # no worker took the request before its deadline
    "worker_lost",  # the worker died (heartbeats stopped) while holding the request
    "timeout",  # no reply before the caller's deadline (set by the client, never sent on the wire)
]


class ErrorInfo(_Model):
    code: ErrorCode
    message: str


class _Envelope(_Model):
    version: Literal[1] = PROTOCOL_VERSION
    id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    correlation_id: str | None = Field(default=None, max_length=64)
    sent_at_unix_s: float = Field(default_factory=time.time)


class Request(_Envelope):
    kind: Literal["request"] = "request"
    service: ServiceName
    method: str = Field(pattern=r"^[a-z_][a-z0-9_]*$", max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)
    timeout_ms: int = Field(default=30_000, gt=0, le=7 * 86_400_000)
    attempt: int = Field(default=1, ge=1)


class Reply(_Envelope):
    kind: Literal["reply"] = "reply"
    service: str = ""
    ok: bool
    payload: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    worker: str | None = None

    @model_validator(mode="after")
    def _error_iff_not_ok(self) -> Reply:
        if self.ok == (self.error is not None):
            raise ValueError("a reply carries an error exactly when ok is false")
        return self


class Ready(_Envelope):
    """A worker announces itself: the service it serves and how many requests it takes at once."""

    kind: Literal["ready"] = "ready"
    service: ServiceName
    worker: str = Field(min_length=1, max_length=128)
    capacity: int = Field(default=1, ge=1, le=1024)


class Heartbeat(_Envelope):
    kind: Literal["heartbeat"] = "heartbeat"


class Disconnect(_Envelope):
    kind: Literal["disconnect"] = "disconnect"
    reason: str = ""


class Event(_Envelope):
    """A document on the event stream (bluesky style): a topic and a small payload."""

    kind: Literal["event"] = "event"
    topic: str = Field(pattern=r"^[a-z][a-z0-9_.\-]*$", max_length=128)
    payload: dict[str, Any] = Field(default_factory=dict)


Message = Annotated[
    Union[Request, Reply, Ready, Heartbeat, Disconnect, Event], Field(discriminator="kind")
]
_MESSAGE = TypeAdapter(Message)
MESSAGE_KINDS = ("request", "reply", "ready", "heartbeat", "disconnect", "event")


def encode(message: _Envelope) -> bytes:
    return message.model_dump_json().encode()


def decode(frame: bytes) -> Request | Reply | Ready | Heartbeat | Disconnect | Event:
    """Parse one body frame; raise :class:`ProtocolError` saying what is wrong and what is allowed."""
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    try:
        return _MESSAGE.validate_json(frame)  # fast path (pydantic-core parses the JSON itself)
    except ValidationError:
        pass  # explain below what is wrong, step by step
    try:
        data = json.loads(frame)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"body is not UTF-8 JSON: {e}") from e
    if not isinstance(data, dict):
        raise ProtocolError(f"body must be a JSON object, got {type(data).__name__}")
    kind = data.get("kind")
    if kind not in MESSAGE_KINDS:
        raise ProtocolError(f"unknown message kind {kind!r}; allowed: {', '.join(MESSAGE_KINDS)}")
    version = data.get("version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r} is not supported; this bus speaks {PROTOCOL_VERSION}")
    try:
        return _MESSAGE.validate_python(data)
    except ValidationError as e:
        raise ProtocolError(f"invalid {kind} message: {describe_validation_error(e)}") from e
    except RecursionError as e:
        raise ProtocolError("message nests too deeply") from e


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem: where it is and what was wrong."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "(root)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def error_reply(request_id: str | None, code: str, message: str, *, service: str = "") -> Reply:
    return Reply(correlation_id=request_id, service=service, ok=False, error=ErrorInfo(code=code, message=message))


# -- the MLIP surrogate (surrogate.mlip) ---------------------------------------------------------


class LabelledStructure(_Model):
    """A structure with what an oracle computed for it (the MLIP's training data)."""

    structure: AtomicStructure
    energy_ev: float
    forces_ev_per_ang: list[tuple[float, float, float]]
    stress_ev_per_ang3: tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]] | None = None

    @model_validator(mode="after")
    def _check(self) -> LabelledStructure:
        if len(self.forces_ev_per_ang) != len(self.structure.symbols):
            raise ValueError(f"{len(self.forces_ev_per_ang)} force vectors for {len(self.structure.symbols)} atoms")
        values = [self.energy_ev, *(v for f in self.forces_ev_per_ang for v in f),
                  *(v for row in (self.stress_ev_per_ang3 or ()) for v in row)]
        if not all(math.isfinite(v) for v in values):
            raise ValueError("energy, forces and stress must be finite")
        return self

    def to_atoms(self):
        """``ase.Atoms`` with these labels attached (a SinglePointCalculator), as training data."""
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.stress import full_3x3_to_voigt_6_stress

        atoms = self.structure.to_atoms()
        results: dict[str, Any] = {"energy": self.energy_ev, "forces": self.forces_ev_per_ang}
        if self.stress_ev_per_ang3 is not None:
            results["stress"] = full_3x3_to_voigt_6_stress(self.stress_ev_per_ang3)
        atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms


class MlipTrainRequest(_Model):
    structures: list[LabelledStructure] = Field(min_length=1)
    epochs: int | None = Field(default=None, ge=1, le=100000, description="default: the agent's training settings")
    warm_start: bool = Field(default=False, description="continue from the current weights and normalisation")


class MlipTrainSummary(_Model):
    n_train: int
    train_s: float
    device: str
    final_loss: list[float]


class MlipPredictRequest(_Model):
    structures: list[AtomicStructure] = Field(min_length=1)
    stress: bool = False


class MlipPrediction(_Model):
    """Committee mean and spread per structure; forces per atom."""

    energy_ev: list[float]
    energy_std_ev: list[float]
    forces_ev_per_ang: list[list[tuple[float, float, float]]]
    max_force_std_ev_per_ang: list[float] = Field(description="largest per-atom committee force spread")
    stress_ev_per_ang3: list[list[list[float]]] | None = None


# -- the generative surrogate (surrogate.generative) ---------------------------------------------


class GenerateRequest(_Model):
    """Alloys with these target conditions (e.g. hardness_hv: 280, feasible: 1)."""

    target: dict[str, float] = Field(min_length=1, description="a value for every condition the model was trained on")
    n: int = Field(default=16, ge=1, le=100_000)
    seed: int = 0


class GeneratedCompositions(_Model):
    points: list[DesignPoint]
    conditions: list[str]


class MicrostructureRequest(_Model):
    """Two-phase fields with a given second-phase fraction, or the one CALPHAD predicts for an alloy at a temperature."""

    fraction: float | None = Field(default=None, gt=0.0, lt=1.0)
    composition: Composition | None = None
    temperature_k: float | None = Field(default=None, gt=0.0, description="with composition: where to ask CALPHAD")
    n: int = Field(default=1, ge=1, le=64)
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> MicrostructureRequest:
        if (self.fraction is None) == (self.composition is None):
            raise ValueError("give either fraction or composition (with temperature_k)")
        if self.composition is not None and self.temperature_k is None:
            raise ValueError("a composition needs temperature_k: the fraction is CALPHAD's gamma-prime there")
        return self


class MicrostructureFields(_Model):
    fraction: float = Field(description="second-phase (gamma-prime) area fraction every field has exactly")
    fields: list[list[list[float]]] = Field(description="n fields, rows x columns, density in [0, 1]")
