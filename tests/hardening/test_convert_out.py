"""``convert --out``: a non-empty folder is refused unless ``--overwrite``; the bundle is written to a
temporary folder and renamed at the end, so an interrupted conversion leaves no half bundle."""
import os
import pathlib
import subprocess
import sys

import pytest

from infinity_jax import bundle
from infinity_jax.convert import convert

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _kw(folder):
    return dict(transformer_path=folder / "weights_infinity.npz", vae_path=folder / "weights_vae.npz",
                official_config=folder / "manifest.json", log=lambda *a: None)


def test_non_empty_out_is_refused_then_replaced_with_overwrite(official_tiny, tmp_path):
    out = tmp_path / "bundle"
    (out / "transformer").mkdir(parents=True)
    (out / "transformer" / "mine.txt").write_text("keep me")
    (out / "notes.txt").write_text("keep me too")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(out=out, **_kw(official_tiny))
    assert (out / "transformer" / "mine.txt").read_text() == "keep me" and (out / "notes.txt").exists()
    p = subprocess.run([sys.executable, "-m", "infinity_jax.convert", f"--official_config={official_tiny / 'manifest.json'}",
                        f"--transformer={official_tiny / 'weights_infinity.npz'}",
                        f"--vae={official_tiny / 'weights_vae.npz'}", f"--out={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT)))
    assert p.returncode != 0 and "Traceback" not in p.stderr and "--overwrite" in p.stderr.splitlines()[-1]
    assert (out / "transformer" / "mine.txt").exists()
    convert(out=out, overwrite=True, **_kw(official_tiny))
    assert (out / bundle.CONFIG_NAME).exists() and not (out / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no temporary folder left


def test_interrupted_conversion_leaves_no_half_bundle(official_tiny, tmp_path, monkeypatch):
    calls = []

    def failing(model, directory):
        calls.append(directory)
        if len(calls) == 2:  # the transformer is written, the tokenizer is not
            raise KeyboardInterrupt
        return save_params(model, directory)

    save_params = bundle.save_params
    monkeypatch.setattr(bundle, "save_params", failing)
    out = tmp_path / "bundle"
    with pytest.raises(KeyboardInterrupt):
        convert(out=out, **_kw(official_tiny))
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []
