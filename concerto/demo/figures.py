"""Annotations for the demo pictures: a title strip, a colour bar, a class legend, class colours.

Images are uint8 [H, W, 3]; the drawing is PIL's default bitmap font, so no
font files are needed. The renders themselves come from ``concerto.eval.pictures``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def _text_image(lines: Sequence[str], width: int, line_height: int = 14, pad: int = 4) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, pad * 2 + line_height * len(lines)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * line_height), line, fill=(0, 0, 0))
    return np.asarray(img)


def with_title(image: np.ndarray, title: str) -> np.ndarray:
    """``image`` with a white strip of ``title`` (one or more lines) above it."""
    strip = _text_image(title.split("\n"), image.shape[1])
    return np.concatenate([strip, image])


def colour_bar(colours: np.ndarray, vmin: float, vmax: float, width: int, label: str = "",
               height: int = 12) -> np.ndarray:
    """A horizontal bar of ``colours`` (float [K, 3] in [0, 1], low to high) labelled with ``vmin`` / ``vmax``."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height + 8), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, right = f"{vmin:.2f}", f"{vmax:.2f} {label}".strip()
    x0 = int(draw.textlength(left)) + 10
    bar_w = max(width - x0 - int(draw.textlength(right)) - 14, 20)
    idx = np.linspace(0, len(colours) - 1, bar_w).round().astype(int)
    bar = np.clip(np.round(np.asarray(colours)[idx] * 255), 0, 255).astype(np.uint8)
    img.paste(Image.fromarray(np.repeat(bar[None], height, 0)), (x0, 4))
    draw.text((4, 4), left, fill=(0, 0, 0))
    draw.text((x0 + bar_w + 6, 4), right, fill=(0, 0, 0))
    return np.asarray(img)


def legend(names: Sequence[str], colours: np.ndarray, counts: Sequence[int], width: int,
           columns: Optional[int] = None) -> np.ndarray:
    """Swatches of ``colours`` (float [K, 3]) with each class name and point count, in columns."""
    from PIL import Image, ImageDraw

    cols = columns or max(1, width // 200)
    rows = -(-len(names) // cols)
    line = 16
    img = Image.new("RGB", (width, 8 + rows * line), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    col_w = width // cols
    for i, (name, c, n) in enumerate(zip(names, colours, counts)):
        x, y = (i // rows) * col_w + 4, 4 + (i % rows) * line
        rgb = tuple(int(v) for v in np.clip(np.round(np.asarray(c) * 255), 0, 255))
        draw.rectangle([x, y + 1, x + 11, y + 12], fill=rgb, outline=(0, 0, 0))
        draw.text((x + 16, y + 1), f"{name} ({n})", fill=(0, 0, 0))
    return np.asarray(img)


def class_colours(num_classes: int) -> np.ndarray:
    """float32 [K, 3] in [0, 1]: well-separated colours (hues stepped by the golden angle, two lightness levels)."""
    import colorsys

    out = []
    for k in range(num_classes):
        hue = (k * 0.381966) % 1.0
        light = 0.5 if k % 2 == 0 else 0.68
        out.append(colorsys.hls_to_rgb(hue, light, 0.75))
    return np.asarray(out, np.float32).reshape(num_classes, 3)


def stack(images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8: images top to bottom, each padded with white to the widest."""
    w = max(i.shape[1] for i in images)
    parts = [np.concatenate([i, np.full((i.shape[0], w - i.shape[1], 3), 255, np.uint8)], 1) if i.shape[1] < w else i
             for i in images]
    return np.concatenate(parts)
