"""The README's code runs, and prints what the README says it prints.

Every ```python block of README.md is run, in order, in one shared namespace (later
blocks use what the tutorial defined). A ```text block that directly follows a python
block (only blank lines between) is that block's expected output, compared exactly.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    line: int
    code: str
    output: str | None


def runnable_blocks(text: str) -> list[Block]:
    fences = list(_FENCE.finditer(text))
    blocks = []
    for i, fence in enumerate(fences):
        if fence.group(1) != "python":
            continue
        output = None
        if i + 1 < len(fences):
            after = fences[i + 1]
            if after.group(1) == "text" and not text[fence.end() : after.start()].strip():
                output = after.group(2)
        line = text.count("\n", 0, fence.start()) + 1
        blocks.append(Block(line, fence.group(2), output))
    return blocks


def test_readme_opens_with_the_two_commands() -> None:
    text = README.read_text()
    first_fence = _FENCE.search(text)
    assert first_fence is not None
    assert first_fence.group(1) == "sh"
    commands = [line.split("#")[0].strip() for line in first_fence.group(2).splitlines()]
    assert commands == ["make demo", "make test"]


def test_readme_has_a_tutorial_with_runnable_code() -> None:
    blocks = runnable_blocks(README.read_text())
    assert len(blocks) >= 5
    tutorial = "\n".join(b.code for b in blocks[:2])
    for needed in ("class Account(Agent)", "node.cast(", "node.call(", "node.state("):
        assert needed in tutorial
    assert sum(b.output is not None for b in blocks) >= 4


def test_readme_code_blocks_run_and_print_what_the_readme_shows() -> None:
    namespace: dict[str, object] = {"__name__": "readme"}
    for block in runnable_blocks(README.read_text()):
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            try:
                exec(compile(block.code, f"README.md:{block.line}", "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"README.md block at line {block.line} raised") from error
        if block.output is not None:
            assert stdout.getvalue() == block.output, f"output of README.md line {block.line}"
