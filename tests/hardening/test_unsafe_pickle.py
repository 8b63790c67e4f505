"""Weight files are data, not programs: a ``.pth`` / ``.bin`` whose pickle would run code is refused
by every command that reads one, unless the user opts in with ``--trust_pickle``."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from infinity_jax.state_dict import UnsafeCheckpointError, load_state_dict, open_state_dict

ROOT = pathlib.Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this writes ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _crafted(path, marker, tensors=None):
    state = {k: torch.from_numpy(v) for k, v in (tensors or {"w": np.ones((2, 2), np.float32)}).items()}
    torch.save({"state_dict": state, "extra": _Payload(marker)}, str(path))
    return path


def test_load_and_open_refuse_pickled_code(tmp_path):
    marker = tmp_path / "ran"
    path = _crafted(tmp_path / "evil.pth", marker)
    for read in (load_state_dict, open_state_dict):
        with pytest.raises(UnsafeCheckpointError, match="trust_pickle"):
            read(path)
    assert not marker.exists()
    # the explicit opt-in still reads trusted legacy files
    state = load_state_dict(path, trust_pickle=True)
    assert marker.exists() and state["w"].shape == (2, 2)


def test_plain_tensor_pth_still_loads(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"vae": {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}}, str(path))
    np.testing.assert_array_equal(load_state_dict(path)["a"], np.arange(6, dtype=np.float32).reshape(2, 3))
    np.testing.assert_array_equal(np.asarray(open_state_dict(path)["a"]), np.arange(6).reshape(2, 3))


def test_every_loading_path_refuses(tmp_path, official_tiny):
    """tokenizer.checkpoint, init.official, the T5 folder of a bundle, and the converter's library form."""
    sys.path.insert(0, str(ROOT / "tests" / "training"))
    from train_helpers import load_config  # noqa: PLC0415

    from infinity_jax.convert import convert  # noqa: PLC0415
    from infinity_jax.sharding import make_mesh  # noqa: PLC0415
    from infinity_jax.text.convert import read_weights  # noqa: PLC0415
    from infinity_jax.training.trainer import ConfigError, Trainer  # noqa: PLC0415

    marker = tmp_path / "ran"
    evil = _crafted(tmp_path / "evil.pth", marker)
    with pytest.raises(ConfigError, match="trust_pickle"):
        Trainer(load_config(batch_size=8, **{"tokenizer.checkpoint": str(evil)}), None, mesh=make_mesh({"fsdp": 8}))
    tr = Trainer(load_config(batch_size=8, **{"init.official": str(evil)}), None, mesh=make_mesh({"fsdp": 8}))
    with pytest.raises(ConfigError, match="trust_pickle"):
        tr.init_params()
    t5 = tmp_path / "t5"
    t5.mkdir()
    _crafted(t5 / "pytorch_model.bin", marker)
    with pytest.raises(UnsafeCheckpointError):
        read_weights(t5)
    man = tmp_path / "man.json"
    man.write_text((official_tiny / "manifest.json").read_text())
    for kw in ({"transformer_path": evil, "vae_path": official_tiny / "weights_vae.npz"},
               {"transformer_path": official_tiny / "weights_infinity.npz", "vae_path": evil}):
        with pytest.raises(UnsafeCheckpointError):
            convert(out=tmp_path / "out", official_config=man, log=lambda *a: None, **kw)
    assert not marker.exists()


def test_convert_cli_one_line(tmp_path, official_tiny):
    marker = tmp_path / "ran"
    evil = _crafted(tmp_path / "evil.pth", marker)
    p = subprocess.run([sys.executable, "-m", "infinity_jax.convert", "--official_config",
                        str(official_tiny / "manifest.json"), "--transformer", str(evil),
                        "--vae", str(official_tiny / "weights_vae.npz"), "--out", str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)})
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1].startswith("error: ") and "--trust_pickle" in p.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_generate_refuses_a_crafted_text_encoder(tmp_path, official_tiny):
    """``generate --ckpt`` on a bundle whose ``text_encoder/pytorch_model.bin`` runs code: one line."""
    from infinity_jax.convert import convert  # noqa: PLC0415

    ckpt = convert(transformer_path=official_tiny / "weights_infinity.npz", vae_path=official_tiny / "weights_vae.npz",
                   official_config=official_tiny / "manifest.json", out=tmp_path / "ckpt", log=lambda *a: None)
    te = ckpt / "text_encoder"
    te.mkdir()
    (te / "config.json").write_text('{"model_type": "t5", "d_model": 2048, "d_kv": 8, "d_ff": 16, "num_layers": 1, '
                                    '"num_heads": 2, "vocab_size": 32}')
    marker = tmp_path / "ran"
    _crafted(te / "pytorch_model.bin", marker)
    cfg = json.loads((ckpt / "infinity_config.json").read_text())
    cfg["text_encoder"] = "text_encoder"
    (ckpt / "infinity_config.json").write_text(json.dumps(cfg))
    p = subprocess.run([sys.executable, "-m", "infinity_jax.generate", f"--ckpt={ckpt}", "--prompt=a cat",
                        f"--out={tmp_path / 'img.png'}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": str(ROOT)})
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "pytorch_model.bin" in last and "--trust_pickle" in last, last
    assert not marker.exists()
