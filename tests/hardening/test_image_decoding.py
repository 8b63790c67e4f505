"""Image decoding of the data pipeline: 16-bit images are scaled (not clipped to white), CMYK,
palette and grey+alpha images give the right RGB, EXIF-rotated photos are upright (and their
size, used for aspect-ratio bucketing, is the upright one)."""
import io

import numpy as np
from PIL import Image

from infinity_jax.data.records import decode_image, image_size


def _png(im, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def test_16_bit_grey_png_is_scaled():
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    out = decode_image(_png(Image.fromarray(ramp)))
    assert out.shape == (32, 64, 3) and out.dtype == np.uint8
    assert abs(out.mean() - 127.5) < 2, out.mean()
    np.testing.assert_array_equal(out[0, :, 0], np.round(ramp[0] / 257).astype(np.uint8))
    # numpy arrays of 16-bit values too
    assert abs(decode_image(ramp).mean() - 127.5) < 2


def test_cmyk_palette_and_grey_alpha():
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:, :4] = (200, 30, 60)
    rgb[:, 4:] = (10, 180, 90)
    cmyk = decode_image(_png(Image.fromarray(rgb).convert("CMYK"), format="JPEG", quality=100))
    assert np.abs(cmyk.astype(int) - rgb).max() < 12
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=4)
    np.testing.assert_array_equal(decode_image(_png(pal)), rgb)
    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 0] = 40
    la[:, :4, 1] = 255  # left half opaque grey 40, right half fully transparent
    out = decode_image(_png(Image.fromarray(la, "LA")))
    assert (out[:, :4] == 40).all() and (out[:, 4:] == 255).all()  # transparent -> white background


def test_exif_rotated_photo_is_upright():
    img = np.zeros((20, 40, 3), np.uint8)  # stored landscape, top-left corner marked
    img[:5, :5] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _png(Image.fromarray(img), format="JPEG", quality=100, exif=exif.tobytes())
    out = decode_image(data)
    assert out.shape == (40, 20, 3)
    assert image_size(data) == (40, 20)
    assert out[:5, -5:].mean() > 200 and out[:5, :5].mean() < 50  # the mark moved to the top-right
