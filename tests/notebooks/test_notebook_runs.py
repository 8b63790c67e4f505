"""The inference notebook runs top to bottom (smoke mode: a tiny checkpoint made here, CPU)."""
import base64
import io
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "infinity_inference.ipynb"


@pytest.fixture(scope="module")
def tiny_checkpoint(official_tiny, tmp_path_factory):
    """official-tiny weights + a tiny random Flan-T5-shaped text encoder (width 2048), converted."""
    from infinity_jax.convert import convert
    from infinity_jax.text.config import T5Config
    from infinity_jax.tools.train_sentencepiece import build_tiny_t5, train_sentencepiece

    tmp = tmp_path_factory.mktemp("nb")
    corpus = [f"a {c} {s} on a {b} background" for c in ("red", "blue", "green", "small", "big")
              for s in ("fox", "cat", "house", "lighthouse", "bowl of ramen", "astronaut") for b in ("white", "dark")]
    spm = train_sentencepiece(corpus * 20, vocab_size=120)
    t5 = build_tiny_t5(tmp / "t5", spiece_model=spm,
                       config=T5Config(d_model=2048, d_kv=16, d_ff=64, num_layers=1, num_heads=2))
    out = tmp / "ckpt"
    convert(transformer_path=official_tiny / "weights_infinity.npz", vae_path=official_tiny / "weights_vae.npz",
            official_config=official_tiny / "manifest.json", t5=t5, out=out, log=lambda *a: None)
    return out


def _set_parameters(nb, **params):
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n# injected by the test\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())


def test_notebook_runs_top_to_bottom(tiny_checkpoint, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    _set_parameters(nb, CHECKPOINT=str(tiny_checkpoint), PROMPTS=["a red fox", "a blue house"],
                    RESOLUTION="0.06M", ASPECTS=["1:1", "16:9"], DTYPE="float32", CFG=3.0)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code_cells), "a cell did not run"
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    pngs = [o["data"]["image/png"] for c in code_cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 2 + 1 + 2  # grid, two preview strips, two aspect ratios
    sizes = [Image.open(io.BytesIO(base64.b64decode(p))).size for p in pngs]
    assert sizes[0][0] >= 2 * 256  # a grid of two 256x256 images
    text = "".join(o.get("text", "") for c in code_cells for o in c.outputs if o.output_type == "stream")
    assert "s per image" in text and "token grid" in text
    nbformat.write(nb, tmp_path / "executed.ipynb")
