"""Errors and warnings of the data layer.

Bad user data raises ``DataError`` (a ``ValueError``) with a one-line message that names the file or
option and the fix; the CLI turns it into exit code 2. Recoverable problems (a corrupt image, an
unmatched pair) are warnings: logged on the ``qtt_ray.data`` logger AND kept in a list so the CLI
can show them after loading.

File names on Linux are bytes: a name that is not valid UTF-8 reaches Python as lone surrogates
(``os.fsdecode``), which crash ``print`` on a UTF-8 terminal. Every message therefore passes
through ``printable``, which shows such bytes as ``\\xff`` escapes and control characters (a
newline in a file name) as escapes too, so a message always prints and stays on one line.
"""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("qtt_ray.data")
LOGGER.addHandler(logging.NullHandler())  # no bare last-resort copy: the CLI prints the list


def printable(text: object) -> str:
    """``text`` as a string that any terminal can print on one line (see the module docstring)."""
    value = str(text)
    try:
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that did not come from a file name
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        value = "".join(
            c if ord(c) >= 32 and ord(c) != 127 else c.encode("unicode_escape").decode("ascii")
            for c in value
        )
    return value


class DataError(ValueError):
    """A dataset folder, file or data option that cannot be used as given."""

    def __init__(self, message: object = "", *args: object) -> None:
        super().__init__(printable(message), *args)


def warn(warnings: list[str], message: str) -> None:
    """Log ``message`` on the data logger and keep it in ``warnings``."""
    message = printable(message)
    LOGGER.warning(message)
    warnings.append(message)
