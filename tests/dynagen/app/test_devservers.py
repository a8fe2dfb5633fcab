"""The test S3 server: a port taken between our check and weed's bind is retried, or named in one line."""

from __future__ import annotations

import socket

import pytest

from dynagen.app import devservers
from dynagen.app.devservers import SeaweedS3, free_port


def _listener() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", free_port()))
    s.listen()
    return s


def test_free_ports_stay_out_of_the_ephemeral_and_ray_worker_ranges():
    ports = {free_port() for _ in range(50)}
    assert all(20000 <= p < 32768 for p in ports)


def test_a_port_taken_at_start_gets_fresh_ports(tmp_path, monkeypatch):
    taken = _listener()
    real = devservers._distinct_ports
    calls = []

    def first_set_collides(names):
        ports = real(names)
        if not calls:
            ports["s3"] = taken.getsockname()[1]
        calls.append(ports)
        return ports

    monkeypatch.setattr(devservers, "_distinct_ports", first_set_collides)
    with taken, SeaweedS3(tmp_path) as server:
        assert len(calls) == 2
        assert server.ports == calls[1] and server.ports["s3"] != taken.getsockname()[1]
        assert server.proc is not None and server.proc.poll() is None


def test_fixed_ports_that_are_taken_fail_in_one_line(tmp_path):
    taken = _listener()
    server = SeaweedS3(tmp_path, ports=devservers._distinct_ports(devservers._PORT_NAMES))
    port = server.ports["s3"] = taken.getsockname()[1]
    with taken, pytest.raises(RuntimeError) as err:
        server.start(timeout=30)
    message = str(err.value)
    assert "\n" not in message and message.startswith("weed exited with")
    assert str(port) in message, message  # weed's own reason names the port
    assert server.proc is None
