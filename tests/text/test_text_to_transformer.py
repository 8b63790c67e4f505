"""End to end: prompts -> the project's T5 encoder -> the Infinity transformer (forward and sampling)."""
import jax.numpy as jnp
import numpy as np
from flax import nnx

from infinity_jax.sampling.sampler import Sampler, SamplingConfig
from infinity_jax.text.encoder import TextEncoder
from infinity_jax.text.config import T5Config
from infinity_jax.tools.train_sentencepiece import build_tiny_t5
from infinity_jax.transformer.config import InfinityConfig
from infinity_jax.transformer.model import Infinity

SCALES = [(1, 1, 1), (1, 2, 2), (1, 4, 4)]


def test_prompts_drive_the_transformer(tmp_path, spiece_bytes, tiny_kwargs):
    t5cfg = T5Config(**{k: v for k, v in tiny_kwargs.items()}, vocab_size=1)
    folder = build_tiny_t5(tmp_path / "t5", spiece_model=spiece_bytes, config=t5cfg)
    enc = TextEncoder.load(folder)
    prompts = ["a red chair under the tree", "a photo of a cat", ""]
    feats, mask, lens = enc.encode(prompts)
    assert feats.shape[0] == 3 and feats.shape[-1] == enc.dim and mask.shape == feats.shape[:2]
    assert list(np.asarray(lens)) == list(np.asarray(mask).sum(1))

    cfg = InfinityConfig(depth=2, embed_dim=64, num_heads=2, codebook_dim=8, text_channels=enc.dim,
                         text_maxlen=64)
    model = Infinity(cfg, rngs=nnx.Rngs(0))
    L = sum(h * w for _, h, w in SCALES)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, L - 1, 8)), jnp.float32)
    logits = np.asarray(model(feats, mask, x, SCALES))
    assert logits.shape == (3, L, 16) and np.all(np.isfinite(logits))
    # the caption matters: different prompts give different start tokens
    assert np.abs(logits[0, 0] - logits[1, 0]).max() > 1e-6

    out = Sampler(model).generate(feats, mask, SCALES, settings=SamplingConfig(cfg=3.0, tau=1.0), seeds=[0, 1, 2],
                                  decode=False)
    assert [b.shape for b in out.bits] == [(3, 1, 1, 8), (3, 2, 2, 8), (3, 4, 4, 8)]
