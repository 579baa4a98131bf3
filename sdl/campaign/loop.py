"""The closed loop: plan, dispatch to instruments, record, repeat until a stop rule fires.

One thread drives everything through an asynchronous bus client, keeping up to ``max_in_flight``
experiments moving through the workflow's stations. The ledger is written before anything acts on a
transition: an experiment is recorded ``planned`` before it is dispatched, ``dispatched`` before the
command leaves, and each station's result is committed before the specimen moves on; every
document is published on the event stream only after its commit. A campaign killed at any instant
is resumed with ``resume=True``: planned experiments are dispatched, dispatched ones are sent again
with the same idempotency key to the same instrument (whose journal returns the result if it
already ran), from the first station whose result was not committed, and nothing finished is redone.
A command the instrument reports cut off mid-action (``interrupted``: its process died while acting)
is recorded so and handled by the instrument's ``on_interrupted``: failed, rerun once more, or held
until an operator's ``sdl decide`` lands in the ledger.

The loop stops at the budget, the objective's target, the wall-time limit, or when the planner has
nothing to propose and nothing is in flight (``planner_exhausted``: a finite design, say); a planner
that proposes nothing while results are coming is asked again after the next one.

Ray placement lives in :mod:`.launcher`, station scheduling in :mod:`.scheduler`; this module holds
only the loop. Ctrl-C (or SIGTERM) stops planning and waits for the experiments in flight; a second
Ctrl-C leaves at once, and the next ``--resume`` reconciles what was in flight.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from tqdm import tqdm

from sdl.agents.capabilities import EvaluateRequest, FeasibilityModel, FeasibilityRequest, FitRequest, FitSummary
from sdl.agents.instrument_driver import RunExperiment
from sdl.agents.planner import Proposal, ProposeRequest
from sdl.agents.process_planner import RouteRequest, Routes
from sdl.bus import (
    RETRYABLE,
    Broker,
    BusClient,
    BusError,
    CallOutcome,
    EventSubscriber,
    Grant,
    KeyRingError,
    RemoteError,
    ServiceDescription,
    Trust,
)
from sdl.bus.keys import BROKER_KEY
from sdl.campaign.config import BUS_FILENAME, CampaignConfig, InstrumentConfig
from sdl.campaign.launcher import Launcher, LaunchError
from sdl.campaign.scheduler import Flight, Scheduler
from sdl.experiment import DesignPoint, ExperimentResult, ExperimentSpec, Observation, ProcessStep
from sdl.ledger import BACKUP_FILENAME, ExperimentRecord, Ledger, PlannedExperiment
from sdl.ledger.documents import (
    AgentJoined,
    AgentLost,
    CampaignResumed,
    CampaignStarted,
    CampaignStopped,
    Document,
    ExperimentDecided,
    ExperimentInterrupted,
    FeasibilityLearned,
    PlannerFailed,
    RoutePlanned,
    SecurityRefused,
    TargetReached,
)
from sdl.wire import ErrorCode, ErrorInfo

log = logging.getLogger(__name__)

# After this many planner failures in a row the campaign gives up (a restart takes a few).
MAX_PLANNER_FAILURES = 20
# How often a campaign with held experiments looks in its ledger for an operator's decision.
DECISION_POLL_S = 1.0


class CampaignError(RuntimeError):
    """The campaign cannot start or go on (wrong directory, mismatched resume, agents missing)."""


@dataclass
class CampaignSummary:
    campaign_id: str
    state: str
    stop_reason: str
    counts: dict[str, int]
    best_value: float | None
    best_point: DesignPoint | None
    wall_s: float


@dataclass
class _Stop:
    """Set by signal handlers; read by the loop."""

    graceful: threading.Event = field(default_factory=threading.Event)
    immediate: threading.Event = field(default_factory=threading.Event)


class Campaign:
    def __init__(self, config: CampaignConfig, campaign_dir: str | Path | None = None, *, resume: bool = False,
                 ray_address: str | None = None, progress: bool = True) -> None:
        self.config = config
        self.campaign_dir = Path(campaign_dir or config.campaign_dir or Path("runs") / config.name)
        self.resume = resume
        self.progress = progress
        self.stop = _Stop()
        self.launcher = Launcher(config, self.campaign_dir,
                                 ray_address=ray_address if ray_address is not None else config.ray.address)
        self.broker: Broker | None = None
        self.campaign_id = ""
        self._feasibility: FeasibilityModel | None = None
        # who serves P(feasible), if the planner weighs by it (entry points are looked up once, not per plan)
        planner = config.planner
        self._feasibility_provider = (config.provider("feasibility")
                                      if "feasibility" in planner.agent_class.requires(planner.settings) else None)
        self._route_sources: set[str] = set()
        self._next_number = 0  # of the next experiment id (e00042), after the highest in the ledger

    @property
    def actors(self) -> dict[str, Any]:
        return self.launcher.actors

    # -- public --------------------------------------------------------------------------------

    def run(self) -> CampaignSummary:
        started = time.monotonic()
        ledger = self._open_ledger()
        client: BusClient | None = None
        bus_events: EventSubscriber | None = None
        state, reason = "failed", "error"
        try:
            with _signals(self.stop):
                trust = _trust(self.config)
                self.broker = Broker(self.config.bus.frontend, self.config.bus.events, trust=trust).start()
                client = BusClient(self.broker.local_address)
                ledger.on_commit = _publisher(client)
                self._record_start(ledger)
                # The ledger follows the broker's own events (services joining, lost), bluesky style.
                bus_events = EventSubscriber(self.broker.local_events_address, topics=("bus.",))
                self.launcher.start_ray()
                address = self.launcher.advertised(self.broker.frontend_address)
                (self.campaign_dir / BUS_FILENAME).write_text(json.dumps(
                    {"frontend": address, "events": self.launcher.advertised(self.broker.events_address),
                     "pid": os.getpid()}))
                log.info("campaign %s: bus on %s", self.campaign_id, address)
                self.launcher.spawn_all(address, trust)
                self.launcher.wait_for_services(self.broker, self.stop.graceful)
                ledger.record(*self.launcher.placements())
                reason = self._loop(ledger, client, bus_events)
            state = "interrupted" if reason in ("interrupted", "held") else "completed"
            if state == "completed":
                self._recommend(ledger, client)
            return self._summary(ledger, state, reason, started)
        except LaunchError as e:
            reason = f"error: {e}"
            raise CampaignError(str(e)) from e
        except Exception as e:
            reason = f"error: {e}"
            raise
        finally:
            wall_s = time.monotonic() - started
            ledger.set_meta(state=state, stop_reason=reason, finished_at_unix_s=time.time(),
                            wall_s=ledger.get_meta("wall_s", 0.0) + wall_s)
            if bus_events is not None:
                _record_bus_events(ledger, bus_events)
                bus_events.close()
            ledger.record(CampaignStopped(state=state, reason=reason, wall_s=wall_s))
            if self.config.ledger.backup_every:
                ledger.backup(self.campaign_dir / BACKUP_FILENAME)
            if client is not None:
                client.close()
            if self.broker is not None:
                self.broker.stop()  # before the agents go: it says goodbye instead of finding them gone
            self.launcher.shutdown()
            ledger.close()

    # -- setup ---------------------------------------------------------------------------------

    def _open_ledger(self) -> Ledger:
        exists = Ledger.exists_in(self.campaign_dir)
        if exists and not self.resume:
            raise CampaignError(f"{self.campaign_dir} already holds a campaign; pass --resume to continue it or "
                                "choose another --campaign-dir")
        if self.resume and not exists:
            raise CampaignError(f"nothing to resume: no ledger in {self.campaign_dir}")
        ledger = Ledger.in_campaign(self.campaign_dir, synchronous=self.config.ledger.synchronous)
        fingerprint = self.config.design_fingerprint()
        if exists:
            recorded = ledger.get_meta("design_fingerprint")
            if recorded != fingerprint:
                ledger.close()
                raise CampaignError(
                    "this config designs different experiments than the campaign being resumed "
                    f"(fingerprint {fingerprint} vs {recorded}); only stop rules, bus, ray, surrogates and ledger "
                    "settings may change")
            self.campaign_id = ledger.get_meta("campaign_id")
        else:
            self.campaign_id = f"{self.config.name}-{uuid.uuid4().hex[:8]}"
            ledger.set_meta(campaign_id=self.campaign_id, design_fingerprint=fingerprint, created_at_unix_s=time.time())
        ledger.set_meta(state="running", config=self.config.model_dump(mode="json"))
        return ledger

    def _record_start(self, ledger: Ledger) -> None:
        if self.resume:
            ledger.record(CampaignResumed(campaign_id=self.campaign_id, counts=ledger.counts()))
        else:
            ledger.record(CampaignStarted(campaign_id=self.campaign_id,
                                          design_fingerprint=self.config.design_fingerprint()))

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self, ledger: Ledger, client: BusClient, bus_events: EventSubscriber) -> str:
        cfg = self.config
        budget = cfg.stop.max_experiments
        scheduler = Scheduler(cfg.workflow, cfg.instruments)
        if scheduler.resume(ledger):
            log.info("reconciling %d experiments left planned or dispatched", scheduler.occupied)
        observations = [_observation(r) for r in ledger.experiments(("done", "failed"))]
        n_planned = sum(ledger.counts().values())
        self._next_number = _next_number(ledger)
        best = cfg.objective.best(_values(observations, cfg.objective.measurement))
        reason: str | None = None
        planner_failures = 0
        planner_waits = False  # its last proposal was empty: ask again once a result is in
        started = time.monotonic()
        decisions_checked = 0.0
        bar = tqdm(total=budget, initial=len(observations), desc=cfg.name, unit="exp", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            while True:
                if self.stop.immediate.is_set():
                    return "interrupted"
                reason = reason or self._stop_reason(started)
                finished: list[Observation] = []
                if scheduler.held and time.monotonic() - decisions_checked > DECISION_POLL_S:
                    decisions_checked = time.monotonic()  # an operator's `sdl decide` lands in the ledger
                    finished += self._apply_decisions(ledger, scheduler)
                # Plan just enough to keep max_in_flight specimens moving through the workflow.
                free_slots = min(cfg.stop.max_in_flight - scheduler.occupied, budget - n_planned)
                if reason is None and free_slots > 0 and not planner_waits:
                    try:
                        planned = self._plan(ledger, client, free_slots, observations,
                                             scheduler.pending_points())
                        planner_failures = 0
                        # a planner may propose nothing until results come in (e.g. its initial design is
                        # all out): ask again after the next result, and stop if none is coming
                        planner_waits = not planned
                        if not planned and not scheduler.occupied and not scheduler.held:
                            reason = "planner_exhausted"
                    except BusError as e:
                        planner_failures = self._planner_failed(ledger, e, planner_failures)
                        planned = []
                    n_planned += len(planned)
                    scheduler.add(planned)
                if reason != "interrupted":  # dispatch while instruments have room
                    for flight, instrument in scheduler.dispatchable():
                        self._dispatch(ledger, client, scheduler, flight, instrument)
                if not scheduler.in_flight and (reason is not None or (n_planned >= budget and not scheduler.waiting)):
                    if scheduler.held and reason is None:
                        log.warning("%d interrupted experiments await a decision: %s", len(scheduler.held),
                                    f"sdl decide {self.campaign_dir} EXPERIMENT_ID rerun|fail --by NAME, then --resume")
                        return "held"
                    return reason or "budget"
                _record_bus_events(ledger, bus_events)
                for outcome in client.poll(timeout_s=0.1):
                    flight = scheduler.finish(outcome.tag)
                    if flight is None:
                        continue
                    if outcome.ok and not scheduler.is_last_station(flight) and self._advance(ledger, scheduler, flight,
                                                                                             outcome):
                        continue
                    if not outcome.ok and outcome.error.code == ErrorCode.INTERRUPTED:
                        finished += self._interrupted(ledger, scheduler, flight, outcome.error)
                        continue
                    finished.append(self._record(ledger, scheduler, flight, outcome))
                planner_waits = planner_waits and not finished
                for observation in finished:
                    observations.append(observation)
                    if cfg.ledger.backup_every and len(observations) % cfg.ledger.backup_every == 0:
                        ledger.backup(self.campaign_dir / BACKUP_FILENAME)
                    bar.update(1)
                    value = observation.measurements.get(cfg.objective.measurement)
                    improved = value is not None and (best is None or cfg.objective.better(value, best))
                    if observation.status == "done" and improved:
                        best = value
                        bar.set_postfix({"best": f"{best:.4g}"})
                    if reason is None and best is not None and cfg.objective.reached(best):
                        reason = "target"
                        ledger.record(TargetReached(best=best, target=cfg.objective.target))
        finally:
            bar.close()

    def _stop_reason(self, started: float) -> str | None:
        if self.stop.graceful.is_set():
            return "interrupted"
        if self.config.stop.max_wall_s and time.monotonic() - started > self.config.stop.max_wall_s:
            return "wall_time"
        return None

    def _planner_failed(self, ledger: Ledger, error: BusError, failures: int) -> int:
        if isinstance(error, RemoteError) and error.code not in RETRYABLE:
            # An agent's own error (the planner's, the process planner's) will not go away by asking again.
            raise CampaignError(f"cannot plan the next experiments: {error}") from error
        failures += 1
        log.warning("planner failed (%d in a row): %s", failures, error)
        ledger.record(PlannerFailed(error=str(error)))
        if failures >= MAX_PLANNER_FAILURES:
            raise CampaignError(f"planner failed {failures} times in a row: {error}") from error
        return failures

    def _plan(self, ledger: Ledger, client: BusClient, n: int, observations: list[Observation],
              pending: list[DesignPoint]) -> list[ExperimentRecord]:
        planner = self.config.planner
        proposal = Proposal.model_validate(client.request(
            planner.service_name, "propose",
            ProposeRequest(n=n, observations=observations, pending=pending,
                           feasibility=self._feasibility_model(ledger, client)),
            timeout_s=planner.request_timeout_s, retries=2))
        points = proposal.points[:n]
        for point in points:
            try:
                self.config.space.check(point)  # a planner bug must not reach an instrument
            except ValueError as e:
                raise CampaignError(f"planner {proposal.planner} proposed a point outside the space: {e}") from e
        ids = [f"e{self._next_number + i:05d}" for i in range(len(points))]
        routes, route_notes = self._routes(client, points, ids)
        predicted = proposal.predicted + [{}] * (len(points) - len(proposal.predicted))
        records = ledger.plan((PlannedExperiment(experiment_id=i, point=p, process=r, planner=proposal.planner,
                                                 idempotency_key=f"{self.campaign_id}:{i}", predicted=e)
                               for i, p, r, e in zip(ids, points, routes, predicted)),
                              notes=[*proposal.trained, *route_notes])  # a training round is recorded with what it chose
        self._next_number += len(records)
        return records

    def _routes(self, client: BusClient, points: list[DesignPoint],
                ids: list[str]) -> tuple[list[tuple[ProcessStep, ...]], list[RoutePlanned]]:
        """The configured route for each point (fixed, or with holds the point designs), or the process
        planner's, asked for the batch at once; and, for the planner's, a document per route saying how it
        was chosen."""
        spec = self.config.process_planner
        if spec is None:
            return [self.config.route_for(p) for p in points], []
        answer = Routes.model_validate(client.request(
            spec.service_name, "route", RouteRequest(compositions=[p.composition for p in points]),
            timeout_s=spec.request_timeout_s, retries=2))
        if len(answer.routes) != len(points):
            raise CampaignError(f"{spec.service_name} answered {len(answer.routes)} routes for {len(points)} alloys")
        planned = []
        for experiment_id, route in zip(ids, answer.routes):
            if route.source not in self._route_sources:  # the log says each source once; the ledger every time
                self._route_sources.add(route.source)
                log.info("process planner: first %s route (%s): %s", route.source, experiment_id, route.note)
            planned.append(RoutePlanned(experiment_id=experiment_id, source=route.source,
                                        expected_hardness_hv=route.expected_hardness_hv,
                                        expected_returns=route.expected_returns, note=route.note))
        return [tuple(route.steps) for route in answer.routes], planned

    def _feasibility_model(self, ledger: Ledger, client: BusClient) -> FeasibilityModel | None:
        """P(feasible) for a planner that needs it, asked of the agent that provides it once (it learns
        on the first request)."""
        provider = self._feasibility_provider
        if provider is None:
            return None
        if self._feasibility is None:
            log.info("asking %s for the feasibility model", provider.service_name)
            started = time.monotonic()
            self._feasibility = FeasibilityModel.model_validate(client.request(
                provider.service_name, "feasibility", FeasibilityRequest(), timeout_s=provider.request_timeout_s,
                retries=1))
            ledger.record(FeasibilityLearned(service=provider.service_name,
                                             calphad_calls=self._feasibility.calphad_calls,
                                             seconds=time.monotonic() - started, target=self._feasibility.target))
        return self._feasibility

    def _dispatch(self, ledger: Ledger, client: BusClient, scheduler: Scheduler, flight: Flight,
                  instrument: InstrumentConfig) -> None:
        record = flight.record
        ledger.mark_dispatched(record.experiment_id, instrument.service_name)
        spec = ExperimentSpec(experiment_id=record.experiment_id, campaign_id=self.campaign_id, point=record.point,
                              structure=record.point.structure, process=list(record.process),
                              station=scheduler.station(flight), specimen=flight.specimen)
        client.submit(instrument.service_name, "run", RunExperiment(experiment=spec, rerun_attempt=flight.rerun_attempt),
                      timeout_s=instrument.timeout_s, retries=instrument.retries,
                      idempotency_key=scheduler.step_key(flight), tag=record.experiment_id)

    def _advance(self, ledger: Ledger, scheduler: Scheduler, flight: Flight, outcome: CallOutcome) -> bool:
        """Commit one station's result and queue the specimen for its next station (False: the reply was bad)."""
        try:
            result = ExperimentResult.model_validate(outcome.payload)
        except ValidationError:
            return False  # recorded as a failure by the caller
        ledger.record_step(flight.experiment_id, step=flight.step, station=scheduler.station(flight),
                           instrument=outcome.service, result=result)
        scheduler.advance(flight, result)
        return True

    def _record(self, ledger: Ledger, scheduler: Scheduler, flight: Flight, outcome: CallOutcome) -> Observation:
        """Commit the experiment's outcome (the ledger then publishes it); return what the planner will see."""
        record = flight.record
        error = outcome.error
        if outcome.ok:
            try:
                last = ExperimentResult.model_validate(outcome.payload)
            except ValidationError as e:
                error = ErrorInfo(code=ErrorCode.BAD_MESSAGE,
                                  message=f"instrument reply is not a result: {e.errors()[0]['msg']}")
            else:
                result = flight.combined(last)
                ledger.record_result(record.experiment_id, result)
                return Observation(point=record.point, status="done", measurements=result.measurements,
                                   arrays=result.arrays)
        station = scheduler.station(flight)
        message = error.message if len(self.config.workflow) == 1 else f"at station {station}: {error.message}"
        ledger.record_failure(record.experiment_id, error.code, message, station=station)
        log.info("experiment %s failed [%s]: %s", record.experiment_id, error.code, message)
        return Observation(point=record.point, status="failed")

    # -- interrupted commands ------------------------------------------------------------------

    def _interrupted(self, ledger: Ledger, scheduler: Scheduler, flight: Flight,
                     error: ErrorInfo) -> list[Observation]:
        """The instrument cannot say what a cut-off attempt did: record it, then apply its ``on_interrupted``."""
        instrument = next(i for i in self.config.instruments if i.name == flight.instrument)
        policy = instrument.interrupted_policy
        interruption = ExperimentInterrupted(
            experiment_id=flight.experiment_id, instrument=instrument.service_name, station=scheduler.station(flight),
            attempt=error.attempt or 1, message=error.message, policy=policy)
        ledger.interrupt(interruption)
        if policy == "hold":
            log.warning("experiment %s held: %s; decide with: sdl decide %s %s rerun|fail --by NAME",
                        flight.experiment_id, error.message, self.campaign_dir, flight.experiment_id)
            scheduler.hold(flight)
            return []
        decided = ledger.decide(flight.experiment_id, policy, by="policy",
                                note=f"{instrument.name}: on_interrupted={policy}")
        return self._apply_decision(ledger, scheduler, flight, interruption, decided)

    def _apply_decisions(self, ledger: Ledger, scheduler: Scheduler) -> list[Observation]:
        """Release held experiments that have a decision (an operator's ``sdl decide``, in the ledger)."""
        failed = []
        for experiment_id, (interruption, decided) in ledger.decisions().items():
            flight = scheduler.held.get(experiment_id)
            if flight is not None and decided is not None:
                failed += self._apply_decision(ledger, scheduler, flight, interruption, decided)
        return failed

    def _apply_decision(self, ledger: Ledger, scheduler: Scheduler, flight: Flight,
                        interruption: ExperimentInterrupted, decided: ExperimentDecided) -> list[Observation]:
        """rerun: back to its instrument, naming the cut-off attempt; fail: recorded (returned as observed)."""
        log.info("experiment %s: %s (decided by %s)", flight.experiment_id, decided.decision, decided.by)
        if decided.decision == "rerun":
            scheduler.rerun(flight, decided.attempt)
            return []
        scheduler.held.pop(flight.experiment_id, None)
        ledger.record_failure(flight.experiment_id, ErrorCode.INTERRUPTED,
                              f"{interruption.message}; {decided.by} decided: fail", station=interruption.station)
        return [Observation(point=flight.record.point, status="failed")]

    # -- wrap-up -------------------------------------------------------------------------------

    def _recommend(self, ledger: Ledger, client: BusClient) -> None:
        """Ask the recommending surrogate for the recommended point and, on a benchmark, the truth for it."""
        cfg = self.config
        recommender, truth = cfg.provider("recommendation"), cfg.provider("truth")
        observations = [_observation(r) for r in ledger.experiments(("done", "failed"))]
        recommendation: dict[str, Any] = {}
        try:
            if recommender is not None and sum(o.status == "done" for o in observations) >= 2:
                summary = FitSummary.model_validate(client.request(
                    recommender.service_name, "fit",
                    FitRequest(observations=observations, objective=cfg.objective.measurement,
                               direction=cfg.objective.direction), timeout_s=300.0))
                recommendation = summary.model_dump(mode="json")
                if truth is not None and summary.recommended is not None:
                    values = client.request(truth.service_name, "evaluate",
                                            EvaluateRequest(points=[summary.recommended]), timeout_s=60.0)
                    recommendation["true_values"] = values["values"][0]
            if truth is not None:
                described = ServiceDescription.model_validate(client.request(truth.service_name, "describe",
                                                                             timeout_s=60.0))
                recommendation["optimal_value"] = described.details.get("optimal_value")
        except BusError as e:
            log.warning("no recommendation: %s", e)
            recommendation = {"error": str(e)}
        ledger.set_meta(recommendation=recommendation)

    def _summary(self, ledger: Ledger, state: str, reason: str, started: float) -> CampaignSummary:
        objective = self.config.objective
        done = [r for r in ledger.experiments(("done",)) if objective.measurement in r.result.measurements]
        best = None
        if done:
            key = lambda r: r.result.measurements[objective.measurement]  # noqa: E731
            best = min(done, key=key) if objective.direction == "minimize" else max(done, key=key)
        return CampaignSummary(
            campaign_id=self.campaign_id, state=state, stop_reason=reason, counts=ledger.counts(),
            best_value=best.result.measurements[objective.measurement] if best else None,
            best_point=best.point if best else None, wall_s=time.monotonic() - started)


def _trust(config: CampaignConfig) -> Trust | None:
    """The broker's keys and grants: every key in the deployment's directory may connect; an external
    instrument's key may serve that instrument; ``bus.grants`` adds the rest (operators, say)."""
    ring = config.bus.key_ring()
    if ring is None:
        log.info("the bus has no keys: it listens on loopback only and does not authenticate its peers")
        return None
    grants = {name: Grant(tuple(g.serve), tuple(g.call), tuple(g.publish)) for name, g in config.bus.grants.items()}
    for instrument in config.instruments:
        if instrument.host == "external":
            key = instrument.key or instrument.name
            grant = grants.get(key, Grant())
            grants[key] = Grant((*grant.serve, instrument.service_name), grant.call, grant.publish)
    try:
        return Trust(*ring.key_pair(BROKER_KEY), keys=ring.trusted(), grants=grants)
    except KeyRingError as e:
        raise CampaignError(f"the bus's keys in {ring.directory}: {e}") from None


def _publisher(client: BusClient):
    def publish(document: Document) -> None:
        client.publish(document.kind, document.model_dump(mode="json"))

    return publish


def _record_bus_events(ledger: Ledger, bus_events: EventSubscriber) -> None:
    """The broker's own events (a service joined, a worker was lost) as the campaign's documents."""
    documents = []
    while (event := bus_events.receive(timeout_s=0)) is not None:
        payload = event.payload  # the broker's own events: no peer may publish under bus.*
        if event.topic == "bus.joined":
            documents.append(AgentJoined(service=payload["service"], worker=payload["worker"], key=payload["key"]))
        elif event.topic == "bus.lost":
            documents.append(AgentLost(service=payload["service"], worker=payload["worker"], reason=payload["reason"]))
        elif event.topic == "bus.refused":
            documents.append(SecurityRefused(key=payload["key"], action=payload["action"]))
    if documents:
        ledger.record(*documents)


def _next_number(ledger: Ledger) -> int:
    """The number of the next experiment id: after the highest in the ledger (a recovered ledger may have gaps)."""
    numbers = [int(r.experiment_id[1:]) for r in ledger.experiments() if r.experiment_id[1:].isdigit()]
    return max(numbers, default=-1) + 1


def _observation(record: ExperimentRecord) -> Observation:
    if record.status == "done":
        return Observation(point=record.point, status="done", measurements=record.result.measurements,
                           arrays=record.result.arrays)
    return Observation(point=record.point, status="failed")


def _values(observations: list[Observation], measurement: str) -> list[float]:
    return [o.measurements[measurement] for o in observations if o.status == "done" and measurement in o.measurements]


class _signals:
    """First SIGINT/SIGTERM: stop gracefully. Second: stop now. Restores the old handlers on exit."""

    def __init__(self, stop: _Stop) -> None:
        self.stop = stop
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.stop.graceful.is_set():
            self.stop.immediate.set()
            log.warning("second interrupt: leaving now; in-flight experiments are reconciled on --resume")
        else:
            self.stop.graceful.set()
            log.warning("interrupt: no new experiments; waiting for those in flight (interrupt again to leave now)")

    def __enter__(self) -> _signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
