"""How `prebookd box` shows boxes: `box list` (a table, or `--json`), and the short
forms of a box's booking window, cancellation cutoff and proxy (masked) that `box add`
and `box set` print."""

from __future__ import annotations

import argparse
from typing import Any

from prebookd import timeparse
from prebookd.cli.common import database, iso_or_none, print_json, print_table
from prebookd.db import admin_store
from prebookd.proxies import mask_proxy_url
from prebookd.settings import Settings


async def box_list(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as conn:
        boxes = await admin_store.list_boxes(conn)
    if args.json:
        print_json([box_json(box) for box in boxes])
    elif not boxes:
        print("no boxes: add one with `prebookd box add`")
    else:
        print_table(
            ("SUBDOMAIN", "BOX ID", "NAME", "TIME ZONE", "BASE URL", "ID", "CUTOFF", "WINDOW"),
            [
                (
                    b.subdomain,
                    b.box_id,
                    b.name,
                    b.timezone,
                    b.base_url,
                    b.id,
                    timeparse.format_cutoff(b.cancel_cutoff_seconds),
                    window_code(b),
                )
                for b in boxes
            ],
        )
    return 0


def box_json(box: admin_store.Box) -> dict[str, Any]:
    return {
        "id": str(box.id),
        "box_id": box.box_id,
        "subdomain": box.subdomain,
        "name": box.name,
        "base_url": box.base_url,
        "timezone": box.timezone,
        "booking_window": window_code(box) or None,
        "cancel_cutoff": timeparse.format_cutoff(box.cancel_cutoff_seconds) or None,
        "proxy_url": mask_proxy_url(box.proxy_url) if box.proxy_url else None,
        "created_at": iso_or_none(box.created_at),
    }


def window_code(box: admin_store.Box) -> str:
    window = timeparse.window_from_columns(box.booking_window_kind, box.booking_window_length)
    return window.code if window else ""


def cutoff_code(box: admin_store.Box) -> str:
    """The box's cancellation cutoff as `box set` says it changed."""
    shown = timeparse.format_cutoff(box.cancel_cutoff_seconds)
    return shown or "none (watch_cutoff)"


def proxy_shown(box: admin_store.Box) -> str:
    return mask_proxy_url(box.proxy_url) if box.proxy_url else "none (PREBOOKD_PROXY_URL)"
