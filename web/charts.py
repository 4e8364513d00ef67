"""Server-rendered bar charts as plain data for an SVG template (no JavaScript, no CDN).

A chart is computed here (bar rectangles in SVG user units) and drawn by
``templates/web/chart.html``, which also renders the numbers as a table for screen readers.
"""

from dataclasses import dataclass, field
from decimal import Decimal

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 70, 10, 10, 40


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    css: str
    title: str


@dataclass
class BarChart:
    """Stacked bars, one per label; ``series`` is ``[(name, css class, values)]``."""

    title: str
    labels: list[str]
    series: list[tuple[str, str, list[Decimal]]]
    unit: str = ""
    bars: list[Bar] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    label_x: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT

    @property
    def rows(self) -> list[tuple[str, list[Decimal]]]:
        return [(lab, [s[2][i] for s in self.series]) for i, lab in enumerate(self.labels)]

    @property
    def empty(self) -> bool:
        return not self.labels


def bar_chart(
    title: str,
    labels: list[str],
    series: list[tuple[str, str, list[Decimal]]],
    unit: str = "",
) -> BarChart:
    """Lay out a stacked bar chart. Values must be ≥ 0; the scale starts at 0."""
    chart = BarChart(title=title, labels=labels, series=series, unit=unit)
    if not labels:
        return chart
    totals = [sum((s[2][i] for s in series), Decimal(0)) for i in range(len(labels))]
    top = max(totals) or Decimal(1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / len(labels)
    bar_w = max(2.0, slot * 0.7)
    for i, lab in enumerate(labels):
        x = LEFT + i * slot + (slot - bar_w) / 2
        base = float(TOP + plot_h)
        for name, css, values in series:
            h = float(values[i] / top) * plot_h
            if h > 0:
                base -= h
                chart.bars.append(
                    Bar(
                        round(x, 1),
                        round(base, 1),
                        round(bar_w, 1),
                        round(h, 1),
                        css,
                        f"{lab} · {name}: {values[i]:,} {unit}".strip(),
                    )
                )
        chart.label_x.append((round(x + bar_w / 2, 1), lab))
    for k in range(5):
        value = top * k / 4
        chart.ticks.append((round(TOP + plot_h - plot_h * k / 4, 1), f"{value:,.0f}"))
    return chart
