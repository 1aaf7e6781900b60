"""`prebookd simulate` (work in progress)."""

from __future__ import annotations

from typing import Any


def add_simulate_parser(commands: Any) -> None:
    del commands
