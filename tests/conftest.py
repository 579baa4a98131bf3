"""Shared fixtures. Every ZeroMQ endpoint binds 127.0.0.1 on a free port; no port is hard-coded."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from sdl.bus import Broker
from sdl.campaign import CampaignConfig, parse_config
from sdl.ledger import Ledger, LedgerError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def branin_config(**overrides: Any) -> CampaignConfig:
    """A small, fast Branin campaign; ``overrides`` replace top-level sections."""
    data: dict[str, Any] = {
        "name": "test-branin",
        "seed": 3,
        "space": {"parameters": {"x1": {"low": -5, "high": 10}, "x2": {"low": 0, "high": 15}}},
        "objective": {"measurement": "y", "direction": "minimize"},
        "planner": {"kind": "sobol"},
        "instruments": [
            {"name": "a", "driver": "branin", "options": {"latency_s": 0.02, "noise_std": 0.01}},
            {"name": "b", "driver": "branin", "options": {"latency_s": 0.03, "noise_std": 0.01}},
        ],
        "simulators": [{"kind": "test_function", "settings": {"problem": "branin"}}],
        "stop": {"max_experiments": 12, "max_in_flight": 2},
        "bus": {"join_timeout_s": 60},
        "ledger": {"synchronous": "normal"},
    }
    data.update(overrides)
    return parse_config(data, source="test")


def done_count(campaign_dir: Path) -> int:
    """Experiments done so far, read the way `sdl status` reads a running campaign."""
    try:
        with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
            return ledger.counts()["done"]
    except LedgerError:  # not created, or created but its schema not yet committed
        return 0


@pytest.fixture
def broker():
    with Broker() as b:
        yield b


@pytest.fixture
def campaign_dir(tmp_path: Path) -> Path:
    return tmp_path / "campaign"


def wait_for_service(broker: Broker, name: str, timeout_s: float = 10.0) -> None:
    """Until a worker of ``name`` has joined the broker."""
    import time

    deadline = time.monotonic() + timeout_s
    while name not in broker.services():
        assert time.monotonic() < deadline, f"{name} never joined; live: {broker.services()}"
        time.sleep(0.02)


def wait_until_serving(actor, broker: Broker, service: str, *, construct_s: float = 180, join_s: float = 30) -> None:
    """An agent actor is constructed (or its start-up error is raised here) and its service has joined the broker."""
    import time

    import ray

    ray.get(actor.info.remote(), timeout=construct_s)
    deadline = time.monotonic() + join_s
    while service not in broker.services() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service in broker.services(), f"{service} did not join the broker within {join_s} s"
