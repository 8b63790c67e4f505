"""The converters refuse integer (or bool) tensors where floats are expected and name every key
holding NaN or inf values, instead of loading them silently."""
import numpy as np
import pytest

from infinity_jax.state_dict import CheckpointValueError, load_state_dict
from infinity_jax.tokenizer import convert as vae_convert
from infinity_jax.tokenizer import vae as V
from infinity_jax.transformer import convert as tr_convert
from infinity_jax.transformer.config import InfinityConfig


@pytest.fixture(scope="module")
def vae_state(official_tiny):
    return load_state_dict(official_tiny / "weights_vae.npz")


@pytest.fixture(scope="module")
def tr_state(official_tiny):
    return load_state_dict(official_tiny / "weights_infinity.npz")


def test_vae_integer_and_nan_weights_are_named(vae_state):
    cfg = V.VAEConfig(codebook_dim=32, base_ch=32)
    k_int, k_nan, k_inf = "encoder.conv_in.conv.weight", "decoder.conv_out.conv.weight", "encoder.norm_out.norm.bias"
    bad = dict(vae_state)
    bad[k_int] = np.round(bad[k_int]).astype(np.int64)
    bad[k_nan] = bad[k_nan].copy()
    bad[k_nan].flat[[0, 5]] = np.nan
    bad[k_inf] = bad[k_inf].copy()
    bad[k_inf].flat[0] = np.inf
    with pytest.raises(CheckpointValueError) as info:
        vae_convert.from_official(bad, cfg)
    msg = str(info.value)
    assert f"{k_int}: int64" in msg and f"{k_nan}: 2 non-finite" in msg and f"{k_inf}: 1 non-finite" in msg


def test_transformer_nan_and_integer_weights_are_named(tr_state, official_tiny):
    import json

    cfg = InfinityConfig.from_official(json.loads((official_tiny / "manifest.json").read_text()))
    key = next(k for k in tr_state if k.endswith("ffn.fc1.weight"))
    bad = dict(tr_state)
    bad[key] = bad[key].copy()
    bad[key].flat[3] = np.nan
    with pytest.raises(CheckpointValueError, match=rf"{key}: 1 non-finite"):
        tr_convert.load(bad, cfg)
    bad = dict(tr_state)
    bad[key] = bad[key].astype(np.int32)
    with pytest.raises(CheckpointValueError, match=rf"{key}: int32"):
        tr_convert.load(bad, cfg)
