"""Write docs/cli.md from the Typer app itself, so the reference never drifts from the code.

    python scripts/gen_cli_docs.py            # rewrite docs/cli.md
    python scripts/gen_cli_docs.py --check    # exit 1 if docs/cli.md is out of date (used by the tests)
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from unlearnctl.cli.app import app

TARGET = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def _option_row(param) -> str:
    names = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    help_text = " ".join((getattr(param, "help", None) or "").split())
    default = param.default
    shown = "" if default is None or callable(default) or param.required else f" (default: `{default}`)"
    required = " **required**" if param.required else ""
    return f"| {names} | {help_text}{shown}{required} |"


def _command_section(name: str, command, parents: str = "unlearnctl") -> list[str]:
    path = f"{parents} {name}"
    lines = [f"## `{path}`", "", " ".join((command.help or "").split()), ""]
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for sub_name, sub in sorted(subcommands.items()):
            lines += _command_section(sub_name, sub, path)
        return lines
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    options = [p for p in command.params if p.param_type_name == "option" and p.name != "help"]
    usage = " ".join([path, *(f"{a.name.upper()}" for a in arguments), "[OPTIONS]"])
    lines += ["```", usage, "```", ""]
    if arguments:
        lines += ["| argument | meaning |", "|---|---|"]
        lines += [f"| `{a.name.upper()}` | {' '.join((getattr(a, 'help', None) or '').split())} |" for a in arguments]
        lines.append("")
    if options:
        lines += ["| option | meaning |", "|---|---|", *(_option_row(p) for p in options), ""]
    return lines


def render() -> str:
    group = typer.main.get_command(app)
    lines = [
        "# Command reference",
        "",
        "Generated from the code by `python scripts/gen_cli_docs.py`; `unlearnctl COMMAND --help` shows the same.",
        "",
        "Exit codes: 0 ok · 1 runtime failure · 2 bad input or usage (one line on stderr, no output written) · "
        "3 a `--gate` failed · 130 interrupted. `UNLEARNCTL_DEBUG=1` prints full tracebacks.",
        "",
    ]
    for name, command in group.commands.items():
        lines += _command_section(name, command)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if TARGET.exists() and TARGET.read_text() == text else 1)
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
