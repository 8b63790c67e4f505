"""Helpers of the data tests: an official-format image folder with a captions JSONL."""
from __future__ import annotations

import json
import pathlib

import numpy as np


def make_image_folder(folder: pathlib.Path, n: int, *, sizes=((64, 64),), corrupt=(), missing=(), bad_json=(),
                      no_caption=(), fmt: str = "PNG", seed: int = 0) -> pathlib.Path:
    """``n`` synthetic images in ``folder/images`` and ``folder/captions.jsonl``.

    ``corrupt``: written truncated; ``missing``: listed but absent; ``bad_json``: a broken line;
    ``no_caption``: a line without caption.
    """
    from PIL import Image

    from infinity_jax.data.synthetic import SyntheticSource

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    src = SyntheticSource(n, sizes=sizes, seed=seed)
    lines = []
    for i in range(n):
        ex = src[i]
        name = f"images/{i:05d}.{fmt.lower()}"
        if i not in missing:
            Image.fromarray(np.asarray(ex["image"])).save(folder / name, format=fmt)
            if i in corrupt:
                data = (folder / name).read_bytes()
                (folder / name).write_bytes(data[: len(data) // 3])
        h, w = ex["image"].shape[:2]
        row = {"image_path": name, "h_div_w": h / w, "long_caption": ex["long_caption"] + ". A test image.",
               "long_caption_type": "synthetic", "text": ex["text"]}
        if i in no_caption:
            row.pop("long_caption")
            row.pop("text")
        lines.append("{not json" if i in bad_json else json.dumps(row))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder
