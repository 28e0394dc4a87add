"""Markdown tables for the README, made from the definitions themselves.

``python -m audioserver.docs`` prints them, ``--write`` puts them into the
README between its ``<!-- name:begin -->`` and ``<!-- name:end -->`` markers;
a test checks that the README holds exactly these tables, so the
documentation cannot drift from the code.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from .audio.steps import Param, catalogue
from .config import SETTINGS


def _range(param: Param) -> str:
    high = (
        f"{param.max_rate_fraction:g} x sample rate"
        if param.max_rate_fraction
        else f"{param.max:g}"
    )
    return f"{param.min:g} .. {high}"


def steps_table() -> str:
    """The catalogue of steps as a Markdown table."""
    lines = [
        "| step | kind | parameters (default, range, unit) | example |",
        "|---|---|---|---|",
    ]
    for step in catalogue():
        params = "<br>".join(
            f"`{p.name}` ({'required' if p.default is None else f'{p.default:g}'}, "
            f"{_range(p)}{', ' + p.unit if p.unit else ''})"
            for p in step.params
        )
        lines.append(
            f"| `{step.name}` | {step.kind} | {params or '-'} | `{step.example or step.name}` |"
        )
    descriptions = [f"- `{step.name}`: {step.description}" for step in catalogue()]
    return "\n".join([*lines, "", *descriptions])


def settings_table() -> str:
    """The settings as a Markdown table."""
    lines = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for setting in SETTINGS:
        default = f"`{setting.default}`" if setting.default != "" else "(none)"
        if setting.name == "WORKERS":
            default = "number of cores"
        env = setting.env_name + (f" or {setting.name}" if setting.plain_env else "")
        lines.append(f"| `{setting.flag}` | `{env}` | {default} | {setting.help} |")
    return "\n".join(lines)


SECTIONS = {"steps": steps_table, "settings": settings_table}


def write_readme(path: Path) -> None:
    """Replace every generated section of the README with its current table."""
    text = path.read_text()
    for name, table in SECTIONS.items():
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(\n<!-- {name}:end -->)", re.S)

        def fill(match: re.Match[str], table: Callable[[], str] = table) -> str:
            return match[1] + table() + match[2]

        text = pattern.sub(fill, text)
    path.write_text(text)


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        write_readme(Path(__file__).resolve().parent.parent / "README.md")
    else:
        print(steps_table(), "", settings_table(), sep="\n")
