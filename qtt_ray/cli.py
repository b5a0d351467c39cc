"""Shared command-line plumbing: user errors become one line on stderr and exit code 2.

Every project error class carries a one-line message that names the file or option and the fix;
the entry points run their body through ``run_cli`` so no user ever sees a traceback for bad
input. Bugs (anything else) still raise normally.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

USAGE_EXIT = 2


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
    return 0 if code is None else int(code)
