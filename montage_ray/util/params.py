"""Parameter records from keywords: a function that takes small frozen records still takes its old keywords.

A builder whose parameters travel in groups takes one record per group (what to encode, how, where); a
caller that still passes the fields one by one as keywords gets the same records, made here::

    @dataclass(frozen=True)
    class Look:
        sar: str | None = None
        frame_filter: str | None = None

    def build(path, look: Look | None = None, **keywords):
        (look,) = records(keywords, (look, Look))
        ...

    build("a.nut", sar="1:1")                  # the same as build("a.nut", Look(sar="1:1"))
    build("a.nut", Look(sar="1:1"), sar="4:3")  # a keyword replaces that field of the record given
    build("a.nut", tag="x")                    # TypeError: build() got an unexpected keyword argument 'tag'

Field names are unique across the records of one function, so each keyword has one home.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Mapping


def records(keywords: Mapping[str, Any], *given: tuple[Any, type]) -> list[Any]:
    """For each ``(record or None, its class)``: the record with the ``keywords`` that are its fields
    replaced (None: made from those keywords and the class's defaults). TypeError, as Python gives for an
    unknown keyword or a missing required one, naming the calling function."""
    rest = dict(keywords)
    out = []
    caller = sys._getframe(1).f_code.co_name
    for record, kind in given:
        names = {f.name for f in dataclasses.fields(kind)}
        mine = {name: rest.pop(name) for name in list(rest) if name in names}
        try:
            out.append(dataclasses.replace(record, **mine) if record is not None else kind(**mine))
        except TypeError as err:
            raise TypeError(f"{caller}(): {err}") from None
    if rest:
        raise TypeError(f"{caller}() got an unexpected keyword argument {sorted(rest)[0]!r}")
    return out
