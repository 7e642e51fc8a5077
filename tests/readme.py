"""Helpers to run the examples of the README and the pages in docs/ as tests."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", flags=re.S | re.M)


def section(heading: str, page: str = "README.md") -> str:
    """The text under the heading ``heading`` of ``page`` (any level), up to the next heading of the same or a
    higher level; lines inside fenced code blocks are never taken for headings."""
    lines = (ROOT / page).read_text().splitlines(keepends=True)
    start, level, fenced = None, 0, False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"^(#+) (.*)\n?$", line)
        if match and start is None and match.group(2) == heading:
            start, level = i + 1, len(match.group(1))
        elif match and start is not None and len(match.group(1)) <= level:
            return "".join(lines[start:i])
    assert start is not None, f"{page} has no section '{heading}'"
    return "".join(lines[start:])


def code_blocks(heading: str, language: str = "python", page: str = "README.md") -> list[str]:
    """The fenced code blocks of one section, in order."""
    return [body for lang, body in FENCE.findall(section(heading, page)) if lang == language]


def commands(heading: str, page: str = "README.md") -> list[str]:
    """The shell command lines of one section's ``bash`` blocks, continued lines joined."""
    blocks = [block.replace("\\\n", " ") for block in code_blocks(heading, "bash", page)]
    return [line for block in blocks for line in block.strip().splitlines()]


def subcommand_lines(help_text: str) -> list[str]:
    """The subcommands ``--help`` lists: the names that open a line of the ``COMMAND`` block (argparse indents
    them by 4 spaces, their wrapped descriptions further)."""
    block = help_text.split("COMMAND\n", 2)[-1].split("\n\n")[0]
    return [match.group(1) for match in re.finditer(r"^ {4}(\S+)(?: {2,}|$)", block, flags=re.M)]
