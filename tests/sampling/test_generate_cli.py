"""The convert and generate commands: official files -> checkpoint folder -> PNGs, and clear errors."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import convert_fixture, fixture, schedule

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(*args, ok=True):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    p = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    if ok:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


@pytest.fixture(scope="module")
def ckpt(official, tmp_path_factory):
    """Each reference fixture converted from its official files and manifest (the layout read from it)."""
    return convert_fixture(official, tmp_path_factory.mktemp("ckpt") / official.name)


@pytest.fixture(scope="module")
def tiny_ckpt(official_tiny, tmp_path_factory):
    return convert_fixture(official_tiny, tmp_path_factory.mktemp("ckpt") / "tiny")


def test_checkpoint_reproduces_official_greedy_image(ckpt, official):
    from infinity_jax.sampling.pipeline import Pipeline
    from infinity_jax.sampling.sampler import SamplingConfig
    from infinity_jax.schedules import official_patchify

    manifest, inputs, goldens = fixture(str(official))
    g = goldens["golden_sampling"]
    pipe = Pipeline.from_checkpoint(ckpt)
    patch = official_patchify(manifest)
    assert pipe.transformer.cfg.apply_spatial_patchify == pipe.tokenizer.config.apply_spatial_patchify == patch
    assert pipe.tokenizer.config.patch_size == (8 if patch else 16)
    # sample 0 has no near-tie bit on the greedy path: its decoded image must match
    out = pipe.sampler.generate(inputs["text_features"][:1], inputs["text_mask"][:1], schedule(str(official)),
                                settings=SamplingConfig(cfg=4.0, tau=0.5, top_k=1, top_p=0.0))
    img = np.asarray(out.images)[0].transpose(2, 0, 1)
    np.testing.assert_allclose(img, g["greedy/decoded_image"][0], atol=1e-4, rtol=0)
    res = pipe(text_features=inputs["text_features"][:1], text_mask=inputs["text_mask"][:1], resolution="0.06M",
               top_k=1, save_scales=True)
    ours = np.asarray(res.images[0]).astype(int)
    ref = g["greedy/image_uint8_bgr"][0][:, :, ::-1].astype(int)
    assert np.abs(ours - ref).max() <= 1 and np.mean(ours != ref) < 0.01
    assert len(res.previews[0]) == 7


def test_generate_command_writes_pngs(ckpt, official, tmp_path):
    _, inputs, _ = fixture(str(official))
    np.savez(tmp_path / "f.npz", features=inputs["text_features"], mask=inputs["text_mask"])
    p = _run("infinity_jax.generate", f"--ckpt={ckpt}", f"--text_features={tmp_path / 'f.npz'}", "--resolution=0.06M",
             "--batch=2", "--save_scales", "--param_dtype=bfloat16", f"--out={tmp_path / 'out'}")
    for i in range(2):
        im = Image.open(tmp_path / "out" / f"{i:04d}.png")
        assert im.size == (256, 256)
        assert Image.open(tmp_path / "out" / f"{i:04d}_scales.png").size[0] > 256 * 6
    assert "s per image" in p.stdout or "2 image(s)" in p.stdout


def test_clear_errors(tiny_ckpt, tmp_path):
    ckpt = tiny_ckpt
    p = _run("infinity_jax.generate", f"--ckpt={tmp_path / 'nope'}", "--prompt=x", ok=False)
    assert p.returncode != 0 and "does not exist" in p.stderr and "Traceback" not in p.stderr
    p = _run("infinity_jax.generate", f"--ckpt={ckpt}", "--prompt=x", "--aspect=9:1", ok=False)
    assert "too far from every template" in p.stderr and "Traceback" not in p.stderr
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    p = _run("infinity_jax.generate", f"--ckpt={ckpt}", f"--prompts_file={empty}", ok=False)
    assert "has no prompts" in p.stderr and "Traceback" not in p.stderr
    p = _run("infinity_jax.generate", f"--ckpt={ckpt}", "--prompt=x", "--resolution=2M", ok=False)
    assert "unknown resolution" in p.stderr
    # a checkpoint whose config does not match its weights
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(ckpt, bad)
    cfg = json.loads((bad / "infinity_config.json").read_text())
    cfg["transformer"]["embed_dim"] = 256
    cfg["transformer"]["num_heads"] = 4
    (bad / "infinity_config.json").write_text(json.dumps(cfg))
    p = _run("infinity_jax.generate", f"--ckpt={bad}", "--prompt=x", ok=False)
    assert "does not match" in p.stderr and "Traceback" not in p.stderr
    # no text encoder in this checkpoint: a prompt needs one
    p = _run("infinity_jax.generate", f"--ckpt={ckpt}", "--prompt=a cat", "--resolution=0.06M", ok=False)
    assert "no text encoder" in p.stderr


def test_convert_rejects_wrong_files(official_tiny, tmp_path):
    p = _run("infinity_jax.convert", f"--official_config={official_tiny / 'manifest.json'}",
             f"--transformer={official_tiny / 'weights_vae.npz'}", f"--vae={official_tiny / 'weights_vae.npz'}",
             f"--out={tmp_path / 'x'}", ok=False)
    assert p.returncode != 0 and "missing keys" in p.stderr and "Traceback" not in p.stderr
    # the 8B layout (d = 14) with a d = 32 tokenizer
    patch = official_tiny.parent / "official-patchify"
    if patch.exists():
        p = _run("infinity_jax.convert", f"--official_config={patch / 'manifest.json'}",
                 f"--transformer={patch / 'weights_infinity.npz'}", f"--vae={official_tiny / 'weights_vae.npz'}",
                 f"--out={tmp_path / 'y'}", ok=False)
        assert p.returncode != 0 and "Traceback" not in p.stderr and "error:" in p.stderr, p.stderr[-2000:]


def test_cfg_insertion_layer_is_validated_and_exposed(tiny_ckpt, official_tiny, tmp_path):
    """0 (logits) or -n with 1 <= n < depth (hidden states); anything else is a one-line error, not
    guidance silently switched off."""
    from infinity_jax.sampling.pipeline import Pipeline
    from infinity_jax.sampling.sampler import SamplingConfig

    _, inputs, _ = fixture(str(official_tiny))
    pipe = Pipeline.from_checkpoint(tiny_ckpt)
    depth = pipe.transformer.cfg.depth
    feats, mask = inputs["text_features"][:1], inputs["text_mask"][:1]
    for bad in (1, 5, -depth, -depth - 3):
        with pytest.raises(ValueError, match="cfg_insertion_layer"):
            pipe(text_features=feats, text_mask=mask, resolution="0.06M", cfg_insertion_layer=bad)
        with pytest.raises(ValueError, match="cfg_insertion_layer"):
            pipe.sampler.generate(feats, mask, schedule(str(official_tiny)),
                                  settings=SamplingConfig(cfg=4.0, cfg_insertion_layer=bad), decode=False)
    # a valid layer changes the result (guidance moves from the logits to the hidden states)
    kw = dict(text_features=feats, text_mask=mask, resolution="0.06M", top_k=1, cfg=4.0)
    on_logits = np.asarray(pipe(**kw).images[0])
    on_hidden = np.asarray(pipe(cfg_insertion_layer=1 - depth, **kw).images[0])
    assert not np.array_equal(on_logits, on_hidden)
    np.savez(tmp_path / "f.npz", features=feats, mask=mask)
    p = _run("infinity_jax.generate", f"--ckpt={tiny_ckpt}", f"--text_features={tmp_path / 'f.npz'}",
             "--cfg_insertion_layer=3", f"--out={tmp_path / 'o.png'}", ok=False)
    assert p.returncode != 0 and "cfg_insertion_layer must be" in p.stderr and "Traceback" not in p.stderr
