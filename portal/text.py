"""Checks on text before it reaches a database."""

from __future__ import annotations


def encodes_as_utf8(text: str) -> bool:
    """Whether the text encodes as UTF-8: no unpaired surrogate, which no database stores."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
