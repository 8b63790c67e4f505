"""Strict official <-> NNX conversion of the BSQ-VAE weights."""
import numpy as np
import pytest

from infinity_jax.state_dict import CheckpointMismatchError, load_state_dict
from infinity_jax.tokenizer import convert
from infinity_jax.tokenizer import vae as V

TINY = V.VAEConfig(codebook_dim=32, base_ch=32)


@pytest.fixture(scope="module")
def state(official_tiny):
    return load_state_dict(official_tiny / "weights_vae.npz")


@pytest.fixture(scope="module")
def model(state):
    return convert.from_official(state, TINY)


def test_expected_table_matches_fixture(state):
    expected = convert.expected_shapes(TINY)
    weights = {k: v for k, v in state.items() if k not in convert.MASK_KEYS}
    assert len(state) == 270 and len(expected) == 268
    assert {k: tuple(v.shape) for k, v in weights.items()} == expected


def test_expected_table_official_d32():
    """Stride-16, d=32, base 128: the shapes listed in the architecture note, Appendix B."""
    exp = convert.expected_shapes(V.VAEConfig())
    assert len(exp) == 268
    assert exp["encoder.conv_in.conv.weight"] == (128, 3, 3, 3)
    assert exp["encoder.down.1.block.0.nin_shortcut.conv.weight"] == (256, 128, 1, 1)
    assert exp["encoder.conv_out.conv.weight"] == (32, 512, 3, 3)
    assert exp["decoder.conv_in.conv.weight"] == (512, 32, 3, 3)
    assert exp["decoder.up.0.block.0.nin_shortcut.conv.weight"] == (128, 256, 1, 1)
    assert exp["decoder.up.1.block.0.conv1.conv.weight"] == (256, 512, 3, 3)
    assert exp["decoder.up.1.upsample.conv.conv.weight"] == (256, 256, 3, 3)
    assert exp["decoder.conv_out.conv.weight"] == (3, 128, 3, 3)
    assert "encoder.down.4.downsample.conv.conv.weight" not in exp
    assert "decoder.up.0.upsample.conv.conv.weight" not in exp
    n_enc = sum(np.prod(s) for k, s in exp.items() if k.startswith("encoder."))
    n_dec = sum(np.prod(s) for k, s in exp.items() if k.startswith("decoder."))
    assert round(n_enc / 1e6, 2) == 45.03 and round(n_dec / 1e6, 2) == 65.09


def test_round_trip_exact(state, model):
    out = convert.to_official(model)
    assert set(out) == set(state)
    for k, v in state.items():
        assert out[k].dtype == v.dtype, k
        np.testing.assert_array_equal(out[k], v, err_msg=k)


def test_kernel_layout_is_hwio(state, model):
    w = state["encoder.down.1.block.0.conv1.conv.weight"]  # OIHW (64, 32, 3, 3)
    k = np.asarray(model.encoder.down[1].block[0].conv1.kernel.get_value())
    assert k.shape == (3, 3, 32, 64)
    np.testing.assert_array_equal(k, w.transpose(2, 3, 1, 0))


def test_missing_key_named(state):
    bad = dict(state)
    del bad["decoder.up.2.block.1.conv2.conv.weight"]
    with pytest.raises(CheckpointMismatchError) as e:
        convert.from_official(bad, TINY)
    assert e.value.missing == ["decoder.up.2.block.1.conv2.conv.weight"]
    assert "decoder.up.2.block.1.conv2.conv.weight" in str(e.value)


def test_extra_key_named(state):
    bad = dict(state)
    bad["encoder.mid.attn_1.q.conv.weight"] = np.zeros((128, 128, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        convert.from_official(bad, TINY)
    assert e.value.unexpected == ["encoder.mid.attn_1.q.conv.weight"]
    assert "encoder.mid.attn_1.q.conv.weight" in str(e.value)


def test_wrong_shape_named(state):
    bad = dict(state)
    bad["encoder.norm_out.norm.weight"] = np.zeros((64,), np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        convert.from_official(bad, TINY)
    assert [m[0] for m in e.value.mismatched] == ["encoder.norm_out.norm.weight"]
    assert "encoder.norm_out.norm.weight: checkpoint (64,) vs model (128,)" in str(e.value)


def test_wrong_mask_shape_named(state):
    bad = dict(state)
    bad["quantize.lfq.mask"] = np.zeros((16,), np.int64)
    with pytest.raises(CheckpointMismatchError) as e:
        convert.from_official(bad, TINY)
    assert [m[0] for m in e.value.mismatched] == ["quantize.lfq.mask"]


def test_all_problems_reported_together(state):
    bad = dict(state)
    del bad["encoder.conv_in.conv.bias"]
    bad["foo.bar"] = np.zeros(1)
    bad["decoder.conv_out.conv.weight"] = np.zeros((3, 32, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        convert.check_state_dict(bad, TINY)
    msg = str(e.value)
    for name in ("encoder.conv_in.conv.bias", "foo.bar", "decoder.conv_out.conv.weight"):
        assert name in msg


def test_wrong_config_reports_shapes(state):
    with pytest.raises(CheckpointMismatchError) as e:
        convert.from_official(state, V.VAEConfig(codebook_dim=16, base_ch=32))
    names = {m[0] for m in e.value.mismatched}
    assert {"encoder.conv_out.conv.weight", "decoder.conv_in.conv.weight", "quantizer.lfq.mask"} <= names


def test_unwrapped_names_accepted(state, model):
    """Plain nn.Conv2d / nn.GroupNorm names, as the official ``load_cnn`` accepts."""
    plain = {}
    for k, v in state.items():
        k = k.replace(".conv.weight", ".weight").replace(".conv.bias", ".bias")
        k = k.replace(".norm.weight", ".weight").replace(".norm.bias", ".bias")
        plain[k] = v
    assert "encoder.down.0.downsample.conv.weight" in plain
    assert "encoder.down.0.block.0.norm1.weight" in plain
    plain = {k: v for k, v in plain.items() if "mask" not in k}  # buffers are optional
    other = convert.from_official(plain, TINY)
    out = convert.to_official(other)
    for k, v in state.items():
        np.testing.assert_array_equal(out[k], v, err_msg=k)


def test_both_spellings_is_an_error(state):
    bad = dict(state)
    bad["encoder.conv_in.weight"] = state["encoder.conv_in.conv.weight"]
    with pytest.raises(CheckpointMismatchError) as e:
        convert.from_official(bad, TINY)
    assert e.value.unexpected == ["encoder.conv_in.weight"]


def test_infer_config(state):
    cfg = convert.infer_config(state)
    assert cfg == TINY
    patch = V.VAEConfig.official(14, apply_spatial_patchify=True, base_ch=24)
    zeros = {k: np.zeros(s, np.float32) for k, s in convert.expected_shapes(patch).items()}
    assert convert.infer_config(zeros) == patch


def test_load_without_config(official_tiny):
    m = convert.load(official_tiny / "weights_vae.npz")
    assert m.config == TINY


def test_mask_buffer_matches_torch():
    torch = pytest.importorskip("torch")
    for d in (14, 32, 64, 128):
        np.testing.assert_array_equal(convert.mask_buffer(d), (2 ** torch.arange(d - 1, -1, -1)).numpy())


def test_config_validation():
    with pytest.raises(ValueError, match="codebook_dim"):
        V.VAEConfig(codebook_dim=12)
    with pytest.raises(ValueError, match="log2"):
        V.VAEConfig(patch_size=16, ch_mult=(1, 2, 4, 4))
    with pytest.raises(ValueError, match="GroupNorm"):
        V.VAEConfig(base_ch=40)
    with pytest.raises(ValueError, match="codebook_size"):
        V.VAEConfig.from_official({"codebook_dim": 32, "codebook_size": 2 ** 16})
    cfg = V.VAEConfig.from_official({"vae_type": 14, "apply_spatial_patchify": 1})
    assert (cfg.patch_size, cfg.ch_mult, cfg.token_dim, cfg.token_stride) == (8, (1, 2, 4, 4), 56, 16)
