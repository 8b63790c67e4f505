"""Initialisation from scratch: a fresh model's statistics per parameter group against the official
``init_weights(other_std=tini)`` + ``special_init(aln, alng, hd0, diva)`` formulas."""
import math

import numpy as np
import pytest
from flax import nnx

from infinity_jax.transformer.config import InfinityConfig
from infinity_jax.transformer.model import Infinity

DEPTH, C, CT = 6, 256, 256


def _params(**kw):
    cfg = InfinityConfig(depth=DEPTH, embed_dim=C, num_heads=4, codebook_dim=16, text_channels=CT, text_maxlen=64,
                         **kw)
    state = nnx.state(Infinity(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    out = {}
    for path, v in state.flat_state():
        out[".".join(str(p) for p in path)] = np.asarray(v.get_value() if hasattr(v, "get_value") else v.value)
    return cfg, out


def _group(params, *suffixes):
    vals = [v.ravel() for k, v in params.items() if any(k.endswith(s) for s in suffixes)]
    assert vals, suffixes
    return np.concatenate(vals)


def _std_ok(x, want, n_sigma=5):
    """Sample std of zero-mean x within n_sigma standard errors of ``want`` (SE ~ want / sqrt(2n)).

    Inverse-CDF truncated sampling (JAX's, and PyTorch's ``trunc_normal_``) maps a float32 uniform
    landing exactly on its end to the cut (+-2); such rare values (< 1e-5) are left out."""
    x = x.astype(np.float64)
    far = np.abs(x) > 8 * want
    assert far.mean() < 1e-5, far.sum()
    x = x[~far]
    got = float(np.sqrt(np.mean(np.square(x))))
    tol = n_sigma * want / math.sqrt(2 * x.size)
    assert abs(got - want) <= tol, (got, want, tol, x.size)
    assert abs(float(np.mean(x))) <= n_sigma * want / math.sqrt(x.size)


def _truncated_std(sigma, bound):
    a = bound / sigma
    pdf = math.exp(-a * a / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(a / math.sqrt(2))
    return sigma * math.sqrt(1 - 2 * a * pdf / mass)


def _check(cfg, p, *, tini, aln, alng, hd0, proj):
    linear = ("word_embed.kernel", "lvl_embed", "text_proj1.kernel", "text_proj2.kernel", "shared_ada_lin.kernel",
              "text_pool.mat_kv.kernel", "text_pool.proj.kernel", "sa.mat_qkv.kernel", "ca.mat_q.kernel",
              "ca.mat_kv.kernel", "ffn.fc1.kernel")
    for name in linear:
        _std_ok(_group(p, name), tini)
    _std_ok(_group(p, "sa.proj.kernel", "ca.proj.kernel", "ffn.fc2.kernel"), tini * proj)
    _std_ok(_group(p, "head_ada_lin.kernel"), tini * aln)
    _std_ok(_group(p, "head.kernel"), tini * hd0)
    gss = np.stack([v for k, v in p.items() if k.endswith("ada_gss")])  # (depth, 1, 1, 6, C)
    assert gss.shape == (DEPTH, 1, 1, 6, C)
    _std_ok(gss[..., :2, :], alng / math.sqrt(C))
    _std_ok(gss[..., 2:, :], aln / math.sqrt(C))
    _std_ok(_group(p, "pos_start", "text_pool.mat_q"), math.sqrt(1 / C / 3))
    u = _group(p, "cfg_uncond")
    assert np.abs(u).max() <= 2 / math.sqrt(CT) + 1e-6
    _std_ok(u, _truncated_std(1.2, 2.0) / math.sqrt(CT))
    for k, v in p.items():
        if k.endswith(("bias", "q_bias", "v_bias", "ca_norm_bias")):
            assert not v.any(), k
        if k.endswith(("ca_norm_scale", "text_norm_scale")):
            assert (v == 1).all(), k
        if k.endswith("scale_mul"):
            np.testing.assert_allclose(v, math.log(4.0), rtol=1e-6)


def test_fresh_model_follows_the_official_recipe():
    """train.sh: --tini=-1 (sqrt(1/(3C))) --alng=5e-06, defaults aln=1e-3, hd0=0.02, diva=1."""
    cfg, p = _params()
    assert cfg.init_linear_std == pytest.approx(math.sqrt(1 / C / 3))
    _check(cfg, p, tini=math.sqrt(1 / C / 3), aln=1e-3, alng=5e-6, hd0=0.02, proj=1 / math.sqrt(2 * DEPTH))


def test_init_multipliers_are_config_keys():
    """--tini 0.01 --aln 0.1 --alng -1 (= aln) --hd0 -1 (head not rescaled) --diva 0 (no proj scaling)."""
    cfg, p = _params(init_std=0.01, init_aln=0.1, init_aln_gamma=-1.0, init_head=-1.0, init_proj_scale=0)
    _check(cfg, p, tini=0.01, aln=0.1, alng=0.1, hd0=1.0, proj=1.0)
    with pytest.raises(ValueError, match="init_proj_scale"):
        InfinityConfig(init_proj_scale=2).validate()
