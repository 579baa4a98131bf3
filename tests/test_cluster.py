"""A campaign joins an existing two-node Ray cluster (both nodes on this machine) and its agents
spread over the nodes."""

import pytest
import ray
from ray.cluster_utils import Cluster

from sdl.campaign import Campaign
from sdl.ledger import Ledger
from sdl.ledger.documents import AgentPlaced

from conftest import branin_config


@pytest.fixture(scope="module")
def two_node_cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_campaign_on_a_two_node_cluster_spreads_its_agents(two_node_cluster, campaign_dir):
    config = branin_config(stop={"max_experiments": 8, "max_in_flight": 2})
    summary = Campaign(config, campaign_dir, ray_address=two_node_cluster.address, progress=False).run()
    assert summary.counts["done"] == 8
    with Ledger.in_campaign(campaign_dir, readonly=True) as ledger:
        placed = ledger.documents(AgentPlaced)
    assert {p.service for p in placed} == {"planner.sobol", "simulator.test_function", "instrument.a", "instrument.b"}
    cluster_nodes = {node.node_id for node in two_node_cluster.list_all_nodes()}
    used = {p.node_id for p in placed}
    assert used <= cluster_nodes and len(used) == 2
