"""Official sizes, parameter counts, FLOP accounting and the strict transformer converter."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from infinity_jax.state_dict import CheckpointMismatchError
from infinity_jax.transformer.config import OFFICIAL_PARAM_COUNTS, SIZE_NAMES, InfinityConfig, size_config
from infinity_jax.transformer.convert import block_prefix, export_official, load
from infinity_jax.transformer.flops import forward_flops, param_count
from infinity_jax.transformer.model import Infinity


@pytest.mark.parametrize("size", SIZE_NAMES)
def test_param_count_matches_official_within_1_percent(size):
    cfg = size_config(size)
    n = param_count(cfg)
    print(f"{size}: {n:,} parameters (official {OFFICIAL_PARAM_COUNTS[size]:,.0f})")
    assert abs(n - OFFICIAL_PARAM_COUNTS[size]) / OFFICIAL_PARAM_COUNTS[size] < 0.01


def test_layer12_count_is_exact_and_analytic_equals_built():
    assert param_count(size_config("layer12")) == 125_185_696
    for size in ("layer12", "2b"):
        cfg = size_config(size)
        abstract = nnx.eval_shape(lambda: Infinity(cfg, rngs=nnx.Rngs(0)))
        built = sum(int(x.size) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
        assert built == param_count(cfg)


def test_flops_hand_count():
    """A 1-block model, one 1x1 + one 2x2 scale, 3 text tokens, counted by hand."""
    cfg = InfinityConfig(depth=1, embed_dim=256, num_heads=2, codebook_dim=4, text_channels=128, text_maxlen=8)
    C, Ct, M, V, T = 256, 128, 1024, 8, 3
    L, pairs = 5, 1 * 1 + 4 * 5
    text = 2 * T * Ct * 2 * C + 2 * T * C * 2 + 2 * C * C + 2 * T * Ct * C + 2 * T * C * C
    dense = L * (2 * C * 3 * C + 3 * 2 * C * C + 4 * C * M) + 2 * T * C * 2 * C
    attn = 4 * C * pairs + 4 * C * L * T
    head = L * (2 * 4 * C + 2 * C * V) + 2 * C * 6 * C + 2 * C * 2 * C
    f = forward_flops(cfg, [(1, 1, 1), (1, 2, 2)], text_len=T)
    assert f["total"] == text + dense + attn + head


def _tiny(chunks=2, scan=False):
    return InfinityConfig(depth=4, embed_dim=64, num_heads=2, codebook_dim=8, text_channels=128, text_maxlen=16,
                          block_chunks=chunks, scan_blocks=scan)


def test_any_chunk_count_loads_and_scan_gives_same_logits():
    src = Infinity(_tiny(chunks=4), rngs=nnx.Rngs(1))
    sd = export_official(src)
    assert "block_chunks.3.module.0.sa.mat_qkv.weight" in sd
    text = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 128)), jnp.float32)
    mask = jnp.asarray([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 8)), jnp.float32)
    ref = src(text, mask, x, [(1, 1, 1), (1, 2, 2)])
    for chunks, scan in ((1, False), (2, True), (4, True)):
        m = load(sd, _tiny(chunks=chunks, scan=scan))
        np.testing.assert_allclose(np.asarray(m(text, mask, x, [(1, 1, 1), (1, 2, 2)])), np.asarray(ref), atol=1e-5)
    # a checkpoint saved with one chunk (blocks.{b}) loads too
    flat = {}
    for k, v in sd.items():
        for b in range(4):
            if k.startswith(block_prefix(b, 4, 4)):
                k = f"blocks.{b}." + k[len(block_prefix(b, 4, 4)):]
                break
        flat[k] = v
    assert "blocks.3.sa.mat_qkv.weight" in flat
    m = load(flat, _tiny(chunks=2))
    np.testing.assert_allclose(np.asarray(m(text, mask, x, [(1, 1, 1), (1, 2, 2)])), np.asarray(ref), atol=1e-5)


@pytest.mark.parametrize("case", ["missing", "unexpected", "shape"])
def test_converter_is_strict(case):
    sd = export_official(Infinity(_tiny(), rngs=nnx.Rngs(0)))
    key = "block_chunks.1.module.0.ffn.fc1.weight"
    if case == "missing":
        del sd[key]
    elif case == "unexpected":
        sd["block_chunks.1.module.0.ffn.fc3.weight"] = sd[key]
        key = "block_chunks.1.module.0.ffn.fc3.weight"
    else:
        sd[key] = sd[key][:, :-1]
    with pytest.raises(CheckpointMismatchError) as e:
        load(sd, _tiny())
    assert key in str(e.value)
    assert {"missing": e.value.missing, "unexpected": e.value.unexpected,
            "shape": [m[0] for m in e.value.mismatched]}[case] == [key]


def test_bf16_load():
    sd = export_official(Infinity(_tiny(), rngs=nnx.Rngs(0)))
    m = load(sd, _tiny(), dtype=jnp.bfloat16)
    assert m.head.kernel[...].dtype == jnp.bfloat16


def test_load_straight_into_shardings(tmp_path):
    """Converting onto an 8-device fsdp mesh places each parameter sharded, with the same outputs."""
    import jax
    from safetensors.numpy import save_file

    from infinity_jax.sharding import make_mesh

    cfg = InfinityConfig(depth=2, embed_dim=64, num_heads=2, codebook_dim=8, text_channels=128, text_maxlen=16,
                         block_chunks=2)
    src = Infinity(cfg, rngs=nnx.Rngs(3))
    save_file(export_official(src), str(tmp_path / "model.safetensors"))
    mesh = make_mesh({"fsdp": 8}, jax.devices()[:8])
    m = load(str(tmp_path / "model.safetensors"), cfg.replace(scan_blocks=True), mesh=mesh)
    k = m.blocks.ffn.fc1.kernel[...]
    assert k.sharding.spec[1] == "fsdp" and k.addressable_shards[0].data.shape == (2, 8, 256)
    text = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 128)), jnp.float32)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 8)), jnp.float32)
    mask = jnp.ones((1, 3), bool)
    np.testing.assert_allclose(np.asarray(m(text, mask, x, [(1, 1, 1), (1, 2, 2)])),
                               np.asarray(src(text, mask, x, [(1, 1, 1), (1, 2, 2)])), atol=1e-5)


def test_official_config_states_the_token_layout(official_patchify):
    """The 8B layout is read from the manifest's transformer section; a config without it is named."""
    import json

    manifest = json.loads((official_patchify / "manifest.json").read_text())
    cfg = InfinityConfig.from_official(manifest)
    assert (cfg.apply_spatial_patchify, cfg.codebook_dim, cfg.token_bits, cfg.vocab) == (True, 14, 56, 112)
    assert InfinityConfig.from_official(manifest["config"]["infinity"]) == cfg
    flat = cfg.replace(apply_spatial_patchify=False)
    with pytest.raises(CheckpointMismatchError, match="apply_spatial_patchify False"):
        load(str(official_patchify / "weights_infinity.npz"), flat)
