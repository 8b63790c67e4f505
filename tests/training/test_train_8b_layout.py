"""The official 8B's token layout end to end on the CPU, at a tiny size: ``configs/infinity.py:size=8b``
(spatial patchify, d = 14, patch-8 tokenizer) trains one step and its bundle generates an image
through the ``generate`` command."""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
from train_helpers import ROOT, load_config

# a tiny 8B-shaped model: the official layout and tokenizer shape, small width and depth
TINY_8B = {"model.depth": 2, "model.embed_dim": 64, "model.num_heads": 1, "model.block_chunks": 1,
           "model.drop_path_rate": 0.0, "model.scan_blocks": False, "model.remat": False,
           "batch_size": 2, "total_steps": 1, "data.synthetic.num_records": 8, "checkpoint.every": 1000}


def test_8b_size_config_is_the_official_layout():
    from infinity_jax.transformer.config import size_config

    cfg = size_config("8b")
    assert (cfg.codebook_dim, cfg.apply_spatial_patchify, cfg.token_bits, cfg.vocab) == (14, True, 56, 112)
    c = load_config("size=8b")
    assert c.model.apply_spatial_patchify and c.model.codebook_dim == 14
    assert (c.tokenizer.patch_size, tuple(c.tokenizer.ch_mult)) == (8, (1, 2, 4, 4))


def test_8b_layout_trains_and_generates(tmp_path):
    import jax

    from infinity_jax import bundle
    from infinity_jax.sharding import make_mesh
    from infinity_jax.tokenizer import vae as V
    from infinity_jax.training.trainer import Trainer

    config = load_config("size=8b,runlocal=True", **TINY_8B)
    trainer = Trainer(config, str(tmp_path / "run"), mesh=make_mesh({"data": 1}, devices=jax.devices()[:1]))
    m, v = trainer.mcfg, trainer.vcfg
    assert (m.codebook_dim, m.apply_spatial_patchify, m.token_bits) == (14, True, 56)
    assert (v.patch_size, v.ch_mult, v.apply_spatial_patchify, v.token_stride) == (8, (1, 2, 4, 4), True, 16)
    bucket = trainer.buckets[0]
    assert bucket.scales[-1] == (1, 4, 4) and bucket.pixel == (64, 64)  # 4x4 tokens = 8x8 tokenizer grid

    last = trainer.train()
    assert int(last["step"]) == 1 and np.isfinite(last["loss"]) and 0.0 <= last["bit_accuracy"] <= 1.0
    # 56 bits per token: an untrained head is near chance on the bitwise cross-entropy
    assert abs(float(last["loss"]) - np.log(2)) < 0.2

    transformer = trainer.md.merge(jax.device_get(trainer.state["params"]))
    tokenizer = V.init(v, seed=3)
    sched = [list(s) for s in bucket.scales]
    out = bundle.save(tmp_path / "bundle", transformer, tokenizer,
                      sampling={"schedules": {"1.0": sched}, "cfg": 3.0, "tau": 0.5, "top_k": 0, "top_p": 0.0})
    saved = json.loads((out / bundle.CONFIG_NAME).read_text())
    assert saved["tokenizer"]["apply_spatial_patchify"] and saved["transformer"]["codebook_dim"] == 14

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "text.npz", features=rng.normal(size=(1, 5, m.text_channels)).astype(np.float32),
             mask=np.ones((1, 5), bool))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    p = subprocess.run([sys.executable, "-m", "infinity_jax.generate", f"--ckpt={out}",
                        f"--text_features={tmp_path / 'text.npz'}", "--save_scales", f"--out={tmp_path / 'img.png'}"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    img = np.asarray(Image.open(tmp_path / "img.png"))
    assert img.shape == (64, 64, 3) and img.std() > 0
    assert (tmp_path / "img_scales.png").exists()  # the progressive previews decode the 8x8 tokenizer grid
