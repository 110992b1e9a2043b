"""What the Serve tests share."""

from __future__ import annotations

from collections.abc import Callable

from ditto.protocol import messages as msg
from tests.server.helpers import LiveClient


async def one_session_per_replica(url: Callable[[str], str], start: str, replicas: int = 2) -> dict[str, LiveClient]:
    """Open live sessions until each of ``replicas`` replicas serves one (Serve's router spreads them,
    not strictly; a second session on a replica is closed again): ``server_id`` → its session."""
    clients: dict[str, LiveClient] = {}
    for i in range(3 * replicas):
        client = await LiveClient.start(url(f"spread-{i}"), start)
        server_id = client.of_type(msg.StreamingStarted)[0].server_id
        if server_id in clients:
            await client.ws.close()
        else:
            clients[server_id] = client
        if len(clients) == replicas:
            break
    assert len(clients) == replicas, f"the router put the sessions on {len(clients)} replicas only"
    return clients
