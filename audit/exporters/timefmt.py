"""Event times as export text, fast: the same text as `audit.chain.format_time`."""

from __future__ import annotations

import datetime as dt

from audit.chain import format_time

_ZERO = dt.timedelta(0)


def utc_text(moment: dt.datetime | str) -> str:
    """UTC with microseconds and a Z (`2025-01-31T08:00:00.000000Z`), like `audit.chain.format_time`.

    Text is that form already (PostgreSQL wrote it with `PG_TIME_FORMAT`) and is returned as it is. Times read
    from the database are already UTC; `isoformat` (in C) writes them several times faster than `strftime`.
    Other offsets go through `format_time`.
    """
    if type(moment) is str:
        return moment
    if moment.utcoffset() == _ZERO and moment.year >= 1000:
        return moment.isoformat(timespec="microseconds")[:-6] + "Z"
    return format_time(moment)
