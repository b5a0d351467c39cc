"""Print setup.cfg's requirements one per line (a pip requirements file).

The Makefile's CPU install uses it, so setup.cfg stays the one source of truth.
"""

from __future__ import annotations

import argparse
import configparser
import re
from pathlib import Path


def requirements(setup_cfg: Path, skip: set[str], extras: list[str]) -> list[str]:
    """Return install_requires (plus the named extras) minus the packages in ``skip``."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    lines = parser["options"]["install_requires"].split("\n")
    for extra in extras:
        lines += parser["options.extras_require"][extra].split("\n")
    kept = []
    for line in (item.strip() for item in lines):
        if not line:
            continue
        name = re.split(r"[\[<>=!~ ;]", line, maxsplit=1)[0].lower()
        if name not in skip:
            kept.append(line)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip", nargs="*", default=[])
    parser.add_argument("--extras", nargs="*", default=[])
    args = parser.parse_args()
    setup_cfg = Path(__file__).resolve().parent.parent / "setup.cfg"
    reqs = requirements(setup_cfg, {s.lower() for s in args.skip}, args.extras)
    print("\n".join(reqs))


if __name__ == "__main__":
    main()
