"""``--address`` probing: a port where another service listens is refused in one line at once
(``ray.init`` used to retry there for minutes), a real Ray head passes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from ray_fixtures import ray_session  # noqa: F401  (fixture)

from qtt_ray import cli
from qtt_ray.cli import CliError, probe_ray_head


@contextmanager
def listener(answer: bytes | None) -> Iterator[str]:
    """A TCP service on a free local port: sends ``answer`` to each client (None: silent)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except OSError:
                continue
            if answer is not None:
                client.sendall(answer)
            time.sleep(0.5)
            client.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        server.close()


def test_an_ssh_server_is_not_a_ray_head():
    with listener(b"SSH-2.0-OpenSSH_9.6\r\n") as address, pytest.raises(CliError) as info:
        probe_ray_head(address)
    message = str(info.value)
    assert "does not answer like a Ray head" in message and "'SSH-2.0-O'" in message
    assert "port 6379 by default" in message and "\n" not in message


def test_a_web_server_such_as_the_dashboard_is_not_a_ray_head():
    class Quiet(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(CliError, match="does not answer like a Ray head"):
            probe_ray_head(f"127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_a_silent_service_is_refused_after_the_probe_time(monkeypatch):
    monkeypatch.setattr(cli, "PROBE_S", 0.3)
    with listener(None) as address:
        started = time.monotonic()
        with pytest.raises(CliError, match="answered 'nothing'"):
            probe_ray_head(address)
    assert time.monotonic() - started < 2.0


def test_an_http2_server_passes_and_tls_heads_are_not_probed(monkeypatch):
    settings_frame = bytes([0, 0, 6, cli.H2_SETTINGS, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100])
    with listener(settings_frame) as address:
        probe_ray_head(address)  # a gRPC server's first frame
    monkeypatch.setenv("RAY_USE_TLS", "1")
    with listener(b"SSH-2.0-OpenSSH_9.6\r\n") as address:
        probe_ray_head(address)  # a TLS head expects a handshake: only the port is checked


@pytest.mark.slow
def test_a_real_ray_head_passes(ray_session):  # noqa: F811
    probe_ray_head(ray_session._private.worker.global_worker.node.gcs_address)
