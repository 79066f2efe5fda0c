"""Registry of the command modules of each area; each module exposes `commands`."""

from __future__ import annotations

import importlib

import click

# Each module holds thin click commands for one area and a list named `commands`.
AREAS = ("replay", "run", "models", "batch", "serve", "query", "speed")


def all_commands() -> list[click.Command]:
    found: list[click.Command] = []
    for area in AREAS:
        module = importlib.import_module(f"prognos.cli.{area}")
        found.extend(module.commands)
    return found
