"""Every command and every parameter of the CLI says what it is for."""

from __future__ import annotations

import typer

from edge_agent.cli import app


def walk(cmd, path: str = "edge-agent"):
    yield path, cmd
    for name, sub in (getattr(cmd, "commands", None) or {}).items():
        yield from walk(sub, f"{path} {name}")


def test_every_command_and_parameter_has_help():
    missing = []
    commands = list(walk(typer.main.get_command(app)))
    assert len(commands) > 25
    for path, cmd in commands:
        if not (cmd.help or cmd.short_help):
            missing.append(path)
        for p in cmd.params:
            if p.name != "help" and not getattr(p, "help", None):
                missing.append(f"{path} {p.name}")
    assert not missing, f"no help text: {missing}"
