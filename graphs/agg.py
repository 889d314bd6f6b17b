"""matplotlib's Agg canvas with its glyphs kept between graphs.

Since matplotlib 3.10 the Agg renderer asks FreeType to render every glyph of every
text anew, and text is most of what a graph costs to draw: a context's CPU graph has
some 270 glyphs (legend lines, tick labels, title), a good third of them blanks, and
they are the same few dozen characters graph after graph. Here a glyph's bitmap is
rendered once per font, size and sub-pixel position (the 1/64 pixel fraction
FreeType places it at) and then only copied: the pixels are the same as matplotlib's
own (a glyph placed a whole pixel further is the same bitmap a pixel further), and
blanks are skipped. Text layouts are kept per string too.

Only horizontal plain text takes this path, and only where this matplotlib has the
pieces it relies on; anything else (rotated text, mathtext, another version) is
drawn by matplotlib's own code.

`png` writes the canvas as an RGB PNG with zlib directly: the graphs are opaque and
flat-coloured, so unfiltered rows at a low compression level are both smaller and
several times quicker than matplotlib's RGBA PNG through Pillow (whose per-row
filter choice is most of its time).

Imported by graphs.paint on first use only: matplotlib never enters the polling
process.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg, get_hinting_flag

try:
    from matplotlib.ft2font import FT2Font, RenderMode

    _FAST = all(hasattr(FT2Font, a) for a in ("_layout", "_render_glyph", "_set_transform")) \
        and hasattr(RendererAgg, "_prepare_font")
except ImportError:  # older matplotlib: its own text drawing
    _FAST = False

_GLYPHS_MAX = 20_000  # bitmaps (a few hundred bytes each); cleared when full
_LAYOUTS_MAX = 4_000  # strings
_IDENTITY = np.array([[0x10000, 0], [0, 0x10000]])


class CachedRenderer(RendererAgg):
    """RendererAgg whose horizontal text draws from a glyph cache (see the module)."""

    def __init__(self, width, height, dpi):
        super().__init__(width, height, dpi)
        self._glyphs: dict = {}
        self._layouts: dict = {}

    def draw_text(self, gc, x, y, s, prop, angle, ismath=False, mtext=None):
        if not _FAST or ismath or angle:
            return super().draw_text(gc, x, y, s, prop, angle, ismath, mtext)
        size = prop.get_size_in_points()
        features = mtext.get_fontfeatures() if mtext is not None and hasattr(mtext, "get_fontfeatures") else None
        language = mtext.get_language() if mtext is not None and hasattr(mtext, "get_language") else None
        key = (s, hash(prop), size, features, language)
        items = self._layouts.get(key)
        if items is None:
            font = self._prepare_font(prop)
            kw = {}
            if features is not None:
                kw["features"] = features
            if language is not None:
                kw["language"] = language
            items = [(it.ft_object, it.glyph_index, it.x, it.y)
                     for it in font._layout(s, flags=get_hinting_flag(), **kw)]
            if len(self._layouts) >= _LAYOUTS_MAX:
                self._layouts.clear()
            self._layouts[key] = items
        mode = RenderMode.NORMAL if gc.get_antialiased() else RenderMode.MONO
        height = self.height
        for ft, glyph, dx, dy in items:
            # FreeType's 26.6 fixed point, y upwards: as matplotlib places the glyph.
            px = round(0x40 * (x + dx))
            py = round(0x40 * (height - y + dy))
            gkey = (ft.fname, size, glyph, px & 63, py & 63, mode)
            hit = self._glyphs.get(gkey)
            if hit is None:
                ft.set_size(size, self.dpi)
                ft._set_transform(_IDENTITY, [px & 63, py & 63])
                bitmap = ft._render_glyph(glyph, get_hinting_flag(), mode)
                buffer = np.array(bitmap.buffer, copy=True)
                if mode != RenderMode.NORMAL:
                    buffer *= 0xff
                hit = (buffer if buffer.size else None, bitmap.left, bitmap.top)
                if len(self._glyphs) >= _GLYPHS_MAX:
                    self._glyphs.clear()
                self._glyphs[gkey] = hit
            buffer, left, top = hit
            if buffer is None:  # a blank
                continue
            left += px >> 6
            top += py >> 6
            self._renderer.draw_text_image(buffer, left, int(height) - top + buffer.shape[0], 0, gc)


class CachedCanvas(FigureCanvasAgg):
    """FigureCanvasAgg drawing with a CachedRenderer (kept while the size stays)."""

    def get_renderer(self):
        w, h = self.get_width_height(physical=True)
        key = w, h, self.figure.dpi
        if getattr(self, "_lastKey", None) != key or not isinstance(getattr(self, "renderer", None),
                                                                     CachedRenderer):
            self.renderer = CachedRenderer(w, h, self.figure.dpi)
            self._lastKey = key
        return self.renderer


PNG_LEVEL = 3  # zlib level: 1-3 cost the same here, 6 twice that for 10 % fewer bytes


def png(canvas: FigureCanvasAgg, level: int = PNG_LEVEL) -> bytes:
    """The canvas (drawn) as an RGB PNG, each row unfiltered (PNG filter type 0)."""
    rgba = np.asarray(canvas.buffer_rgba())
    h, w = rgba.shape[:2]
    rows = np.empty((h, 1 + 3 * w), dtype=np.uint8)
    rows[:, 0] = 0  # filter type: none
    rows[:, 1:].reshape(h, w, 3)[...] = rgba[:, :, :3]  # opaque: alpha is 255 throughout

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"".join((
        b"\x89PNG\r\n\x1a\n",
        chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)),  # 8-bit RGB, not interlaced
        chunk(b"IDAT", zlib.compress(rows.tobytes(), level)),
        chunk(b"IEND", b""),
    ))
