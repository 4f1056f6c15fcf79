"""Plots for the dashboard as inline SVG: pure functions from numbers to geometry to markup.

No JavaScript library and no image files: the server draws every plot, and the same
geometry (``LineGeometry``) goes to the browser in ``/ui/dashboard.json`` so that
``static/dashboard.js`` can move the points of a plot in place (it sets attributes and
``textContent`` only). Titles and labels are escaped; every coordinate is a finite number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# The left pad holds the widest y label ".3g" writes ("-1.23e-05", a discriminator score)
# right of the scatter's rotated axis title, in the page's 10 px sans font.
PAD_L, PAD_R, PAD_T, PAD_B = 64, 10, 14, 28


@dataclass(frozen=True)
class Series:
    """One line plot: (t, y) points with the y range to draw."""

    title: str
    points: list[tuple[float, float]]
    ymin: float
    ymax: float
    unit: str = ""


@dataclass(frozen=True)
class Outcome:
    """What the per-minute plots need of one finished query."""

    status: str
    updated_at: float
    finished_at: float | None
    deadline: float | None
    quality: float | None


def per_minute(rows: Iterable[Outcome], since: float, bucket_s: float = 60.0
               ) -> tuple[Series, Series]:
    """SLO violation ratio and mean quality of served images per bucket since ``since``.
    A violation is a dropped query or one that finished after its deadline."""
    n: dict[int, int] = {}
    bad: dict[int, int] = {}
    qsum: dict[int, float] = {}
    qn: dict[int, int] = {}
    for r in rows:
        b = int((r.updated_at - since) // bucket_s)
        n[b] = n.get(b, 0) + 1
        late = r.status == "dropped" or (r.finished_at is not None and r.deadline is not None
                                         and r.finished_at > r.deadline)
        bad[b] = bad.get(b, 0) + int(late)
        if r.status == "done" and r.quality is not None and math.isfinite(r.quality):
            qsum[b] = qsum.get(b, 0.0) + r.quality
            qn[b] = qn.get(b, 0) + 1
    viol = [(since + (b + 0.5) * bucket_s, bad[b] / n[b]) for b in sorted(n)]
    qual = [(since + (b + 0.5) * bucket_s, qsum[b] / qn[b]) for b in sorted(qn)]
    qs = [y for _, y in qual]
    lo, hi = (min(qs), max(qs)) if qs else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    return (Series("SLO violation ratio", viol, 0.0, 1.0),
            Series("Mean quality of served images", qual, lo, hi))


@dataclass(frozen=True)
class LineGeometry:
    """A line plot in pixels: what the page draws and what the live update moves."""

    id: str
    points: str  # the polyline's "x,y x,y ..."
    dots: list[tuple[float, float]]
    ymin: str
    ymax: str

    def to_json(self) -> dict:
        return {"id": self.id, "points": self.points, "dots": [list(d) for d in self.dots],
                "ymin": self.ymin, "ymax": self.ymax}


def _scale(v: float, lo: float, hi: float, a: float, b: float) -> float:
    """``v`` in [lo, hi] to [a, b] (the middle when the range is empty), rounded to 0.1."""
    f = 0.5 if hi - lo < 1e-12 else (v - lo) / (hi - lo)
    return round(a + min(max(f, -0.05), 1.05) * (b - a), 1)


def line_geometry(plot_id: str, sr: Series, t0: float, t1: float, w: int = 420,
                  h: int = 160) -> LineGeometry:
    """Pixel coordinates of ``sr`` on a ``w`` x ``h`` plot spanning [t0, t1]."""
    x0, x1, y0, y1 = PAD_L, w - PAD_R, h - PAD_B, PAD_T
    pts = [(_scale(t, t0, t1, x0, x1), _scale(v, sr.ymin, sr.ymax, y0, y1))
           for t, v in sr.points if math.isfinite(t) and math.isfinite(v)]
    return LineGeometry(plot_id, " ".join(f"{x},{y}" for x, y in pts), pts,
                        f"{sr.ymin:.3g}", f"{sr.ymax:.3g}")


def _axes(w: int, h: int) -> str:
    x0, x1, y0, y1 = PAD_L, w - PAD_R, h - PAD_B, PAD_T
    return (f'<line class="axis" x1="{x0}" y1="{y1}" x2="{x0}" y2="{y0}" stroke="#888"/>'
            f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#888"/>')


def svg_plot(title: str, geo: LineGeometry, w: int = 420, h: int = 160) -> Markup:
    """An inline SVG line plot: axes, y range labels, one polyline, a dot per point."""
    x0, x1, y0, y1 = PAD_L, w - PAD_R, h - PAD_B, PAD_T
    dots = "".join(f'<circle cx="{x}" cy="{y}" r="2.5"/>' for x, y in geo.dots)
    t = escape(title)
    return Markup(
        f'<svg class="plot" id="{escape(geo.id)}" role="img" aria-label="{t}" width="{w}" '
        f'height="{h}" viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg">'
        f'<title>{t}</title>{_axes(w, h)}'
        f'<text class="ymax" x="{x0 - 4}" y="{y1 + 4}" text-anchor="end" font-size="10">'
        f'{escape(geo.ymax)}</text>'
        f'<text class="ymin" x="{x0 - 4}" y="{y0}" text-anchor="end" font-size="10">'
        f'{escape(geo.ymin)}</text>'
        f'<text x="{x0}" y="{h - 12}" font-size="10">-60 min</text>'
        f'<text x="{x1}" y="{h - 12}" text-anchor="end" font-size="10">now</text>'
        f'<polyline class="line" fill="none" stroke="#1f6feb" stroke-width="2" '
        f'points="{geo.points}"/><g class="dots" fill="#1f6feb">{dots}</g>'
        f'<text class="empty" x="{(x0 + x1) / 2:.0f}" y="{(y0 + y1) / 2:.0f}" '
        f'text-anchor="middle" display="{"none" if geo.dots else "inline"}">no data</text>'
        f'</svg>')


@dataclass(frozen=True)
class ScatterPoint:
    """One configuration of a pair: x = service seconds per query, y = quality (FID)."""

    key: str  # the row key shared with the table row (``data-row``)
    x: float
    y: float
    front: bool
    label: str  # the tooltip


def svg_scatter(title: str, points: Sequence[ScatterPoint], active: str | None,
                xlabel: str, ylabel: str, w: int = 420, h: int = 240) -> Markup:
    """A scatter plot of ``points`` with the front joined by a line (in x order) and the
    ``active`` point marked (class ``active``; a ring drawn by the stylesheet)."""
    x0, x1, y0, y1 = PAD_L, w - PAD_R, h - PAD_B, PAD_T
    pts = [p for p in points if math.isfinite(p.x) and math.isfinite(p.y)]
    xs, ys = [p.x for p in pts] or [0.0, 1.0], [p.y for p in pts] or [0.0, 1.0]
    xlo, xhi, ylo, yhi = min(xs), max(xs), min(ys), max(ys)

    def px(p: ScatterPoint) -> tuple[float, float]:
        return _scale(p.x, xlo, xhi, x0, x1), _scale(p.y, ylo, yhi, y0, y1)

    front = sorted((p for p in pts if p.front), key=lambda p: (p.x, p.y))
    line = " ".join("{},{}".format(*px(p)) for p in front)
    dots = []
    for p in pts:
        cx, cy = px(p)
        cls = "pt" + (" front" if p.front else "") + (" active" if p.key == active else "")
        dots.append(f'<circle class="{cls}" data-row="{escape(p.key)}" cx="{cx}" cy="{cy}" '
                    f'r="3.5"><title>{escape(p.label)}</title></circle>')
    t = escape(title)
    return Markup(
        f'<svg class="scatter" role="img" aria-label="{t}" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg"><title>{t}</title>'
        f'{_axes(w, h)}'
        f'<text x="{x0 - 4}" y="{y1 + 4}" text-anchor="end" font-size="10">{yhi:.3g}</text>'
        f'<text x="{x0 - 4}" y="{y0}" text-anchor="end" font-size="10">{ylo:.3g}</text>'
        f'<text x="{x0}" y="{y0 + 12}" font-size="10">{xlo:.3g}</text>'
        f'<text x="{x1}" y="{y0 + 12}" text-anchor="end" font-size="10">{xhi:.3g}</text>'
        f'<text x="{(x0 + x1) / 2:.0f}" y="{h - 2}" text-anchor="middle" font-size="11">'
        f'{escape(xlabel)}</text>'
        f'<text x="12" y="{(y0 + y1) / 2:.0f}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {(y0 + y1) / 2:.0f})">{escape(ylabel)}</text>'
        f'<polyline class="front-line" fill="none" points="{line}"/>'
        f'<g class="pts">{"".join(dots)}</g></svg>')
