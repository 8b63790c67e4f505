"""The residual boundary: an identity whose cotangent XLA:CPU must materialise."""
import jax
import jax.numpy as jnp
import numpy as np

from infinity_jax.transformer.model import residual_boundary


def _stack(x, w, boundary):
    for _ in range(4):
        if boundary:
            x = residual_boundary(x)
        x = x + jnp.tanh(x @ w)
    return jnp.sum(x ** 2)


def test_value_and_gradient_are_the_identitys():
    r = np.random.default_rng(0)
    x, w = jnp.asarray(r.normal(size=(3, 8, 16)), jnp.float32), jnp.asarray(r.normal(size=(16, 16)) * 0.3, jnp.float32)
    np.testing.assert_array_equal(residual_boundary(x), x)
    g0 = jax.grad(_stack, argnums=(0, 1))(x, w, False)
    g1 = jax.grad(_stack, argnums=(0, 1))(x, w, True)
    for a, b in zip(g0, g1):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_nonfinite_cotangents_pass_through():
    g = jax.grad(lambda x: jnp.sum(residual_boundary(x) * jnp.array([jnp.nan, 1.0, jnp.inf])))(jnp.ones(3))
    assert np.isnan(g[0]) and g[1] == 1.0 and np.isinf(g[2])


def test_cpu_backward_keeps_one_materialised_cotangent_per_boundary():
    x, w = jnp.ones((2, 8, 16)), jnp.ones((16, 16))
    hlo = jax.jit(jax.grad(_stack), static_argnums=2).lower(x, w, True).compile().as_text()
    assert hlo.count(" conditional(") == 4
    plain = jax.jit(jax.grad(_stack), static_argnums=2).lower(x, w, False).compile().as_text()
    assert plain.count(" conditional(") == 0
