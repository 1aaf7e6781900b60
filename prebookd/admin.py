"""Producer-side commands: `box add|list`, `add`, `list`, `cancel` (work in progress)."""

from __future__ import annotations

import argparse
from typing import Any


def add_admin_parsers(commands: Any) -> None:
    del commands
