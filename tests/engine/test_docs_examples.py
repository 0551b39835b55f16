"""Every python block of docs/examples.md runs, as written, against the real server."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples.md"


def _blocks() -> list[tuple[str, str]]:
    """(heading, code) for each ```python block, named by the section it sits in."""
    blocks, heading = [], "top"
    for part in re.split(r"(^## [^\n]*$|^```python\n.*?^```$)", EXAMPLES.read_text(), flags=re.M | re.S):
        if part.startswith("## "):
            heading = part[3:].strip()
        elif part.startswith("```python"):
            blocks.append((heading, part.removeprefix("```python\n").removesuffix("```")))
    return blocks


BLOCKS = _blocks()


def test_the_page_has_an_example_per_output_type():
    headings = " ".join(h for h, _ in BLOCKS)
    for kind in ("Pydantic", "TypedDict", "JSON schema", "Literal", "int", "Regex", "CFG", "JsonObject"):
        assert kind in headings


@pytest.mark.parametrize(("heading", "code"), BLOCKS, ids=[h for h, _ in BLOCKS])
def test_example_runs_against_the_server(heading, code, vllm_server, monkeypatch, capsys):
    monkeypatch.setenv("OUTLINES_VLLM_BASE_URL", vllm_server.base_url + "/v1")
    # Run as a module of its own, as a script would be: pydantic resolves types through it.
    module = types.ModuleType("docs_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, f"{EXAMPLES.name}: {heading}", "exec"), module.__dict__)
    assert capsys.readouterr().out.strip()  # every example shows its result
