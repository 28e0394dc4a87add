"""Markdown tables for the README, made from the definitions themselves.

``python -m audioserver.docs`` prints them; a test checks that the README
holds exactly these tables, so the documentation cannot drift from the code.
"""

from __future__ import annotations

from .audio.steps import Step
from .config import SETTINGS


def _range(param) -> str:
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
    for step in Step.registry.values():
        params = "<br>".join(
            f"`{p.name}` ({'required' if p.default is None else f'{p.default:g}'}, "
            f"{_range(p)}{', ' + p.unit if p.unit else ''})"
            for p in step.params
        )
        lines.append(
            f"| `{step.name}` | {step.kind} | {params or '-'} | `{step.example or step.name}` |"
        )
    descriptions = [f"- `{step.name}`: {step.description}" for step in Step.registry.values()]
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


if __name__ == "__main__":
    print(steps_table(), "", settings_table(), sep="\n")
