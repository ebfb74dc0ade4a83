"""Embedded services start, answer, stop, and never take over a port they do not own."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import redis

from traitflow.services import Service, ServiceError, free_port, port_open

pytestmark = pytest.mark.integration


def test_redis_service_starts_answers_and_stops(tmp_path: Path) -> None:
    service = Service("redis", tmp_path, "127.0.0.1", free_port())
    service.start()
    try:
        assert service.running()
        client = redis.Redis(port=service.port)
        assert client.ping()
        client.close()
        service.start()  # already running: a no-op, not a second server
        assert service.running()
    finally:
        service.stop()
    assert not service.running()
    assert not port_open("127.0.0.1", service.port)
    assert not service.pid_file.exists()


def test_broker_service_starts_and_stops(tmp_path: Path) -> None:
    service = Service("broker", tmp_path, "127.0.0.1", free_port())
    service.start()
    try:
        assert port_open("127.0.0.1", service.port)
    finally:
        service.stop()
    assert not port_open("127.0.0.1", service.port)


def test_a_port_held_by_someone_else_is_left_alone(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        service = Service("redis", tmp_path, "127.0.0.1", port)
        with pytest.raises(ServiceError, match="already in use"):
            service.start()
        service.stop()  # no pid file of ours: must not touch the other listener
        assert port_open("127.0.0.1", port)
