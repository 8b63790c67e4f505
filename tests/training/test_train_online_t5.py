"""The online T5 encoder under the trainer's mesh: batch-sharded, bfloat16, features kept on device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import load_config

from infinity_jax.sharding import make_mesh
from infinity_jax.training.trainer import Trainer

CAPTIONS = ["a red square on a blue background", "a green circle", "a white square on a black background",
            "a yellow circle on a purple background", "an orange square", "a blue circle on a red background",
            "a black square", "a purple circle on a white background"]


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory):
    from infinity_jax.tools.train_sentencepiece import build_tiny_t5

    return build_tiny_t5(tmp_path_factory.mktemp("t5"), CAPTIONS * 40, vocab_size=120)


def test_online_t5_runs_under_the_mesh_and_keeps_features_on_device(t5_folder, monkeypatch):
    from infinity_jax.text import TextEncoder

    config = load_config(batch_size=8, **{"text.source": "t5", "text.t5_path": str(t5_folder),
                                          "text.dtype": "bfloat16", "model.text_channels": 64})
    tr = Trainer(config, None, mesh=make_mesh({"data": 2, "fsdp": 4}))
    assert tr.text_fn() is None and tr.online_t5.channels == 64
    # parameters placed on the mesh in bfloat16
    leaves = jax.tree.leaves(tr.online_t5.state)
    assert all(x.dtype == jnp.bfloat16 and len(x.sharding.device_set) == 8 for x in leaves)
    assert any(not x.sharding.is_fully_replicated for x in leaves)
    sent = []
    real = jax.make_array_from_process_local_data

    def recording(sharding, data, *a, **k):
        sent.append(np.asarray(data).dtype)
        return real(sharding, data, *a, **k)

    monkeypatch.setattr(jax, "make_array_from_process_local_data", recording)
    H, W = tr.buckets[0].pixel
    host = {"caption": np.asarray(CAPTIONS, object), "image": np.zeros((8, H, W, 3), np.uint8), "bucket": 0}
    batch = tr.device_batch(host)
    text, mask = batch["text"], batch["text_mask"]
    assert isinstance(text, jax.Array) and text.shape == (8, tr.text_len, 64) and text.dtype == jnp.bfloat16
    assert text.sharding.is_equivalent_to(tr.batch_sharding, 3) and mask.sharding.is_equivalent_to(tr.batch_sharding, 2)
    assert all(not np.issubdtype(d, np.floating) for d in sent)  # only ids, masks and images crossed the host
    assert tr.batch_spec(tr.buckets[0])["text"].dtype == jnp.bfloat16
    # the features are the encoder's (float32 reference), to bfloat16 precision
    ref = TextEncoder.load(t5_folder)
    tok = ref.tokenizer(CAPTIONS, length=tr.text_len, max_length=tr.text_len)
    want = np.asarray(ref.encode_ids(tok.ids, tok.mask))
    np.testing.assert_array_equal(np.asarray(mask), tok.mask)
    got = np.asarray(text, np.float32)
    scale = np.abs(want).max()
    assert np.abs(got - want).max() < 0.05 * scale and np.all(got[~tok.mask] == 0)
    # the same captions held alike by every process (validation): host features, float32
    feats, m = tr.online_t5.encode_host(CAPTIONS[:3])
    assert feats.dtype == np.float32 and feats.shape == (3, tr.text_len, 64)
    np.testing.assert_array_equal(m, tok.mask[:3])
    assert np.abs(feats - want[:3]).max() < 0.05 * scale
