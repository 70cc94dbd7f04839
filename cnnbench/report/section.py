"""What every report section returns: an anchor, a title and its HTML."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    html: str
