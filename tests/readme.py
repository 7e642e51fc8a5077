"""Helpers to run the README's examples as tests."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def section(heading: str) -> str:
    """The text of the README section under ``## heading`` (up to the next ``## ``)."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"README has no section '## {heading}'"
    return match.group(1)


def code_blocks(heading: str, language: str = "python") -> list[str]:
    """The fenced code blocks of one README section, in order."""
    return re.findall(rf"```{language}\n(.*?)```", section(heading), flags=re.S)
