"""docs/testing.md shows the example test as it is: each code block headed by ``# <path>`` is in that file."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"```python\n# (?P<path>\S+)\n(?P<code>.*?)```", re.S)


def test_every_block_named_after_a_file_is_in_that_file() -> None:
    page = (REPO / "docs" / "testing.md").read_text()
    blocks = list(BLOCK.finditer(page))
    assert {b["path"] for b in blocks} == {"tests/testing/example_tasks.py", "tests/testing/test_example.py"}
    for b in blocks:
        assert b["code"] in (REPO / b["path"]).read_text(), (
            f"docs/testing.md's {b['path']} differs from the file"
        )


def test_the_readme_lists_the_page() -> None:
    assert "(docs/testing.md)" in (REPO / "README.md").read_text()
