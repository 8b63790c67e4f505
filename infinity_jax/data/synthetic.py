"""A trivial deterministic synthetic source (coloured shapes with captions) for tests and smoke runs.

``SyntheticSource(n, sizes=((64, 64),), seed=0)[i]`` draws record ``i`` from ``seed`` and ``i`` only:
a background colour and one filled rectangle or ellipse, captioned like "a red square on a blue
background". ``sizes`` are (height, width) pairs cycled over the records (for aspect bucketing).
``corrupt`` lists record ids whose image bytes are garbage (to exercise skipping).
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
          "purple": (140, 60, 180), "orange": (240, 140, 30), "white": (240, 240, 240), "black": (20, 20, 20)}


class SyntheticSource:
    def __init__(self, num_records: int = 256, sizes: Sequence[Sequence[int]] = ((64, 64),), seed: int = 0,
                 encode: bool = False, corrupt: Sequence[int] = ()):
        if num_records < 1:
            raise ValueError("num_records must be positive")
        self.n = int(num_records)
        self.sizes = [tuple(int(v) for v in s) for s in sizes]
        self.seed = int(seed)
        self.encode = encode
        self.corrupt = set(int(c) for c in corrupt)

    def __len__(self) -> int:
        return self.n

    def aspect_ratios(self) -> np.ndarray:
        return np.asarray([self.sizes[i % len(self.sizes)][0] / self.sizes[i % len(self.sizes)][1]
                           for i in range(self.n)], np.float64)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = np.random.default_rng((self.seed, i))
        h, w = self.sizes[i % len(self.sizes)]
        names = list(COLORS)
        bg, fg = rng.choice(len(names), 2, replace=False)
        shape = ("square", "circle")[int(rng.integers(2))]
        img = np.empty((h, w, 3), np.uint8)
        img[:] = COLORS[names[bg]]
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        y1, x1 = y0 + max(2, h // 3), x0 + max(2, w // 3)
        if shape == "square":
            img[y0:y1, x0:x1] = COLORS[names[fg]]
        else:
            yy, xx = np.mgrid[:h, :w]
            cy, cx, r = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0) / 2
            img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = COLORS[names[fg]]
        caption = f"a {names[fg]} {shape} on a {names[bg]} background"
        image: object = img
        if i in self.corrupt:
            image = b"\x89PNG\r\n\x1a\n garbage"
        elif self.encode:
            from PIL import Image  # noqa: PLC0415

            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            image = buf.getvalue()
        return {"image": image, "long_caption": caption, "text": f"{names[fg]} {shape}", "h_div_w": h / w}
