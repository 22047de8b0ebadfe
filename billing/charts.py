"""Server-rendered SVG bar charts: no JavaScript, no CDN, readable without colour."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class Bar:
    label: str
    value: Decimal
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class BarChart:
    bars: list[Bar]
    width: int
    height: int
    maximum: Decimal

    @property
    def empty(self) -> bool:
        return not any(bar.value for bar in self.bars)


def bar_chart(points: list[tuple[str, Decimal]], *, width: int = 600, height: int = 160, gap: float = 2,
              horizontal: bool = False) -> BarChart:
    """Bars scaled to the largest value, in the SVG's own units (columns, or rows if `horizontal`)."""
    maximum = max((value for _label, value in points), default=Decimal(0))
    slot = (height if horizontal else width) / max(len(points), 1)
    bars = []
    for index, (label, value) in enumerate(points):
        share = float(value / maximum) if maximum else 0.0
        if horizontal:
            bar = Bar(label=label, value=value, x=0, y=index * slot + gap / 2, width=share * width,
                      height=max(slot - gap, 1))
        else:
            bar = Bar(label=label, value=value, x=index * slot + gap / 2, y=height - share * height,
                      width=max(slot - gap, 1), height=share * height)
        bars.append(bar)
    return BarChart(bars=bars, width=width, height=height, maximum=maximum)
