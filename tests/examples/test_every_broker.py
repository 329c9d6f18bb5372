"""examples/every-broker, run as a user would: the same app and publisher on every broker,
only the pub/sub YAML swapped. Per broker, three real ``mechakit run`` sidecars (app id
``orders`` twice, ``audit`` once), each running the example's app.py, and the example's
publish.py; then: each app id gets every order (fan-out), the two ``orders`` instances share
the work where the broker shares it, RETRY redelivers, DROP drops, ``retry-always`` reaches
``orders-dead`` after maxDeliveries, and the publisher's metadata arrives as a header."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mechakit.conformance.backends import BackendUnavailable, free_port, provision
from mechakit.core.registry import default_registry
from runtime.pubsub_sidecar import STARTUP, Sidecar, wait_healthy

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "every-broker"
COUNT = 20
MAX_DELIVERIES = 3
DEADLINE = 60.0
QUIET = 2.0
SOURCE = "every-broker-example"

Values = dict[str, str]


@dataclass(frozen=True)
class Broker:
    name: str
    """The folder under the example's components/ (also the type after ``pubsub.``)."""
    backend: str | None
    address: Callable[[Values], Values]
    """The example YAML's metadata to replace with the provisioned backend's."""
    shares_work: bool = True
    one_process: bool = False
    """The broker lives in the sidecar (in-memory): one app, no fan-out across sidecars."""


def _keys(*names: str, **renamed: str) -> Callable[[Values], Values]:
    return lambda values: {
        **{n: values[n] for n in names},
        **{k: values[v] for k, v in renamed.items()},
    }


BROKERS = [
    Broker("in-memory", None, _keys(), one_process=True),
    Broker("redis", "redis", _keys(redisHost="address")),
    Broker("aws.snssqs", "moto", _keys("endpoint", "region", "accessKey", "secretKey")),
    # An auto-created topic has one partition: one instance of a group reads it all.
    Broker("kafka", "kafka", _keys("brokers"), shares_work=False),
    Broker("jetstream", "nats", _keys(natsURL="url")),
    Broker("natsstreaming", "nats", _keys(natsURL="url")),
    Broker("rabbitmq", "rabbitmq", _keys(connectionString="url")),
    Broker("mqtt3", "mosquitto", _keys(url="url")),
    Broker("gcp.pubsub", "gcp-pubsub", _keys(projectID="project", endpoint="address")),
]


@pytest.fixture(params=BROKERS, ids=[b.name for b in BROKERS])
def broker(request: pytest.FixtureRequest) -> Iterator[tuple[Broker, Values]]:
    """Each broker with its backend's values (skipped where the backend or driver is missing)."""
    chosen: Broker = request.param
    try:
        default_registry().resolve(f"pubsub.{chosen.name}")
    except Exception as exc:
        pytest.skip(f"pubsub.{chosen.name} is not available: {exc}")
    if chosen.backend is None:
        yield chosen, {}
        return
    try:
        info = provision(chosen.backend)
    except BackendUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield chosen, info.values
    finally:
        info.stop()


def _resources(broker: Broker, values: Values, folder: Path) -> Path:
    """The example's YAML for ``broker`` with the backend's address put in."""
    manifest = yaml.safe_load((EXAMPLE / "components" / broker.name / "pubsub.yaml").read_text())
    replace = broker.address(values)
    for item in manifest["spec"]["metadata"]:
        item["value"] = replace.pop(item["name"], item["value"])
    assert not replace, f"components/{broker.name}/pubsub.yaml lacks {sorted(replace)}"
    folder.mkdir()
    (folder / "pubsub.yaml").write_text(yaml.safe_dump(manifest))
    return folder


@dataclass
class Instance:
    app_id: str
    app_port: int
    sidecar: Sidecar

    def received(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"http://127.0.0.1:{self.app_port}/received", timeout=5)
        records: list[dict[str, Any]] = answer.json()
        return records


def _start(app_id: str, resources: Path, tmp_path: Path, n: int) -> Instance:
    """``mechakit run --app-id … --app-port … --resources-path … -- python app.py``."""
    http_port, grpc_port, app_port = free_port(), free_port(), free_port()
    log = tmp_path / f"{app_id}-{n}.log"
    argv = [
        sys.executable, "-m", "mechakit.runtime.cli", "run", "--app-id", app_id,
        "--app-port", str(app_port), "--resources-path", str(resources),
        "--dapr-http-port", str(http_port), "--dapr-grpc-port", str(grpc_port),
        "--", sys.executable, str(EXAMPLE / "app.py"),
    ]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if k != "DAPR_API_TOKEN"}
    environment["MECHAKIT_HOME"] = str(tmp_path / "home")  # shared: instances take slots
    environment.pop("MECHAKIT_INSTANCE_ID", None)  # as a user runs it: none given
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, env=environment, stdout=sink, stderr=sink)
    return Instance(app_id, app_port, Sidecar(http_port, grpc_port, log, process))


def _wait_subscribed(instance: Instance) -> None:
    """Until the sidecar delivers both of the app's topics."""
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        if instance.sidecar.log.read_text().count("delivering") >= 2:
            return
        time.sleep(0.05)
    pytest.fail(f"{instance.app_id} never subscribed; log:\n{instance.sidecar.log.read_text()}")


def _stop(instances: list[Instance]) -> None:
    for instance in instances:
        instance.sidecar.process.terminate()
    for instance in instances:
        try:
            instance.sidecar.process.wait(STARTUP)
        except subprocess.TimeoutExpired:
            instance.sidecar.process.kill()
            instance.sidecar.process.wait()


def _done(records: list[dict[str, Any]]) -> bool:
    ok = {r["id"] for r in records if r["route"] == "/orders" and r["answer"] == "SUCCESS"}
    dead = {r["id"] for r in records if r["route"] == "/dead"}
    return ok >= {*map(str, range(1, COUNT + 1)), "retry-once"} and "retry-always" in dead


def _check(group: str, records: list[dict[str, Any]]) -> None:
    """What one app id (all its instances together) must have got."""
    orders = collections.Counter(r["id"] for r in records if r["route"] == "/orders")
    dead = collections.Counter(r["id"] for r in records if r["route"] == "/dead")
    duplicates = {k: n for k, n in orders.items() if n > 1 and not k.startswith("retry")}
    print(f"{group}: deliveries {dict(orders)}, dead letters {dict(dead)}, duplicates {duplicates}")
    missing = {str(n) for n in range(1, COUNT + 1)} - set(orders)
    assert not missing, f"{group} never got orders {sorted(missing)}"
    retry_once = [
        r["answer"] for r in records if r["id"] == "retry-once" and r["route"] == "/orders"
    ]
    assert retry_once[0] == "RETRY" and "SUCCESS" in retry_once, f"{group}: retry-once {retry_once}"
    assert "retry-once" not in dead, f"{group}: retry-once went to the dead-letter topic"
    assert orders["drop"] == 1, f"{group}: the dropped order came {orders['drop']} times"
    assert "drop" not in dead, f"{group}: the dropped order went to the dead-letter topic"
    # Each instance counts the deliveries it made where the broker has no counter it shares
    # (the Pub/Sub emulator, MQTT): one app id's instances together may then make more.
    always = collections.Counter(
        r["instance"] for r in records if r["id"] == "retry-always" and r["route"] == "/orders"
    )
    print(f"{group}: retry-always deliveries per instance {dict(always)}")
    assert orders["retry-always"] >= MAX_DELIVERIES, f"{group}: retry-always {dict(always)}"
    assert max(always.values()) <= MAX_DELIVERIES, (
        f"{group}: an instance delivered retry-always more than maxDeliveries "
        f"({MAX_DELIVERIES}) times before it went to orders-dead: {dict(always)}"
    )
    no_header = [r["id"] for r in records if r["headers"].get("ordersource") != SOURCE]
    assert not no_header, f"{group}: no ordersource header on {no_header}"


def test_one_app_every_broker(broker: tuple[Broker, Values], tmp_path: Path) -> None:
    chosen, values = broker
    resources = _resources(chosen, values, tmp_path / "resources")
    ids = ["orders"] if chosen.one_process else ["orders", "orders", "audit"]
    instances = [_start(app_id, resources, tmp_path, n) for n, app_id in enumerate(ids)]
    try:
        for instance in instances:
            wait_healthy(instance.sidecar)
            _wait_subscribed(instance)
        publisher = {**os.environ, "DAPR_HTTP_PORT": str(instances[0].sidecar.http_port)}
        publisher.pop("DAPR_API_TOKEN", None)
        published = subprocess.run(
            [sys.executable, str(EXAMPLE / "publish.py"), "--count", str(COUNT)],
            env=publisher, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert published.returncode == 0, f"publish.py failed: {published.stderr[-2000:]}"
        groups = {app_id: [i for i in instances if i.app_id == app_id] for app_id in ids}

        def collected() -> dict[str, list[dict[str, Any]]]:
            return {g: [r for i in members for r in i.received()] for g, members in groups.items()}

        deadline = time.monotonic() + DEADLINE
        while not all(map(_done, collected().values())) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(QUIET)  # a wrong redelivery (of the dropped order, say) would show by now
        for group, records in collected().items():
            _check(f"{chosen.name}/{group}", records)
        if chosen.shares_work and not chosen.one_process:
            shares = [len(i.received()) for i in groups["orders"]]
            assert all(shares), f"the two 'orders' instances did not share the work: {shares}"
    finally:
        _stop(instances)
