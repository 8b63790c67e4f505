"""Every attention backend against the dense reference: forward, gradients, the fixtures, the sampler."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import fixture, schedule
from infinity_jax.sampling.sampler import Sampler, SamplingConfig
from infinity_jax.schedules import scale_offsets
from infinity_jax.transformer import attention as A
from infinity_jax.transformer.config import InfinityConfig
from infinity_jax.transformer.convert import load
from infinity_jax.transformer.loss import infinity_loss

IMPLS = tuple(i for i in A.CPU_IMPLEMENTATIONS if i != "reference")
SCHED = [(1, 1, 1), (1, 2, 2), (1, 3, 3), (1, 5, 5), (1, 8, 8)]  # 103 tokens; the last scale is chunked below


def _qkv(L, B=2, H=2, hd=16, seed=0, Lq=None):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (jax.random.normal(kq, (B, Lq or L, H, hd)), jax.random.normal(kk, (B, L, H, hd)),
            jax.random.normal(kv, (B, L, H, hd)))


def test_block_causal_mask_is_a_prefix_structure():
    offs = scale_offsets(SCHED)
    m = A.block_causal_mask(offs)
    for i, (a, b) in enumerate(zip(offs[:-1], offs[1:])):
        assert m[a:b, :b].all() and not m[a:b, b:].any(), f"scale {i}"


@pytest.mark.parametrize("impl", IMPLS)
def test_block_causal_forward_and_gradients(impl):
    offs = scale_offsets(SCHED)
    q, k, v = _qkv(offs[-1])
    w = jax.random.normal(jax.random.PRNGKey(9), q.shape)

    def loss(fn_impl):
        return lambda q, k, v: jnp.sum(w * A.block_causal_attention(q, k, v, offs, impl=fn_impl, q_chunk=16))

    ref = A.block_causal_attention(q, k, v, offs, impl="reference")
    out = jax.jit(lambda q, k, v: A.block_causal_attention(q, k, v, offs, impl=impl, q_chunk=16))(q, k, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)
    g_ref = jax.grad(loss("reference"), (0, 1, 2))(q, k, v)
    g = jax.jit(jax.grad(loss(impl), (0, 1, 2)))(q, k, v)
    for name, a, b in zip("qkv", g, g_ref):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4 * float(jnp.abs(b).max()), rtol=0,
                                   err_msg=f"d{name}")


@pytest.mark.parametrize("impl", IMPLS)
def test_prefix_attention_with_padding(impl):
    """Cross-attention shape: a key padding mask, one caption fully padded (its rows must be 0, not NaN)."""
    q, k, v = _qkv(12, B=3, Lq=40, seed=1)
    mask = jnp.asarray(np.arange(12)[None] < np.array([7, 12, 0])[:, None])
    scale = 0.125

    def loss(fn_impl):
        return lambda q, k, v: jnp.sum(jnp.sin(A.prefix_attention(q, k, v, mask, scale=scale, impl=fn_impl,
                                                                  q_chunk=16)))

    ref = A.prefix_attention(q, k, v, mask, scale=scale, impl="reference")
    out = A.prefix_attention(q, k, v, mask, scale=scale, impl=impl, q_chunk=16)
    assert np.all(np.asarray(out)[2] == 0)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)
    g_ref = jax.grad(loss("reference"), (0, 1, 2))(q, k, v)
    g = jax.grad(loss(impl), (0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", g, g_ref):
        assert np.all(np.isfinite(np.asarray(a)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("impl", IMPLS)
def test_prefix_attention_without_a_key_mask(impl):
    """The sampler's shape: one scale's queries against a cache prefix of any length (splash pads the
    keys to its blocks and hides the padding in the kernel)."""
    q, k, v = _qkv(57, Lq=40, seed=2)
    ref = A.prefix_attention(q, k, v, scale=0.125, impl="reference")
    np.testing.assert_allclose(np.asarray(A.prefix_attention(q, k, v, scale=0.125, impl=impl)), np.asarray(ref),
                               atol=1e-5, rtol=0)
    one = [t[:, :1] for t in (q, k, v)]  # the first scale: one query, one key
    np.testing.assert_allclose(np.asarray(A.prefix_attention(*one, impl=impl)), np.asarray(one[2]), atol=1e-6)


def test_prefix_attention_keeps_its_logits_under_the_budget():
    """The sampler's last scale against a long cache: query chunks shrink until one chunk's float32
    logits fit ``logits_budget``; the result is the reference's."""
    q, k, v = _qkv(50, B=2, H=4, hd=8, Lq=37, seed=2)
    mask = jnp.asarray(np.arange(50)[None] < np.array([50, 31])[:, None])
    ref = A.prefix_attention(q, k, v, mask, impl="reference")
    budget = 5 * 2 * 4 * 50 * 4  # 5 query rows of (B, H, Lk) float32 logits
    for impl in ("xla", "splash"):
        fn = lambda q, k, v, impl=impl: A.prefix_attention(q, k, v, mask, impl=impl, logits_budget=budget)
        np.testing.assert_allclose(np.asarray(fn(q, k, v)), np.asarray(ref), atol=1e-5, rtol=0)
        chunks = [e.primitive.name for e in jax.make_jaxpr(fn)(q, k, v).jaxpr.eqns].count("remat2")
        assert chunks == 8, chunks  # 37 rows in 8 chunks of at most 5
    whole = jax.make_jaxpr(lambda q, k, v: A.prefix_attention(q, k, v, mask, impl="xla"))(q, k, v)
    assert [e.primitive.name for e in whole.jaxpr.eqns].count("remat2") == 0  # within the default budget: one chunk


def test_auto_and_unknown():
    assert A.resolve("auto", "cpu") == "xla"
    assert A.resolve("auto", "tpu") == "splash"
    assert A.resolve("auto", "gpu") == "dot_product"
    with pytest.raises(ValueError, match="unknown attention"):
        A.resolve("flash9")
    with pytest.raises(ValueError, match="attention_impl"):
        InfinityConfig(attention_impl="flash9").validate()


def test_xla_backend_has_no_square_tensor():
    """The compiled xla backend holds no (L, L) array: the largest intermediate is one scale's prefix."""
    sched = [(1, 1, 1), (1, 4, 4), (1, 8, 8), (1, 16, 16)]  # L = 337
    offs = scale_offsets(sched)
    L = offs[-1]
    q, k, v = _qkv(L, B=1, H=1, hd=8)
    f = lambda q, k, v: jnp.sum(A.block_causal_attention(q, k, v, offs, impl="xla", q_chunk=64))
    hlo = jax.jit(jax.grad(f, (0, 1, 2))).lower(q, k, v).compile().as_text()
    assert f"{L},{L}]" not in hlo
    hlo_ref = jax.jit(jax.grad(lambda q, k, v: jnp.sum(A.block_causal_attention(q, k, v, offs, impl="reference")),
                               (0, 1, 2))).lower(q, k, v).compile().as_text()
    assert f"{L},{L}]" in hlo_ref  # the check can see a square tensor where there is one


# ------------------------------------------------------------------ whole model on the official fixture
def _model(folder, impl, scan=False):
    manifest, _, _ = fixture(folder)
    cfg = InfinityConfig.from_official(manifest["config"]["infinity"], scan_blocks=scan, attention_impl=impl)
    return load(str(folder) + "/weights_infinity.npz", cfg)


@pytest.mark.parametrize("impl", IMPLS)
def test_fixture_logits_and_gradients(official_tiny, impl):
    """Teacher-forced logits match the official golden; parameter gradients match the reference backend."""
    folder = str(official_tiny)
    _, inputs, goldens = fixture(folder)
    g = goldens["golden_transformer"]
    sched = schedule(folder)
    text, mask = jnp.asarray(inputs["text_features"]), jnp.asarray(inputs["text_mask"])
    x, labels = jnp.asarray(g["x_BLC_wo_prefix"]), jnp.asarray(g["gt_BL_bits"])
    grads = {}
    for name in ("reference", impl):
        model = _model(official_tiny, name)
        graphdef, params = nnx.split(model)

        def loss_fn(p):
            m = nnx.merge(graphdef, p)
            logits = m(text, mask, x, sched)
            return infinity_loss(logits, labels, sched).loss_mean_scale_reweighted, logits

        (_, logits), grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
        np.testing.assert_allclose(np.asarray(logits), g["logits_BLV"], atol=1e-4, rtol=0, err_msg=name)
        grads[name] = jax.tree.leaves(grad)
    for a, b in zip(grads[impl], grads["reference"]):
        scale = max(float(jnp.abs(b).max()), 1e-12)
        assert float(jnp.abs(a - b).max()) <= 2e-4 * scale


@pytest.mark.parametrize("impl", ["reference", "xla", "dot_product", "splash"])
def test_sampler_replay_per_backend(official_tiny, impl):
    """The KV-cache sampler (prefix attention) reproduces the official head logits with each backend."""
    folder = str(official_tiny)
    manifest, inputs, goldens = fixture(folder)
    g = goldens["golden_sampling"]
    sched = schedule(folder)
    s = manifest["config"]["sampling"]["official_stochastic"]
    st = SamplingConfig(cfg=s["cfg"], tau=s["tau"], top_k=s["top_k"], top_p=s["top_p"])
    bits = [g[f"official_stochastic/bits_scale{k:02d}"][:, 0] for k in range(len(sched))]
    out = Sampler(_model(official_tiny, impl)).generate(inputs["text_features"], inputs["text_mask"], sched,
                                                        settings=st, replay_bits=bits, decode=False)
    for k in range(len(sched)):
        np.testing.assert_allclose(np.asarray(out.head_logits[k]), g[f"official_stochastic/head_logits_scale{k:02d}"],
                                   atol=1e-4, rtol=0, err_msg=f"scale {k}")


def test_splash_compiles_to_the_tpu_kernel():
    """Compiled for a TPU v5p slice from this host: forward + backward are Pallas TPU kernels, sharded
    over the mesh, with no (L, L) tensor."""
    pytest.importorskip("libtpu", reason="jax[tpu] (libtpu) is the optional 'tpu' extra")
    from jax.experimental import topologies
    from jax.sharding import NamedSharding, PartitionSpec as P

    from infinity_jax.sharding import make_mesh

    topo = topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x1", chip_config_name="megacore",
                                        chips_per_host_bounds=(2, 2, 1))
    mesh = make_mesh({"fsdp": -1}, devices=topo.devices)
    offs = scale_offsets([(1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 6, 6), (1, 8, 8), (1, 12, 12), (1, 16, 16)])
    L = offs[-1]
    sd = jax.ShapeDtypeStruct((4, L, 2, 128), jnp.bfloat16, sharding=NamedSharding(mesh, P("fsdp")))
    f = lambda q, k, v: jnp.sum(A.block_causal_attention(q, k, v, offs, impl="splash").astype(jnp.float32))
    with jax.set_mesh(mesh):
        hlo = jax.jit(jax.grad(f, (0, 1, 2))).lower(sd, sd, sd).compile().as_text()
    assert hlo.count('custom_call_target="tpu_custom_call"') >= 3  # forward, dq, dkv kernels
    assert f"{L},{L}]" not in hlo
    # the sampler's pattern on one chip: a 300-query scale against a 700-key cache prefix
    q = jax.ShapeDtypeStruct((2, 300, 2, 128), jnp.bfloat16, sharding=jax.sharding.SingleDeviceSharding(topo.devices[0]))
    kv = jax.ShapeDtypeStruct((2, 700, 2, 128), jnp.bfloat16, sharding=q.sharding)
    hlo = jax.jit(lambda q, k, v: A.prefix_attention(q, k, v, impl="splash")).lower(q, kv, kv).compile().as_text()
    assert 'custom_call_target="tpu_custom_call"' in hlo and "300,700]" not in hlo
