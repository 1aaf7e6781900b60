"""Text from outside (AimHarder's answers, rows, errors) made fit for a log line, an
`error_message` or a table cell: one printable line of bounded length."""

from __future__ import annotations

from typing import Any

# Deeper than json.loads allows is deeper than repr can go: such a value is shown as this.
TOO_DEEP = "(nested too deeply)"


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, "..." marking the cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 3, 0)] + "..."


def one_line(value: Any, limit: int) -> str:
    """Any value as one printable line of at most `limit` characters.

    Text is taken as it is, bytes are decoded, anything else is shown by `repr`. Runs of
    whitespace (newlines too) become one space and what is not printable (NUL, escape
    sequences) becomes U+FFFD: what an answer or a row holds never reaches a terminal,
    the journal or a row raw."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        try:
            text = repr(value)
        except RecursionError:
            text = TOO_DEEP
    text = clip(" ".join(text.split()), limit)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "\N{REPLACEMENT CHARACTER}" for c in text)
    return text
