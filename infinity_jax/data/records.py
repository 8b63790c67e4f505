"""The example record: what every data source returns, and its ArrayRecord serialisation.

A source is any random-access object (``len(src)``, ``src[i]``) whose items are dicts:

* ``image``: encoded image bytes (JPEG, PNG, WebP...) or a ``(H, W, 3)`` uint8 array;
* ``long_caption`` and/or ``text`` (short caption), or ``caption``: strings;
* optional ``h_div_w`` (float), ``t5`` (``(n, C)`` precomputed T5 features of the long caption),
  ``t5_text`` (of the short caption), ``line`` (line of the source JSONL, for a feature store).

A source may also define ``aspect_ratios() -> np.ndarray (N,)`` (h/w of every record) so the
pipeline can bucket by aspect ratio without decoding images.

ArrayRecord layout of one record: ``b"IJR1" | uint32 header size | JSON header | payloads``; the
header holds the string/number fields and, per binary payload (``image``, ``t5``, ``t5_text``),
its byte offset, length and (for arrays) shape and dtype.
"""
from __future__ import annotations

import io
import json
from typing import Any, Mapping

import numpy as np

MAGIC = b"IJR1"
_BINARY = ("image", "t5", "t5_text")


class CorruptRecord(ValueError):
    """A record or its image cannot be decoded."""


class ImageDecodeError(CorruptRecord):
    """A record's image cannot be decoded (the one error that retires a record for good)."""


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes  # noqa: PLC0415

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def encode_example(example: Mapping[str, Any]) -> bytes:
    """Serialise one example dict (see the module docstring)."""
    header: dict[str, Any] = {}
    payloads: list[bytes] = []
    offset = 0
    for key, value in example.items():
        if value is None:
            continue
        if key in _BINARY:
            if isinstance(value, (bytes, bytearray, memoryview)):
                blob, meta = bytes(value), {"kind": "bytes"}
            else:
                arr = np.ascontiguousarray(value)
                blob, meta = arr.tobytes(), {"kind": "array", "shape": list(arr.shape), "dtype": arr.dtype.name}
            meta.update(offset=offset, size=len(blob))
            header[key] = meta
            payloads.append(blob)
            offset += len(blob)
        elif isinstance(value, (np.integer, np.floating)):
            header[key] = value.item()
        else:
            header[key] = value
    head = json.dumps(header).encode()
    return MAGIC + len(head).to_bytes(4, "little") + head + b"".join(payloads)


def decode_example(data: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_example`; raises :class:`CorruptRecord` on malformed bytes."""
    try:
        if data[:4] != MAGIC:
            raise CorruptRecord("not an infinity-jax record (bad magic)")
        size = int.from_bytes(data[4:8], "little")
        header = json.loads(data[8:8 + size])
        base = 8 + size
        out = {}
        for key, value in header.items():
            if isinstance(value, dict) and key in _BINARY:
                blob = data[base + value["offset"]: base + value["offset"] + value["size"]]
                if len(blob) != value["size"]:
                    raise CorruptRecord(f"payload {key!r} is truncated")
                if value["kind"] == "bytes":
                    out[key] = blob
                else:
                    out[key] = np.frombuffer(blob, _dtype(value["dtype"])).reshape(value["shape"])
            else:
                out[key] = value
        return out
    except CorruptRecord:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt record
        raise CorruptRecord(f"cannot parse record: {e}") from e


def image_size(image) -> tuple[int, int]:
    """(height, width) of encoded bytes (header only) or an array; raises :class:`ImageDecodeError`."""
    if isinstance(image, np.ndarray):
        return int(image.shape[0]), int(image.shape[1])
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(image)) as im:
            w, h = im.size
            if im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):  # shown rotated by 90 degrees
                w, h = h, w
    except Exception as e:  # noqa: BLE001
        raise ImageDecodeError(f"unreadable image: {e}") from e
    return int(h), int(w)


_EXIF_ORIENTATION = 0x0112


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Integer arrays wider than 8 bits are scaled to 0..255 (16-bit: / 257), not clipped."""
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.integer) and arr.size and int(arr.max()) > 255:
        top = 65535 if int(arr.max()) <= 65535 else int(np.iinfo(arr.dtype).max)
        return np.round(arr.astype(np.float64) * (255 / top)).clip(0, 255).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _pil_to_rgb(im) -> np.ndarray:
    """A decoded PIL image in any mode -> ``(H, W, 3)`` uint8 RGB, upright (EXIF orientation applied).

    16-bit / 32-bit grey is scaled to 8 bits; CMYK and palette images are converted; images with
    transparency (RGBA, LA, palette with a transparent colour) are composited over white.
    """
    from PIL import Image, ImageOps  # noqa: PLC0415

    im = ImageOps.exif_transpose(im)
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        grey = _to_uint8(np.asarray(im)) if im.mode != "F" else np.clip(np.asarray(im), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.asarray(im.convert("RGB"), np.uint8)


def decode_image(image) -> np.ndarray:
    """Encoded bytes or an array -> ``(H, W, 3)`` uint8 RGB; raises :class:`ImageDecodeError`."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
            raise ImageDecodeError(f"image array has shape {arr.shape}, expected (H, W, 3)")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        return np.ascontiguousarray(_to_uint8(arr[..., :3]))
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(io.BytesIO(image)) as im:
            im.load()  # raises on truncated / corrupt data
            return _pil_to_rgb(im)
    except Exception as e:  # noqa: BLE001
        raise ImageDecodeError(f"unreadable image: {e}") from e


def resize_center_crop(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """The official transform: resize (LANCZOS) so the image covers ``height x width``, centre-crop."""
    h, w = img.shape[:2]
    if (h, w) == (height, width):
        return img
    from PIL import Image  # noqa: PLC0415

    scale = max(height / h, width / w)
    nh, nw = max(height, int(round(h * scale))), max(width, int(round(w * scale)))
    im = Image.fromarray(img).resize((nw, nh), Image.LANCZOS)
    top, left = (nh - height) // 2, (nw - width) // 2
    return np.asarray(im.crop((left, top, left + width, top + height)), np.uint8)


def captions_of(example: Mapping[str, Any]) -> tuple[str, str | None]:
    """(long caption, short caption or None) of an example."""
    long = example.get("long_caption") or example.get("caption") or example.get("text")
    if not isinstance(long, str) or not long.strip():
        raise CorruptRecord("record has no caption")
    short = example.get("text") if isinstance(example.get("text"), str) and example.get("long_caption") else None
    return long, short
