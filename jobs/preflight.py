"""Pre-flight a submitted job runs first, in the interpreter the job will use (stdlib only, so it runs on any Python 3
a cluster offers): one line naming what that interpreter lacks, instead of a traceback from deep in the job.

    python -m jobs.preflight && python -m jobs.run_images ...
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def requirements(pyproject: str) -> tuple[tuple[int, int] | None, list[str]]:
    """(minimum Python, distribution names) from pyproject.toml's [project] table (read with a regex: tomllib is
    3.11+ and the interpreter under test may be older)."""
    m = re.search(r'requires-python\s*=\s*">=\s*(\d+)\.(\d+)', pyproject)
    block = re.search(r"^dependencies\s*=\s*\[(.*?)^\]", pyproject, re.S | re.M)
    names = [re.match(r"[A-Za-z0-9_.-]+", d).group(0) for d in re.findall(r'"([^"]+)"', block.group(1))] if block else []
    return ((int(m.group(1)), int(m.group(2))) if m else None), names


def problems(pyproject: str) -> list[str]:
    from importlib import metadata

    minimum, names = requirements(pyproject)
    out = []
    if minimum and sys.version_info[:2] < minimum:
        out.append(f"Python {'.'.join(map(str, sys.version_info[:2]))} (dynagen needs >= {'.'.join(map(str, minimum))})")
    missing = []
    for name in names:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        out.append("missing " + ", ".join(missing))
    return out


def main() -> int:
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    found = problems(pyproject.read_text()) if pyproject.is_file() else []
    if found:
        print(f"error: the job's python on the cluster ({sys.executable}) cannot run dynagen: {'; '.join(found)}. "
              "Start the Ray head "
              "from dynagen's environment (its python first on PATH; or the dynagen image), or submit with --python "
              "/path/to/a/python/that/has/dynagen's/dependencies", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
