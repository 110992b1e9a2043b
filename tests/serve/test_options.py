"""ServeOptions -> deployment options, and the health probe; no Ray needed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ditto.errors import BackendError
from ditto.serve.health import probe_backend
from ditto.serve.options import ServeOptions
from tests.conftest import FakeAvatar, FakeBackend, FakeStream, astronaut


def test_a_replica_takes_one_connection_past_its_sessions_to_answer_busy() -> None:
    options = ServeOptions(settings={"backend": "lite"}, sessions_per_replica=7, num_replicas=3)
    deployment = options.replica_deployment_options()
    assert deployment["max_ongoing_requests"] == 8 and deployment["num_replicas"] == 3
    assert deployment["ray_actor_options"] == {"num_gpus": 0.0, "num_cpus": 1.0}  # lite: no GPU
    assert options.server_settings(server_id="r1").max_sessions == 7
    assert options.server_settings(server_id="r1").server_name == "r1"


def test_a_stopping_replica_ends_its_sessions_before_the_drain_timeout() -> None:
    options = ServeOptions(settings={"backend": "lite"}, drain_timeout_s=600, report_interval_s=1)
    assert options.replica_deployment_options()["graceful_shutdown_timeout_s"] == 600
    assert options.forced_stop_after_s(shutdown_grace_s=5) == 600 - 2 - 5
    assert ServeOptions(settings={"backend": "lite"}, drain_timeout_s=3).forced_stop_after_s(5) == 0


def test_autoscaling_replaces_a_fixed_count() -> None:
    deployment = ServeOptions(
        sessions_per_replica=8, min_replicas=1, max_replicas=4, num_replicas=2
    ).replica_deployment_options()
    assert "num_replicas" not in deployment
    assert deployment["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "initial_replicas": 2,
        "target_ongoing_requests": 6.0,
    }


def test_bad_server_settings_fail_where_the_options_are_built() -> None:
    with pytest.raises(ValidationError):
        ServeOptions(settings={"max_size": 1})
    with pytest.raises(ValidationError):
        ServeOptions(min_replicas=3, max_replicas=2)


class _SilentStream(FakeStream):
    """A stream that yields nothing, as a backend whose device died would."""

    def _frames(self, upto, idle=False):
        return iter(())


class _BrokenBackend(FakeBackend):
    def open_stream(self, avatar, *, seed, options=None):
        return _SilentStream(avatar, 0.0)


def test_the_health_probe_fails_when_the_backend_renders_nothing() -> None:
    avatar = FakeAvatar(astronaut(64))
    probe_backend(FakeBackend(), avatar)  # one frame of silence -> one frame
    with pytest.raises(BackendError):
        probe_backend(_BrokenBackend(), avatar)
