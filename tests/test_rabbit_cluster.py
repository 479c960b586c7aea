"""RabbitMQ as a 3-node cluster: gates fail over across its nodes, check-ins wait in a quorum queue that
competing AMQP collectors drain, and retained documents reach a gate on any node."""

from __future__ import annotations

import pytest

from conftest import wait_until

pytestmark = pytest.mark.slow


def test_the_cluster_fixture_forms_three_nodes_and_a_killed_node_rejoins(rabbit_cluster) -> None:
    names = sorted(n.name for n in rabbit_cluster.nodes)
    assert rabbit_cluster.members(0) == names
    rabbit_cluster.kill_node(2)
    rest = sorted(n.name for n in rabbit_cluster.nodes[:2])
    assert wait_until(lambda: rabbit_cluster.members(0) == rest, 60)
    rabbit_cluster.start_node(2)
    assert wait_until(lambda: rabbit_cluster.members(1) == names, 60)
