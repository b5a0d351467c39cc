"""Shared command-line plumbing: user errors become one line on stderr and exit code 2.

Every project error class carries a one-line message that names the file or option and the fix;
the entry points run their body through ``run_cli`` so no user ever sees a traceback for bad
input. Bugs (anything else) still raise normally.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

USAGE_EXIT = 2
TUNE_PROG = "python -m qtt_ray.tune"  # the main command, named in its messages
PROBE_S = 3.0  # seconds to wait for a Ray head's port before calling it absent
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # treated as Ctrl-C while Tune runs


class CliError(ValueError):
    """Bad command-line input detected by an entry point itself (e.g. ``--budget -5``)."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """The project's bad-input errors, imported lazily (and skipped if a layer is absent)."""
    types: list[type[BaseException]] = [CliError]
    for module, name in (
        ("qtt_ray.data.errors", "DataError"),
        ("qtt_ray.model.build", "ModelError"),
        ("qtt_ray.core.errors", "PredictorError"),
        ("qtt_ray.core.errors", "PolicyError"),
        ("qtt_ray.meta.schema", "MetaSchemaError"),
        ("qtt_ray.space", "SpaceError"),
        ("qtt_ray.results", "ResultsError"),
        ("qtt_ray.trainables.replay_trainable", "ReplayError"),
        ("qtt_ray.bench", "BenchError"),
        ("qtt_ray.predict_io", "PredictError"),
    ):
        try:
            found = getattr(__import__(module, fromlist=[name]), name)
        except (ImportError, AttributeError):
            continue
        types.append(found)
    return tuple(types)


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def run_cli(prog: str, body: Callable[[], int | None]) -> int:
    """Run ``body``; a user error prints ``prog: error: message`` and returns 2."""
    try:
        code = body()
    except user_error_types() as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 128 + signal.SIGPIPE
    return 0 if code is None else int(code)


@contextmanager
def signals_stop_like_ctrl_c() -> Iterator[None]:
    """While active, SIGTERM (``kill``, a batch scheduler's time limit) and SIGHUP (the SSH
    session or terminal went away) stop a run the way Ctrl-C does: Tune ends it gracefully, so
    it can be resumed. The SIGTERM handler ``ray.init`` installs exits at once instead (a C++
    abort dump, and for ``tune`` an interrupted run whose spent budget was never recorded), and
    SIGHUP killed the driver outright, so enter this after Ray has started."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        signal.signal(sig, _interrupt_instead)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def _interrupt_instead(signum: int, frame: object) -> None:
    signal.raise_signal(signal.SIGINT)


def probe_ray_head(address: str) -> None:
    """A ``host:port`` where nothing answers, or where something other than a Ray head
    answers, is one line at once (``ray.init`` retries for minutes); called before any slow
    start-up, and again when joining."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        connection = socket.create_connection((host, int(port)), timeout=PROBE_S)
    except OSError as err:
        raise CliError(
            f"--address {address}: nothing answers there ({err}); start the head with "
            "`ray start --head` (or `ray up cluster.yaml`) and pass its address, or drop "
            "--address to run locally"
        ) from err
    with connection:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return  # a TLS head expects a handshake first: its port answers no plain HTTP/2
        answer = http2_answer(connection)
    if len(answer) < H2_FRAME_HEADER or answer[3] != H2_SETTINGS:
        shown = answer[:24].decode("ascii", "replace").strip() or "nothing"
        raise CliError(
            f"--address {address}: that port does not answer like a Ray head (its GCS speaks "
            f"gRPC; this one answered {shown!r}); pass the head's address as `ray start --head` "
            "printed it (port 6379 by default), or drop --address to run locally"
        )


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # what every HTTP/2 client sends first
H2_FRAME_HEADER = 9  # bytes: length (3), type (1), flags (1), stream (4)
H2_SETTINGS = 0x04  # a server's first frame is SETTINGS (RFC 9113, 3.4)


def http2_answer(connection: socket.socket) -> bytes:
    """The first frame header a server sends after an HTTP/2 client's preface and empty
    SETTINGS; a Ray head's GCS (gRPC) answers with its SETTINGS at once, an HTTP/1 server with
    text, an SSH server with its banner, a silent one with nothing (until ``PROBE_S``)."""
    empty_settings = bytes([0, 0, 0, H2_SETTINGS, 0, 0, 0, 0, 0])
    received = b""
    try:
        connection.sendall(H2_PREFACE + empty_settings)
        while len(received) < H2_FRAME_HEADER:
            chunk = connection.recv(H2_FRAME_HEADER - len(received))
            if not chunk:
                break
            received += chunk
    except OSError:  # a reset or the timeout: what arrived is the answer
        pass
    return received


def join_ray_cluster(address: str, **init_kwargs: object) -> None:
    """``ray.init(address=...)``; no cluster there is one line that says how to start one.

    For ``auto`` Ray raises a ConnectionError with a multi-line hint; for ``host:port`` it
    retries for minutes, so the port is probed first."""
    import ray

    probe_ray_head(address)
    try:
        ray.init(address=address, **init_kwargs)  # type: ignore[arg-type]
    except ConnectionError as err:
        if token_auth_left_off():
            raise CliError(
                f"--address {address}: the cluster did not let this driver in; Ray sends its "
                "token to an address given by hand only with RAY_AUTH_MODE=token: set it (the "
                "token, ~/.ray/auth_token or $RAY_AUTH_TOKEN, must be the cluster's)"
            ) from err
        raise CliError(
            f"--address {address}: no Ray cluster found ({one_line(err)}); start one with "
            "`ray start --head` (or `ray up cluster.yaml`), or drop --address to run locally"
        ) from err


def token_auth_left_off() -> bool:
    """A token is at hand but RAY_AUTH_MODE is unset: Ray then joins an explicit address
    without it, and a cluster with token authentication (Ray's default) refuses the driver."""
    from pathlib import Path

    if os.environ.get("RAY_AUTH_MODE") is not None:
        return False
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())
