"""Inference memory options: bfloat16 block parameters (as the official inference) and sampling
in batches of at most ``max_batch`` images."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import convert_fixture, fixture


@pytest.fixture(scope="module")
def tiny(official_tiny, tmp_path_factory):
    return convert_fixture(official_tiny, tmp_path_factory.mktemp("ckpt") / "tiny"), official_tiny


def _dtypes(model):
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(map(str, k)): v.get_value().dtype for k, v in flat}


def test_block_parameters_load_as_bfloat16(tiny):
    from infinity_jax.sampling.pipeline import Pipeline

    ckpt, folder = tiny
    full = Pipeline.from_checkpoint(ckpt)
    half = Pipeline.from_checkpoint(ckpt, param_dtype="bfloat16")
    d32, d16 = _dtypes(full.transformer), _dtypes(half.transformer)
    assert set(d32) == set(d16)
    blocks = [k for k in d16 if k.startswith("blocks/")]
    assert blocks and all(d16[k] == jnp.bfloat16 for k in blocks)
    assert all(d16[k] == d32[k] == jnp.float32 for k in d16 if not k.startswith("blocks/"))
    # the stored values, rounded once
    s32 = dict(nnx.to_flat_state(nnx.state(full.transformer, nnx.Param)))
    s16 = dict(nnx.to_flat_state(nnx.state(half.transformer, nnx.Param)))
    for k in list(s16)[:50]:
        np.testing.assert_array_equal(np.asarray(s16[k].get_value(), np.float32),
                                      np.asarray(jnp.asarray(s32[k].get_value()).astype(s16[k].get_value().dtype),
                                                 np.float32))
    _, inputs, _ = fixture(str(folder))
    kw = dict(text_features=inputs["text_features"][:2], text_mask=inputs["text_mask"][:2], resolution="0.06M",
              top_k=1, seed=3)
    a, b = full(**kw), half(**kw)
    x, y = (np.stack([np.asarray(im, np.float32) for im in r.images]) for r in (a, b))
    assert x.shape == y.shape
    # bfloat16 weights move a greedy sample only a little (the same model, rounded)
    agree = np.mean([np.mean(np.asarray(p) == np.asarray(q)) for p, q in zip(a.bits, b.bits)])
    assert agree > 0.9, agree


def test_max_batch_gives_the_same_images(tiny):
    from infinity_jax.sampling.pipeline import Pipeline

    ckpt, folder = tiny
    pipe = Pipeline.from_checkpoint(ckpt)
    _, inputs, _ = fixture(str(folder))
    n = min(3, inputs["text_features"].shape[0])
    kw = dict(text_features=inputs["text_features"][:n], text_mask=inputs["text_mask"][:n], resolution="0.06M",
              seed=5, save_scales=True)
    calls = []
    whole = pipe(**kw)
    parts = pipe(**kw, max_batch=1, progress=lambda k, K: calls.append(k))
    assert len(parts.images) == len(whole.images) == n and len(parts.previews) == n
    assert len(calls) == n * len(parts.schedule)
    for p, q in zip(whole.bits, parts.bits):
        assert p.shape == q.shape
        assert np.mean(np.asarray(p) == np.asarray(q)) > 0.999
    for p, q in zip(whole.images, parts.images):
        assert np.abs(np.asarray(p, int) - np.asarray(q, int)).max() <= 2
    with pytest.raises(ValueError, match="max_batch"):
        pipe(**kw, max_batch=0)
