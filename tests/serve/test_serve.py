"""The server as two Ray Serve replicas of the lite backend, on loopback: routing by capacity,
``busy`` only when both are full, a killed replica. Skipped without ``requirements-serve.txt``."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os

import cv2
import numpy as np
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before Ray starts: nothing leaves the machine
ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from ditto.errors import ErrorCode  # noqa: E402
from ditto.protocol import messages as msg  # noqa: E402
from ditto.serve.deployment import STREAMING_DEPLOYMENT, build_app  # noqa: E402
from tests.conftest import astronaut, free_port  # noqa: E402
from tests.serve.helpers import one_session_per_replica  # noqa: E402
from tests.server.helpers import (  # noqa: E402
    END_OF_AUDIO,
    LiveClient,
    converse,
    live_start,
    png_bytes,
    speech_like,
    start_message,
    wait_until,
    wav_bytes,
)

APP = "ditto-test"
SESSIONS_PER_REPLICA = 5
SIZE = 192  # px: small frames keep 8 sessions on 2 cores quick


@dataclasses.dataclass(frozen=True)
class ServeApp:
    port: int

    def ws(self, client_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/{client_id}"


@pytest.fixture(scope="module")
def serve_app():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(
        build_app(
            {
                "settings": {"backend": "lite", "max_size": SIZE},
                "num_replicas": 2,
                "sessions_per_replica": SESSIONS_PER_REPLICA,
                "cpus_per_replica": 0,
                "report_interval_s": 0.5,
                "health_check_period_s": 2,
            }
        ),
        name=APP,
        route_prefix="/",
    )
    yield ServeApp(port)
    serve.shutdown()
    ray.shutdown()


def tinted_portrait(i: int) -> np.ndarray:
    """The astronaut blended half and half with grey level 20 + 25 i: sessions told apart by brightness."""
    grey = np.full((SIZE, SIZE, 3), 20 + 25 * i, np.uint8)
    return cv2.addWeighted(astronaut(SIZE), 0.5, grey, 0.5, 0)


def frame_brightness(jpeg: bytes) -> float:
    return float(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE).mean())


def running_replicas() -> int:
    status = serve.status().applications[APP].deployments[STREAMING_DEPLOYMENT]
    return status.replica_states.get("RUNNING", 0)


def test_sessions_spread_over_replicas_and_get_only_their_own_frames(serve_app) -> None:
    sources = [tinted_portrait(i) for i in range(8)]
    levels = [float(cv2.cvtColor(s, cv2.COLOR_RGB2GRAY).mean()) for s in sources]
    audio = wav_bytes(speech_like(1.0))

    answered = [asyncio.Event() for _ in sources]

    async def session(i: int, source: np.ndarray):
        # each connects once the one before was answered, then all 8 stream at once: Serve's router
        # places a session by the replicas' ongoing counts, which a burst of simultaneous handshakes
        # outruns (docs/scaling.md)
        if i:
            await answered[i - 1].wait()
        return await converse(
            serve_app.ws(f"spread-{i}"), start_message(audio, png_bytes(source)), timeout_s=90, answered=answered[i]
        )

    async def main():
        return await asyncio.gather(*(session(i, s) for i, s in enumerate(sources)))

    transcripts = asyncio.run(main())
    per_replica = collections.Counter()
    for i, t in enumerate(transcripts):
        assert t.error is None and t.close_code == 1000, (i, t.controls)
        started, done = t.of_type(msg.StreamingStarted)[0], t.of_type(msg.StreamingCompleted)[0]
        assert len(t.frames) == done.frames_sent == t.of_type(msg.Metadata)[0].total_frames == 25
        per_replica[started.server_id] += 1
        for _, jpeg in t.frames:  # the nearest source brightness is the session's own
            assert int(np.argmin([abs(frame_brightness(jpeg) - level) for level in levels])) == i
    assert len(per_replica) == 2 and min(per_replica.values()) >= 3, per_replica


def test_busy_only_when_every_replica_is_full(serve_app) -> None:
    async def main():
        clients = [
            await LiveClient.start(serve_app.ws(f"full-{i}"), live_start(image=png_bytes(astronaut(SIZE))))
            for i in range(2 * SESSIONS_PER_REPLICA)
        ]
        per_replica = collections.Counter(c.of_type(msg.StreamingStarted)[0].server_id for c in clients)
        refused = await converse(serve_app.ws("one-too-many"), live_start(image=png_bytes(astronaut(SIZE))))
        for c in clients:
            await c.send(END_OF_AUDIO)
            await asyncio.wait_for(c.close(), 30)
        return per_replica, refused, clients

    per_replica, refused, clients = asyncio.run(main())
    assert sorted(per_replica.values()) == [SESSIONS_PER_REPLICA] * 2, per_replica
    assert refused.error is not None and refused.error.code == ErrorCode.BUSY and refused.close_code == 1013
    assert all(c.of_type(msg.StreamingCompleted) for c in clients)


def test_a_killed_replica_ends_its_sessions_and_serve_restarts_it(serve_app) -> None:
    image = png_bytes(astronaut(SIZE))

    async def main():
        clients = await one_session_per_replica(serve_app.ws, live_start(image=image))
        victim, survivor = sorted(clients)
        actor_name = next(
            a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(f"#{victim}")
        )
        ray.kill(ray.get_actor(actor_name, namespace="serve"), no_restart=True)
        await asyncio.wait_for(clients[victim].close(), 30)
        newcomer = await LiveClient.start(serve_app.ws("after-kill"), live_start(image=image))
        for client in (clients[survivor], newcomer):
            await client.send(END_OF_AUDIO)
            await asyncio.wait_for(client.close(), 30)
        return victim, survivor, clients, newcomer

    victim, survivor, clients, newcomer = asyncio.run(main())
    assert not clients[victim].of_type(msg.StreamingCompleted)  # ended with the replica, not completed
    assert clients[victim].close_code != 1000 or clients[victim].of_type(msg.Error)
    assert newcomer.of_type(msg.StreamingStarted)[0].server_id == survivor
    assert clients[survivor].of_type(msg.StreamingCompleted) and newcomer.of_type(msg.StreamingCompleted)
    assert wait_until(lambda: running_replicas() == 2, timeout_s=60, interval_s=0.5), serve.status()
