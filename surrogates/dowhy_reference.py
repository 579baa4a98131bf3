"""DoWhy, the field's reference for causal identification and estimation, run beside sdl's own.

DoWhy 0.14 pins ``scipy<=1.15.3`` on Python < 3.13, which clashes with ours, so it lives in its own
virtual environment (created from PyPI on first use) and is driven through a subprocess with JSON
in and out. Used by the identification cross-check (a test) and the causal bench.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from sdl.surrogates.identification import CausalGraph

DOWHY_REQUIREMENT = "dowhy==0.14"

# Runs inside DoWhy's venv: for each case, DoWhy's own identification (identify_effect_auto with its
# defaults) reports its back-door set (None when there is none), front-door set and instruments.
_IDENTIFY_SCRIPT = r"""
import json, logging, sys, warnings
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
import networkx as nx
from dowhy.causal_identifier.auto_identifier import identify_effect_auto
from dowhy.causal_identifier.identify_effect import EstimandType
from dowhy.graph import build_graph_from_str
out = []
for case in json.loads(sys.stdin.read()):
    graph = build_graph_from_str(case["gml"])
    observed = [v for v in graph.nodes if graph.nodes[v].get("observed", "yes") != "no"]
    estimand = identify_effect_auto(graph, case["treatments"], [case["outcome"]], observed,
                                    EstimandType.NONPARAMETRIC_ATE)
    if getattr(estimand, "no_directed_path", False):
        out.append({"no_directed_path": True})
        continue
    backdoor = (estimand.backdoor_variables or {}).get("backdoor")
    out.append({"backdoor": None if backdoor is None else sorted(backdoor),
                "frontdoor": sorted(estimand.frontdoor_variables or []),
                "instruments": sorted(estimand.instrumental_variables or [])})
print(json.dumps(out))
"""


def dowhy_python(venv: Path) -> Path:
    """The Python of a venv holding DoWhy, created (about a minute from PyPI) when missing."""
    python = venv / "bin" / "python"
    if not (venv / ".dowhy-installed").exists():
        print(f"creating {venv} with {DOWHY_REQUIREMENT} (its scipy pin clashes with ours, so it lives apart) ...",
              file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", DOWHY_REQUIREMENT], check=True)
        (venv / ".dowhy-installed").touch()
    return python


def graph_gml(graph: CausalGraph) -> str:
    """The graph (latent nodes included, marked ``observed "no"``) in GML, as DoWhy reads it."""
    hidden = 'observed "no" '
    nodes = "".join(f'node [ id "{v}" label "{v}" {hidden if v in graph.latent else ""}]\n' for v in graph.dag.nodes)
    edges = "".join(f'edge [ source "{a}" target "{b}" ]\n' for a, b in graph.dag.edges)
    return f"graph [ directed 1\n{nodes}{edges}]"


def dowhy_identify(cases: Sequence[tuple[CausalGraph, Sequence[str], str]], venv: Path) -> list[dict]:
    """DoWhy's identification of each (graph, treatments, outcome): a dict with ``backdoor`` (a set,
    or None when no back-door set exists), ``frontdoor`` and ``instruments`` (empty when none), or
    ``no_directed_path``."""
    payload = json.dumps([{"gml": graph_gml(g), "treatments": list(t), "outcome": y} for g, t, y in cases])
    done = subprocess.run([str(dowhy_python(venv)), "-c", _IDENTIFY_SCRIPT], input=payload,
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"DoWhy's identification failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
