"""Service invocation between real ``mechakit run`` sidecars whose Configuration names
another resolver than the default sqlite registry: ``nameresolution.nameformat`` (each
one's format is the other's internal gRPC address, so no registry at all) and
``nameresolution.mdns`` (they find each other by multicast DNS, also after a restart)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mechakit.conformance.backends import free_port
from mechakit.conformance.backends_mdns import LOOPBACK, multicast_loops_back

from .test_invocation import Cluster, _stop

CONFIGURATION = """\
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: {name}
spec:
  nameResolution:
    component: {component}
    configuration:
{settings}
"""


def start(cluster: Cluster, app_id: str, component: str, *settings: str, port: int = 0) -> None:
    """``app_id``'s app and sidecar, resolving with ``component`` (``key: value`` settings)
    on internal gRPC port ``port`` (0: any free one)."""
    config = cluster.folder / f"{app_id}-{component}.yaml"
    lines = "\n".join(f"      {line}" for line in settings)
    config.write_text(CONFIGURATION.format(name=app_id, component=component, settings=lines))
    internal = str(port or free_port())
    cluster.start(app_id, "http", "--dapr-internal-grpc-port", internal, "--config", str(config))


def call(cluster: Cluster, caller: str, callee: str) -> httpx.Response:
    return httpx.post(
        f"{cluster[caller].url}/v1.0/invoke/{callee}/method/orders?x=1", content=b"hi"
    )


def assert_reached(answer: httpx.Response, caller: str) -> None:
    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert (seen["path"], seen["query"], seen["body"]) == ("/orders", "x=1", "hi")
    assert seen["headers"]["dapr-caller-app-id"] == caller


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path)
    try:
        yield running
    finally:
        for app_id in running:
            running.stop(app_id)


def test_sidecars_configured_with_nameformat_invoke_each_other(cluster: Cluster) -> None:
    internal = {"svc-a": free_port(), "svc-b": free_port()}
    for app_id, other in (("svc-a", "svc-b"), ("svc-b", "svc-a")):
        start(cluster, app_id, "nameformat", f'format: "127.0.0.1:{internal[other]}"',
              port=internal[app_id])  # fmt: skip
    for caller, callee in (("svc-a", "svc-b"), ("svc-b", "svc-a")):
        assert_reached(call(cluster, caller, callee), caller)
    assert not (cluster.folder / "home" / "nr.db").exists(), "a sidecar used the sqlite registry"


_NO_MULTICAST = multicast_loops_back(LOOPBACK)


@pytest.mark.skipif(_NO_MULTICAST is not None, reason=str(_NO_MULTICAST))
def test_sidecars_on_mdns_find_each_other_and_a_restarted_callee(cluster: Cluster) -> None:
    pytest.importorskip("zeroconf", reason="nameresolution.mdns needs mechakit[mdns]")
    settings = (f'interfaces: "{LOOPBACK}"', 'ttl: "2s"', 'browseTimeout: "3s"')
    start(cluster, "svc-a", "mdns", *settings)
    start(cluster, "svc-b", "mdns", *settings)
    assert_reached(call(cluster, "svc-a", "svc-b"), "svc-a")
    assert_reached(call(cluster, "svc-b", "svc-a"), "svc-b")
    app, sidecar = cluster["svc-b"].processes
    sidecar.kill()  # no goodbye: svc-a still knows the dead instance until its ttl passes
    sidecar.wait()
    _stop(app)
    start(cluster, "svc-b", "mdns", *settings)
    assert_reached(call(cluster, "svc-a", "svc-b"), "svc-a")
    assert not (cluster.folder / "home" / "nr.db").exists(), "a sidecar used the sqlite registry"
