"""uint8 pixels <-> the tokenizer's [-1, 1] range (``infinity_jax.tokenizer.pixels``), both directions."""
import jax
import jax.numpy as jnp
import numpy as np

from infinity_jax.tokenizer.pixels import from_uint8, to_uint8


def test_from_uint8_is_the_official_normalisation():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
    y = from_uint8(x)
    assert y.dtype == jnp.float32 and y.shape == x.shape
    # bit for bit the expression the trainers used before; within a few fp32 ulp of the exact x / 127.5 - 1
    np.testing.assert_array_equal(np.asarray(y), np.asarray(jnp.asarray(x, jnp.float32) / 127.5 - 1.0))
    np.testing.assert_allclose(np.asarray(y), x.astype(np.float64) / 127.5 - 1, rtol=0, atol=3e-7)
    assert float(y.min()) == -1.0 and float(y.max()) == 1.0
    # traceable, and under jit too the same bits as the old expression (XLA may fuse it differently than eagerly)
    old = jax.jit(lambda im: im.astype(jnp.float32) / 127.5 - 1.0)
    np.testing.assert_array_equal(np.asarray(jax.jit(from_uint8)(x)), np.asarray(old(x)))


def test_to_uint8_clips_and_truncates():
    v = np.array([-3.0, -1.0, -0.5, 0.0, 0.999, 1.0, 7.0], np.float32)
    out = to_uint8(jnp.asarray(v))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [0, 0, 63, 127, 254, 255, 255])  # (x+1)/2*255, truncated
    # a round trip loses at most one level (truncation), never more
    x = np.arange(256, dtype=np.uint8)
    back = to_uint8(from_uint8(x)).astype(int)
    assert np.all((x - back >= 0) & (x - back <= 1))
