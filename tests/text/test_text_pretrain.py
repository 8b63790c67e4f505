"""Denoising pre-training of a tiny T5 encoder on captions (the demo's text encoder)."""
import numpy as np

from infinity_jax.data.shapes import heldout_prompts
from infinity_jax.training.text_pretrain import masked_batch, pretrain_encoder
from infinity_jax.text.t5 import load
from infinity_jax.tools.train_sentencepiece import build_tiny_t5


def test_masked_batch_masks_real_tokens_only():
    rng = np.random.default_rng(0)
    ids = np.array([[5, 6, 7, 1, 0, 0], [8, 1, 0, 0, 0, 0], [4, 4, 4, 4, 4, 1]])
    lens = np.array([4, 2, 6])
    for _ in range(50):
        out, m = masked_batch(ids, lens, rng, 0.3, mask_id=99)
        assert m.sum(1).min() >= 1  # at least one per caption
        assert not m[np.arange(3), lens - 1].any()  # never EOS
        assert not m[0, 4:].any() and not m[1, 1:].any()  # never padding
        np.testing.assert_array_equal(out[m > 0], 99)
        np.testing.assert_array_equal(out[m == 0], ids[m == 0])


def test_pretraining_learns_and_saves(tmp_path, shapes_captions, shapes_spiece):
    corpus = shapes_captions
    folder = build_tiny_t5(tmp_path / "t5", spiece_model=shapes_spiece, seed=0)
    before = np.asarray(load(folder).embed[...])
    held = [c for c, _, _ in heldout_prompts()]
    info = pretrain_encoder(folder, corpus, heldout=held, steps=150, batch_size=64, lr=3e-3, progress=False)
    assert info["loss_last"] < 0.7 * info["loss_first"], info
    # the masked words of captions never seen in training are recovered far more often than before
    assert info["heldout_accuracy_after"] > info["heldout_accuracy_before"] + 0.2, info
    after = np.asarray(load(folder).embed[...])
    assert not np.allclose(before, after)  # saved in place
    assert (folder / "pretrain.json").is_file()


def test_keep_weight_adds_the_kept_tokens_loss(tmp_path, shapes_captions, shapes_spiece):
    """keep_weight: the cross-entropy at unmasked real tokens is added, with that weight."""
    import jax.numpy as jnp
    import optax

    from infinity_jax.training.text_pretrain import _loss
    from infinity_jax.text.sentencepiece import T5Tokenizer

    folder = build_tiny_t5(tmp_path / "t5", spiece_model=shapes_spiece, seed=0)
    model, tok = load(folder), T5Tokenizer.from_folder(folder)
    b = tok(shapes_captions[:16], length=16, max_length=16)
    ids, lens, pad = np.asarray(b.ids), np.asarray(b.lens), np.asarray(b.mask)
    c, tm = masked_batch(ids, lens, np.random.default_rng(0), 0.3, tok.pieces.index("<extra_id_0>"))
    base, acc = _loss(model, ids, pad, c, tm)
    both, acc2 = _loss(model, ids, pad, c, tm, keep_weight=0.5)
    h = model(jnp.asarray(c), jnp.asarray(pad))
    logits = jnp.einsum("bld,vd->blv", h, model.embed[...]) * h.shape[-1] ** -0.5
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(ids)))
    kept = pad * (1 - tm)
    np.testing.assert_allclose(float(both) - float(base), 0.5 * (ce * kept).sum() / kept.sum(), rtol=1e-5)
    assert float(acc) == float(acc2)  # accuracy stays the masked-token accuracy
