"""Figures and document rendering shared by the session report and the group report.

Drawing uses explicit ``matplotlib.figure.Figure`` objects on the Agg canvas
(``FigureCanvasAgg``), never pyplot: no figure registry, no backend switch and no open figure
leaks into the caller (a figure is freed when its last reference goes). All drawing happens
inside :func:`style`, which starts from matplotlib's defaults plus a fixed style and restores
the caller's rcParams afterwards, so a user's ``matplotlibrc`` cannot change the output.

Output is deterministic: PNGs are written without the ``Software`` tag, PDFs without dates and
with a fixed producer, so two runs on the same inputs give byte-identical files.

A report is a :class:`Document`: a title plus a list of blocks (headings, paragraphs, lists,
tables, figures, PNG images). :func:`render_html` turns it into one self-contained HTML file
(images embedded as base64 PNG) and :func:`render_pdf` into an A4 PDF with the same content.

Orientation: images are drawn from a grid reoriented to RAS+ (:func:`canonical`), and every
slice carries letters on its edges (L/R, A/P, S/I) computed from the affine — world
coordinates, never voxel axes — so a label is right whatever the input orientation (LAS, RAS,
oblique: the closest world axis is named).
"""
from __future__ import annotations

import base64
import html
import io
import textwrap
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

SIDE_COLORS = {"left": "#d62728", "right": "#1f77b4"}  # left red, right blue
HTML_DPI = 96
#: The PDF embeds the same PNGs as the HTML (one rendering per figure).
PDF_DPI = HTML_DPI
STYLE = {
    "font.family": "DejaVu Sans", "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7, "figure.titlesize": 9,
    "figure.dpi": HTML_DPI, "savefig.dpi": HTML_DPI, "savefig.facecolor": "white",
    "figure.facecolor": "white", "image.interpolation": "nearest", "image.origin": "lower",
    "axes.unicode_minus": True, "pdf.compression": 6, "svg.hashsalt": "cstbatch",
    "figure.max_open_warning": 0,
}
#: (negative, positive) letter per RAS+ world axis.
AXIS_LETTERS = (("L", "R"), ("P", "A"), ("I", "S"))


@contextmanager
def style() -> Iterator[None]:
    """Matplotlib defaults + :data:`STYLE` for the duration; the caller's rcParams come back."""
    import matplotlib

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(STYLE)
        yield


def new_figure(width: float, height: float):
    """A figure on its own Agg canvas (not known to pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=HTML_DPI)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig, dpi: int = HTML_DPI) -> bytes:
    """Deterministic PNG bytes of ``fig`` (no Software tag, no time)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, facecolor="white")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# --------------------------------------------------------------------------- orientation
def canonical(img):
    """``img`` reoriented to the closest RAS+ voxel order (nibabel ``as_closest_canonical``)."""
    import nibabel as nib

    return nib.as_closest_canonical(img)


def direction_letter(vec: Sequence[float]) -> str:
    """Letter of the RAS+ world axis closest to ``vec`` (e.g. (−1, 0.1, 0) → "L")."""
    v = np.asarray(vec, float)[:3]
    a = int(np.argmax(np.abs(v)))
    return AXIS_LETTERS[a][int(v[a] > 0)]


def world_centroid(mask: np.ndarray, affine) -> np.ndarray | None:
    """Mean RAS+ mm position of the voxels of ``mask`` (None when empty)."""
    ijk = np.argwhere(np.asarray(mask, bool))
    if not len(ijk):
        return None
    a = np.asarray(affine, float)
    return (ijk @ a[:3, :3].T + a[:3, 3]).mean(axis=0)


@dataclass(frozen=True)
class SliceView:
    """One 2-D slice of a 3-D grid as displayed (``imshow(..., origin="lower")``).

    ``axis``/``index``: the voxel axis held fixed and its index. The two remaining axes are
    displayed horizontally then vertically; ``hflip``/``vflip`` mirror them. Labels come from
    the affine, so they name world directions whatever the voxel order.
    """

    title: str
    axis: int
    index: int
    hflip: bool = False
    vflip: bool = False

    @property
    def plane(self) -> tuple[int, int]:
        h, v = (a for a in range(3) if a != self.axis)
        return h, v

    def take(self, vol: np.ndarray, slab: int = 0) -> np.ndarray:
        """The displayed 2-D array; ``slab`` > 0: any/max over ±slab slices (for masks)."""
        vol = np.asarray(vol)
        n = vol.shape[self.axis]
        idx = int(np.clip(self.index, 0, n - 1))
        if slab > 0:
            lo, hi = max(idx - slab, 0), min(idx + slab + 1, n)
            arr = np.take(vol, np.arange(lo, hi), axis=self.axis).max(axis=self.axis)
        else:
            arr = np.take(vol, idx, axis=self.axis)
        out = arr.T  # rows: vertical axis, columns: horizontal axis
        if self.hflip:
            out = out[:, ::-1]
        if self.vflip:
            out = out[::-1, :]
        return out

    def edge_labels(self, affine) -> dict[str, str]:
        """World letters of the displayed edges: ``left``, ``right``, ``bottom``, ``top``."""
        a = np.asarray(affine, float)[:3, :3]
        h, v = self.plane
        dh = a[:, h] * (-1.0 if self.hflip else 1.0)
        dv = a[:, v] * (-1.0 if self.vflip else 1.0)
        return {"right": direction_letter(dh), "left": direction_letter(-dh),
                "top": direction_letter(dv), "bottom": direction_letter(-dv)}

    def aspect(self, zooms) -> float:
        h, v = self.plane
        return float(zooms[v]) / float(zooms[h])

    def world_position(self, affine, shape) -> tuple[str, float]:
        """(world axis name, mm) of the slice centre along its closest world axis."""
        a = np.asarray(affine, float)
        c = (np.asarray(shape[:3], float) - 1) / 2
        c[self.axis] = self.index
        w = a[:3, :3] @ c + a[:3, 3]
        ax = int(np.argmax(np.abs(a[:3, self.axis])))
        return "xyz"[ax], float(w[ax])


def make_view(title: str, axis: int, index: int, affine, convention: str = "radiological") -> SliceView:
    """A view whose display follows ``convention`` (computed from the affine).

    Axial/coronal: ``radiological`` puts the subject's left on the image's right,
    ``neurological`` on its left; anterior (axial) and superior (coronal) up. Sagittal:
    anterior on the left, superior up.
    """
    a = np.asarray(affine, float)[:3, :3]
    h, v = (i for i in range(3) if i != axis)
    # the screen-right direction we want, per dominant world axis of the horizontal voxel axis
    want_right = {0: -1.0 if convention == "radiological" else 1.0, 1: -1.0, 2: 1.0}
    dh = int(np.argmax(np.abs(a[:, h])))
    dv = int(np.argmax(np.abs(a[:, v])))
    hflip = np.sign(a[dh, h]) != want_right[dh]
    vflip = a[dv, v] < 0  # up = A (axial) / S (coronal, sagittal)
    return SliceView(title, axis, int(index), bool(hflip), bool(vflip))


def label_edges(ax, labels: Mapping[str, str], size: float = 9) -> None:
    """Write the world letters on the four edges of an image axes (white, outlined)."""
    import matplotlib.patheffects as pe

    fx = [pe.withStroke(linewidth=2.2, foreground="black")]
    spots = {"left": (0.02, 0.5, "left", "center"), "right": (0.98, 0.5, "right", "center"),
             "top": (0.5, 0.98, "center", "top"), "bottom": (0.5, 0.02, "center", "bottom")}
    for edge, (x, y, ha, va) in spots.items():
        ax.text(x, y, labels[edge], transform=ax.transAxes, ha=ha, va=va, color="white",
                fontsize=size, fontweight="bold", path_effects=fx)


def draw_slice(ax, view: SliceView, background: np.ndarray, affine, zooms, *, vmin: float = 0.0,
               vmax: float = 1.0, overlays: Sequence[tuple[np.ndarray, str]] = (), slab: int = 0,
               contours: Sequence[tuple[np.ndarray, str]] = (), alpha: float = 0.7) -> None:
    """Background slice + coloured mask overlays (``slab``: ±slices projected) + contours."""
    from matplotlib.colors import to_rgba

    bg = view.take(background)
    aspect = view.aspect(zooms)
    ax.imshow(bg, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", aspect=aspect, interpolation="nearest")
    for mask, color in overlays:
        m = view.take(np.asarray(mask, bool), slab=slab)
        if not m.any():
            continue
        rgba = np.zeros(m.shape + (4,), np.float32)
        rgba[m] = to_rgba(color, alpha)
        ax.imshow(rgba, origin="lower", aspect=aspect, interpolation="nearest")
    for mask, color in contours:
        m = view.take(np.asarray(mask, bool)).astype(np.float32)
        if m.any() and not m.all():
            ax.contour(m, levels=[0.5], colors=[color], linewidths=0.8)
    ax.set_title(view.title)
    ax.set_xticks([])
    ax.set_yticks([])
    label_edges(ax, view.edge_labels(affine))


def robust_range(values: np.ndarray, lo: float = 1.0, hi: float = 99.5) -> tuple[float, float]:
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if not v.size:
        return 0.0, 1.0
    a, b = np.percentile(v, [lo, hi])
    return float(a), float(b if b > a else a + 1.0)


# --------------------------------------------------------------------------- documents
@dataclass(frozen=True)
class Link:
    """A table cell or list item that links (HTML) / reads as text (PDF)."""

    text: str
    href: str


@dataclass
class Block:
    kind: str  # h1 h2 h3 p ul table figure png
    text: str = ""
    items: list = field(default_factory=list)
    header: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    fig: Any = None
    png: bytes | None = None
    caption: str = ""
    css: str = ""
    anchor: str = ""  # HTML id
    _png_cache: dict = field(default_factory=dict, repr=False)

    def figure_png(self, dpi: int) -> bytes:
        if self.png is not None:
            return self.png
        if dpi not in self._png_cache:
            self._png_cache[dpi] = png_bytes(self.fig, dpi)
        return self._png_cache[dpi]


def H1(text, anchor=""): return Block("h1", text=text, anchor=anchor)  # noqa: E302,E704
def H2(text, anchor=""): return Block("h2", text=text, anchor=anchor)  # noqa: E302,E704
def H3(text, anchor=""): return Block("h3", text=text, anchor=anchor)  # noqa: E302,E704
def P(text, css=""): return Block("p", text=text, css=css)  # noqa: E302,E704
def UL(items, css=""): return Block("ul", items=list(items), css=css)  # noqa: E302,E704


def Table(header, rows, caption="", css=""):  # noqa: N802
    return Block("table", header=list(header), rows=[list(r) for r in rows], caption=caption, css=css)


def Fig(fig, caption=""):  # noqa: N802
    return Block("figure", fig=fig, caption=caption)


def Png(png: bytes, caption=""):  # noqa: N802
    return Block("png", png=png, caption=caption)


@dataclass
class Document:
    title: str
    blocks: list[Block]
    footer: str = ""
    script: str = ""  # inline JavaScript at the end of the HTML page (the PDF ignores it)


CSS = """
body{font-family:"DejaVu Sans",Arial,Helvetica,sans-serif;font-size:14px;color:#222;max-width:1080px;
margin:1.2em auto;padding:0 1em;line-height:1.4}
h1{font-size:1.55em;border-bottom:2px solid #444;padding-bottom:.2em}
h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #bbb}
h3{font-size:1.02em;margin-bottom:.3em}
table{border-collapse:collapse;margin:.4em 0 1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.failed td{background:#fde0e0} tr.skipped td,tr.pending td{background:#f4f4f4}
tr.flagged td{background:#fff4d6}
figure{margin:.6em 0 1.2em 0} figure img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.88em;color:#444;max-width:900px}
.summary{font-size:1.08em}
.warn{color:#8a4b00} ul.warn li{margin:.15em 0}
.ok{color:#2b6b2b}
.meta{color:#555}
.footer{margin-top:2em;font-size:.85em;color:#666;border-top:1px solid #ccc;padding-top:.5em}
caption{caption-side:top;text-align:left;font-weight:bold;padding:.2em 0}
table.sortable{display:block;max-height:75vh;overflow:auto}
table.sortable td:first-child{white-space:nowrap}
table.sortable th{cursor:pointer;position:sticky;top:0;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
"""


def _cell_html(value) -> str:
    if isinstance(value, Link):
        return f'<a href="{html.escape(value.href, quote=True)}">{html.escape(value.text)}</a>'
    return html.escape(cell_text(value))


def cell_text(value) -> str:
    if isinstance(value, Link):
        return value.text
    if value is None:
        return "n/a"
    return str(value)


def _is_num(value) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    if isinstance(value, str):
        s = value.replace("−", "-").replace("+", "").replace(",", "").strip()
        try:
            float(s.split()[0])
            return bool(s) and s[0] in "-0123456789."
        except (ValueError, IndexError):
            return False
    return False


def render_html(doc: Document, dpi: int = HTML_DPI) -> str:
    """One self-contained HTML page (inline CSS, figures as base64 PNG)."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(doc.title)}</title>", f"<style>{CSS}</style></head><body>"]
    for b in doc.blocks:
        cls = (f' id="{html.escape(b.anchor, quote=True)}"' if b.anchor else "") + \
            (f' class="{b.css}"' if b.css else "")
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}{cls}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p{cls}>{html.escape(b.text)}</p>")
        elif b.kind == "ul":
            out.append(f"<ul{cls}>" + "".join(f"<li>{_cell_html(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "table":
            rows = []
            for r in b.rows:
                rcls = ""
                if r and isinstance(r[-1], RowClass):
                    rcls, r = (f' class="{r[-1].css}"' if r[-1].css else ""), r[:-1]
                tds = "".join(f'<td class="num">{_cell_html(c)}</td>' if _is_num(c) and not isinstance(c, Link)
                              else f"<td>{_cell_html(c)}</td>" for c in r)
                rows.append(f"<tr{rcls}>{tds}</tr>")
            cap = f"<caption>{html.escape(b.caption)}</caption>" if b.caption else ""
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b.header)
            out.append(f"<table{cls}>{cap}<thead><tr>{head}</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
        elif b.kind in ("figure", "png"):
            alt = html.escape(textwrap.shorten(b.caption.split(". ")[0], 100) if b.caption else "figure", quote=True)
            cap = f"<figcaption>{html.escape(b.caption)}</figcaption>" if b.caption else ""
            out.append(f'<figure><img src="{data_uri(b.figure_png(dpi))}" alt="{alt}">{cap}</figure>')
    if doc.footer:
        out.append(f'<div class="footer">{html.escape(doc.footer)}</div>')
    if doc.script:
        out.append(f"<script>{doc.script}</script>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class RowClass:
    """Put as the last cell of a table row to give the row a CSS class (not displayed)."""

    css: str


# --------------------------------------------------------------------------- PDF
A4 = (8.27, 11.69)
MARGIN = 0.6


class _PdfFlow:
    """Lays blocks out top to bottom on A4 pages of a ``PdfPages``."""

    def __init__(self, pdf, footer: str):
        self.pdf, self.footer = pdf, footer
        self.fig = None
        self.y = 0.0  # inches from the top of the page
        self.page = 0
        self.width = A4[0] - 2 * MARGIN

    def _new_page(self) -> None:
        self._flush()
        self.fig = new_figure(*A4)
        self.page += 1
        self.y = MARGIN

    def _flush(self) -> None:
        if self.fig is not None:
            foot = f"{self.footer}  —  page {self.page}" if self.footer else f"page {self.page}"
            self.fig.text(0.5, 0.25 / A4[1], foot, ha="center", va="bottom", fontsize=6.5, color="#666",
                          parse_math=False)
            self.pdf.savefig(self.fig)
            self.fig = None

    def _room(self, height: float) -> None:
        if self.fig is None or self.y + height > A4[1] - MARGIN:
            self._new_page()

    def lines(self, lines: Sequence[str], size: float = 9.0, weight: str = "normal",
              family: str = "DejaVu Sans", color: str = "#222", indent: float = 0.0, gap: float = 1.35) -> None:
        """Lines of text, drawn as few multi-line text objects as page breaks allow."""
        h = size * gap / 72
        lines = list(lines)
        while lines:
            self._room(h)
            fit = max(1, int((A4[1] - MARGIN - self.y) // h))
            chunk, lines = lines[:fit], lines[fit:]
            self.fig.text((MARGIN + indent) / A4[0], 1 - self.y / A4[1], "\n".join(chunk), ha="left", va="top",
                          fontsize=size, fontweight=weight, family=family, color=color, parse_math=False,
                          linespacing=gap)
            self.y += h * len(chunk)

    def text(self, line: str, size: float = 9.0, **kw) -> None:
        self.lines([line], size, **kw)

    def para(self, text: str, size: float = 9.0, indent: float = 0.0, **kw) -> None:
        chars = max(int((self.width - indent) * 72 / (0.56 * size)), 20)
        self.lines(textwrap.wrap(text, chars) or [""], size, indent=indent, **kw)
        self.y += size * 0.4 / 72

    def table(self, header, rows, caption: str = "") -> None:
        size = 7.0
        chars = int(self.width * 72 / (0.61 * size))
        cells = [[cell_text(c) for c in header]] + [[cell_text(c) for c in r if not isinstance(c, RowClass)]
                                                   for r in rows]
        ncol = max(len(r) for r in cells)
        cells = [r + [""] * (ncol - len(r)) for r in cells]
        widths = [max(len(r[i]) for r in cells) for i in range(ncol)]
        while sum(widths) + 2 * (ncol - 1) > chars and max(widths) > 8:
            widths[int(np.argmax(widths))] -= 1
        text = ["  ".join((c if len(c) <= w else c[: max(w - 1, 1)] + "…").ljust(w)
                          for c, w in zip(r, widths)).rstrip() for r in cells]
        if caption:
            self._room(8.5 * 1.35 / 72 + 3 * size * 1.3 / 72)  # keep the caption with the table's head
            self.text(caption, 8.5, weight="bold")
        self._room(2 * size * 1.3 / 72)
        self.lines(text[:1], size, family="DejaVu Sans Mono", weight="bold", gap=1.3)
        self.lines(text[1:], size, family="DejaVu Sans Mono", gap=1.3)
        self.y += 0.12

    def image(self, png: bytes, caption: str = "") -> None:
        from matplotlib.image import imread

        arr = imread(io.BytesIO(png))
        hpx, wpx = arr.shape[:2]
        w = min(self.width, wpx / PDF_DPI)
        h = w * hpx / wpx
        max_h = A4[1] - 2 * MARGIN - 0.8
        if h > max_h:
            h, w = max_h, max_h * wpx / hpx
        cap_lines = textwrap.wrap(caption, int(self.width * 72 / (0.56 * 7.5))) if caption else []
        self._room(h + 0.1 + len(cap_lines) * 7.5 * 1.35 / 72)
        x0 = MARGIN + (self.width - w) / 2
        ax = self.fig.add_axes([x0 / A4[0], 1 - (self.y + h) / A4[1], w / A4[0], h / A4[1]])
        ax.imshow(arr, interpolation="none", aspect="auto", origin="upper")
        ax.set_axis_off()
        self.y += h + 0.08
        for line in cap_lines:
            self.text(line, 7.5, color="#444")
        self.y += 0.1

    def close(self) -> None:
        self._flush()


def render_pdf(doc: Document, path: Path, metadata: Mapping[str, Any] | None = None) -> Path:
    """A4 PDF of ``doc`` (same blocks as the HTML; figures as images), written atomically."""
    from matplotlib.backends.backend_pdf import PdfPages

    from cstbatch.atomic import atomic_path

    meta = {"Title": doc.title, "Creator": "cstbatch", "Producer": "cstbatch (matplotlib)",
            "CreationDate": None, "ModDate": None, **(metadata or {})}
    with atomic_path(path) as tmp:
        with PdfPages(str(tmp), metadata=meta) as pdf:
            info = pdf.infodict()
            for k in ("CreationDate", "ModDate"):
                info.pop(k, None)
            flow = _PdfFlow(pdf, doc.footer)
            for b in doc.blocks:
                if b.kind == "h1":
                    flow.y += 0.05
                    flow.para(b.text, 14, weight="bold")
                elif b.kind == "h2":
                    if flow.fig is not None and flow.y > A4[1] - MARGIN - 2.2:
                        flow._new_page()
                    flow.y += 0.12
                    flow.para(b.text, 11.5, weight="bold")
                elif b.kind == "h3":
                    flow.para(b.text, 9.5, weight="bold")
                elif b.kind == "p":
                    flow.para(b.text, 9.5 if "summary" in b.css else 8.5,
                              color="#8a4b00" if "warn" in b.css else "#222")
                elif b.kind == "ul":
                    for item in b.items:
                        flow.para("•  " + cell_text(item), 8.5, indent=0.1,
                                  color="#8a4b00" if "warn" in b.css else "#222")
                elif b.kind == "table":
                    flow.table(b.header, b.rows, b.caption)
                elif b.kind in ("figure", "png"):
                    flow.image(b.figure_png(PDF_DPI), b.caption)
            if flow.fig is None:
                flow._new_page()
            flow.close()
    return Path(path)


# --------------------------------------------------------------------------- number formatting
def fmt(value, digits: int = 3, scale: float = 1.0, signed: bool = False) -> str:
    """``value × scale`` with ``digits`` decimals ("n/a" for None/NaN); minus as U+2212."""
    try:
        v = float(value) * scale
    except (TypeError, ValueError):
        return "n/a"
    if not np.isfinite(v):
        return "n/a"
    if round(v, digits) == 0:
        v = 0.0  # no "−0.000"
    s = f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"
    return s.replace("-", "−")


def to_float(value) -> float:
    """Tolerant number: CSV strings, None, "n/a", "" → NaN."""
    if value is None or isinstance(value, bool):
        return float("nan")
    try:
        return float(str(value).replace("−", "-")) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return float("nan")
