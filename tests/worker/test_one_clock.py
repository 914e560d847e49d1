"""One clock: no module of the worker reads the time or sleeps but through its ``Clock``.

Walks the syntax of every module of ``sluice_worker``: no ``import time`` / ``from time import``, no
``asyncio.sleep``, no ``sluice.protocol.now_ms`` (the real wall clock). Exempt: ``demo.py``, the demo
*tasks* (user code the worker runs, not the worker). Loop-time timeouts (``asyncio.timeout``,
``asyncio.wait(timeout=...)``) bound waits on the broker; they read no clock of the worker's.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sluice_worker

PACKAGE = Path(sluice_worker.__file__).resolve().parent
EXEMPT = {"demo.py"}


def _offences(path: Path, root: Path = PACKAGE) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name == "time"]
        elif isinstance(node, ast.ImportFrom):
            if node.module == "time":
                found.append(f"{where} from time import ...")
            if node.module == "asyncio" and any(a.name == "sleep" for a in node.names):
                found.append(f"{where} from asyncio import sleep")
            if any(a.name == "now_ms" for a in node.names):
                found.append(f"{where} from {node.module} import now_ms")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and (node.value.id, node.attr) in {("asyncio", "sleep"), ("time", "time"), ("time", "monotonic")}
        ):
            found.append(f"{where} {node.value.id}.{node.attr}")
    return found


def test_the_worker_reads_time_only_through_its_clock() -> None:
    modules = sorted(p for p in PACKAGE.rglob("*.py") if p.name not in EXEMPT)
    assert len(modules) > 20 and any(p.parent.name == "policies" for p in modules)
    offences = [o for p in modules for o in _offences(p)]
    assert offences == []


def test_the_walk_finds_what_it_looks_for(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text(
        "import time\nimport asyncio\nfrom sluice.protocol import now_ms\n"
        "async def f():\n    await asyncio.sleep(1)\n    return time.monotonic()\n"
    )
    assert len(_offences(src, tmp_path)) == 4
