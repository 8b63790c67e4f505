"""The NNX T5 encoder against transformers' PyTorch ``T5EncoderModel`` (random tiny configs)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from infinity_jax.sharding import _names_of
from infinity_jax.text import config, convert, t5
from infinity_jax.text.sentencepiece import T5Tokenizer

PROMPTS = [
    "a photo of the cat sitting on a red chair under bright sunlight",
    "東京 夜景",
    "",
    " ".join(["golden reflection of the mountain river at night"] * 20),  # ~ 200 tokens: far buckets
    "café naïve résumé",
]


def _batch(folder):
    tb = T5Tokenizer.from_folder(folder)(PROMPTS)
    assert len(set(tb.lens.tolist())) == len(PROMPTS) and tb.lens.max() > 128
    return tb


def _hf_hidden(module, tb):
    with torch.no_grad():
        out = module(input_ids=torch.from_numpy(tb.ids.astype(np.int64)),
                     attention_mask=torch.from_numpy(tb.mask.astype(np.int64)))
    return out.last_hidden_state.float().numpy()


def _max_err(ours, ref, lens):
    return max(float(np.abs(ours[i, :n] - ref[i, :n]).max()) for i, n in enumerate(lens))


def test_parity_safetensors(hf_folder, hf_model):
    tb = _batch(hf_folder)
    model = t5.load(hf_folder)
    ours = np.asarray(model(jnp.asarray(tb.ids), jnp.asarray(tb.mask)))
    ref = _hf_hidden(hf_model, tb)
    err = _max_err(ours, ref, tb.lens)
    print(f"fp32 parity max abs error {err:.2e} (|ref| max {np.abs(ref).max():.2f})")
    assert err < 1e-5


def test_relative_position_buckets_match_reference():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(1100)[None, :] - torch.arange(1100)[:, None]
    for nb, md in [(32, 128), (64, 256), (32, 64), (16, 100)]:
        ref = T5Attention._relative_position_bucket(rel, True, nb, md).numpy()
        np.testing.assert_array_equal(t5.relative_position_buckets(1100, 1100, nb, md), ref)


def test_parity_sharded_full_checkpoint(tmp_path, hf_config, spiece_bytes, hf_folder):
    """A sharded T5ForConditionalGeneration: decoder and lm_head keys are ignored."""
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(1)
    full = T5ForConditionalGeneration(hf_config).float().eval()
    full.save_pretrained(tmp_path, max_shard_size="60KB")
    (tmp_path / "spiece.model").write_bytes(spiece_bytes)
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    tb = _batch(tmp_path)
    ours = np.asarray(t5.load(tmp_path)(jnp.asarray(tb.ids), jnp.asarray(tb.mask)))
    assert _max_err(ours, _hf_hidden(full.get_encoder(), tb), tb.lens) < 1e-5


def test_parity_pytorch_bin_and_sharded_bin(tmp_path, hf_model, hf_folder):
    """pytorch_model.bin (with the tied encoder.embed_tokens copy) and a sharded .bin index."""
    tb = _batch(hf_folder)
    ref = _hf_hidden(hf_model, tb)
    sd = hf_model.state_dict()
    assert "encoder.embed_tokens.weight" in sd and "shared.weight" in sd
    one = tmp_path / "one"
    one.mkdir()
    (one / "config.json").write_text((hf_folder / "config.json").read_text())
    torch.save(sd, one / "pytorch_model.bin")
    ours = np.asarray(t5.load(one)(jnp.asarray(tb.ids), jnp.asarray(tb.mask)))
    assert _max_err(ours, ref, tb.lens) < 1e-5

    two = tmp_path / "two"
    two.mkdir()
    (two / "config.json").write_text((hf_folder / "config.json").read_text())
    keys = sorted(k for k in sd if k != "shared.weight")  # only the alias of the embedding
    halves = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for name, ks in halves.items():
        torch.save({k: sd[k] for k in ks}, two / name)
    (two / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, ks in halves.items() for k in ks}}))
    ours = np.asarray(t5.load(two)(jnp.asarray(tb.ids), jnp.asarray(tb.mask)))
    assert _max_err(ours, ref, tb.lens) < 1e-5


def test_parity_relu_feed_forward(tmp_path, hf_config, tiny_kwargs, hf_folder):
    """Original-T5 style non-gated ReLU FFN."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=hf_config.vocab_size, **{**tiny_kwargs, "feed_forward_proj": "relu"})
    torch.manual_seed(2)
    hf = T5EncoderModel(cfg).float().eval()
    hf.save_pretrained(tmp_path)
    tb = _batch(hf_folder)
    model = t5.load(tmp_path)
    assert not model.cfg.is_gated
    ours = np.asarray(model(jnp.asarray(tb.ids), jnp.asarray(tb.mask)))
    assert _max_err(ours, _hf_hidden(hf, tb), tb.lens) < 1e-5


def test_export_roundtrip_loads_in_transformers(tmp_path, hf_folder):
    """save_pretrained of the NNX model is read back by transformers with identical outputs."""
    from transformers import T5EncoderModel

    model = t5.load(hf_folder)
    convert.save_pretrained(model, tmp_path, spiece_model=hf_folder / "spiece.model")
    hf = T5EncoderModel.from_pretrained(tmp_path).float().eval()
    tb = _batch(hf_folder)
    ours = np.asarray(model(jnp.asarray(tb.ids), jnp.asarray(tb.mask)))
    assert _max_err(ours, _hf_hidden(hf, tb), tb.lens) < 1e-5
    again = t5.load(tmp_path)
    for a, b in zip(jax.tree.leaves(nnx_params(model)), jax.tree.leaves(nnx_params(again))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def nnx_params(model):
    from flax import nnx

    return nnx.state(model, nnx.Param)


def test_bf16_compute_close_to_fp32(hf_folder):
    tb = _batch(hf_folder)
    ref = np.asarray(t5.load(hf_folder)(jnp.asarray(tb.ids), jnp.asarray(tb.mask)))
    out = t5.load(hf_folder, dtype=jnp.bfloat16)(jnp.asarray(tb.ids), jnp.asarray(tb.mask))
    assert out.dtype == jnp.float32
    err = _max_err(np.asarray(out), ref, tb.lens)
    assert err < 0.1 * np.abs(ref).max()


def test_logical_axis_names_on_every_param(hf_folder):
    from flax import nnx

    model = t5.load(hf_folder)
    allowed = {"vocab", "text_embed", "heads", "kv", "mlp", "norm", None}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = _names_of(var)
        assert names is not None and len(names) == var.get_value().ndim, path
        assert set(names) <= allowed, (path, names)


def test_config_from_hf_json_and_presets(hf_folder):
    cfg = config.T5Config.from_json(hf_folder / "config.json")
    raw = json.loads((hf_folder / "config.json").read_text())
    assert (cfg.d_model, cfg.d_ff, cfg.num_layers, cfg.num_heads, cfg.d_kv) == (
        raw["d_model"], raw["d_ff"], raw["num_layers"], raw["num_heads"], raw["d_kv"])
    assert cfg.activation == "gelu_new" and cfg.is_gated
    xl = config.preset("flan-t5-xl")
    assert (xl.d_model, xl.d_kv, xl.d_ff, xl.num_layers, xl.num_heads) == (2048, 64, 5120, 24, 32)
    assert config.preset("xl") == xl
    with pytest.raises(ValueError):
        config.T5Config(feed_forward_proj="gated-nope")
