"""A redeploy stops the running replicas the way a scale-down does: a session that ends within the
drain timeout completes normally, one still running near it ends with ``shutting_down`` (1012)
before Serve kills its replica, and new sessions go to the new replica. Real local Ray, lite
backend, loopback. Skipped without ``requirements-serve.txt``."""

from __future__ import annotations

import asyncio
import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before Ray starts: nothing leaves the machine
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from ditto.errors import ErrorCode  # noqa: E402
from ditto.protocol import messages as msg  # noqa: E402
from ditto.serve.board import stopping_replicas  # noqa: E402
from ditto.serve.deployment import build_app  # noqa: E402
from tests.conftest import astronaut, free_port  # noqa: E402
from tests.serve.helpers import one_session_per_replica  # noqa: E402
from tests.server.helpers import END_OF_AUDIO, LiveClient, live_start, png_bytes, wait_until  # noqa: E402

APP = "ditto-drain-test"
SIZE = 160
DRAIN_TIMEOUT_S = 10.0  # the replicas end what still runs after 10 - 2 * 0.5 - 3 = 6 s of drain


def app_args(replicas: int) -> dict:
    return {
        "settings": {"backend": "lite", "max_size": SIZE, "shutdown_grace_s": 3},
        "num_replicas": replicas,
        "sessions_per_replica": 3,
        "cpus_per_replica": 0,
        "report_interval_s": 0.5,
        "health_check_period_s": 2,
        "drain_timeout_s": DRAIN_TIMEOUT_S,
    }


def stopping_now() -> frozenset[str]:
    from ray.serve.context import _get_global_client

    return stopping_replicas(_get_global_client().get_serve_details())


@pytest.fixture(scope="module")
def port():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(app_args(2)), name=APP, route_prefix="/")
    yield port
    serve.shutdown()
    ray.shutdown()


def test_stopping_replicas_are_read_from_the_controller_details() -> None:
    details = {
        "applications": {
            "a": {
                "deployments": {
                    "StreamingReplica": {
                        "replicas": [
                            {"replica_id": "r1", "state": "RUNNING"},
                            {"replica_id": "r2", "state": "STOPPING"},
                        ]
                    },
                    "SessionBoard": {"replicas": [{"replica_id": "b1", "state": "RUNNING"}]},
                }
            }
        }
    }
    assert stopping_replicas(details) == {"r2"}
    assert stopping_replicas({"applications": {}}) == frozenset()


def test_a_redeploy_lets_sessions_finish_and_ends_the_rest_with_1012(port) -> None:
    image = png_bytes(astronaut(SIZE))
    url = f"ws://127.0.0.1:{port}/ws/" + "{}"

    async def main():
        clients = await one_session_per_replica(lambda name: url.format(name), live_start(image=image))
        finisher_id, lingerer_id = sorted(clients)
        finisher, lingerer = clients[finisher_id], clients[lingerer_id]
        redeploy = asyncio.create_task(asyncio.to_thread(serve.run, build_app(app_args(1)), name=APP, route_prefix="/"))
        # Serve stops the old replicas in its own order: wait until the finisher's is draining
        assert await asyncio.to_thread(wait_until, lambda: finisher_id in stopping_now(), 60, 0.2), serve.status()
        await finisher.send(END_OF_AUDIO)  # ends during the drain: completes as usual
        await asyncio.wait_for(finisher.close(), 30)
        await asyncio.wait_for(lingerer.close(), DRAIN_TIMEOUT_S + 30)  # still running: ended by its replica
        await redeploy
        newcomer = await LiveClient.start(url.format("after-redeploy"), live_start(image=image))
        await newcomer.send(END_OF_AUDIO)
        await asyncio.wait_for(newcomer.close(), 30)
        return set(clients), finisher, lingerer, newcomer

    old_ids, finisher, lingerer, newcomer = asyncio.run(main())
    assert finisher.of_type(msg.StreamingCompleted) and finisher.close_code == 1000
    assert lingerer.close_code == 1012, lingerer.close_code
    assert [e.code for e in lingerer.of_type(msg.Error)] == [ErrorCode.SHUTTING_DOWN]
    assert not lingerer.of_type(msg.StreamingCompleted)
    assert newcomer.of_type(msg.StreamingStarted)[0].server_id not in old_ids
    assert newcomer.of_type(msg.StreamingCompleted)
