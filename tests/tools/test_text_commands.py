"""The two text commands in ``infinity_jax.tools``: SentencePiece training and T5 feature precomputation."""
import json
import pathlib
import subprocess
import sys

from infinity_jax.text import T5Tokenizer, load

ROOT = pathlib.Path(__file__).resolve().parents[2]
CAPTIONS = [f"a {size} {colour} {shape} on a {bg} background" for size in ("small", "big")
            for colour in ("red", "blue", "green") for shape in ("circle", "square", "star")
            for bg in ("white", "black")]


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=180,
                          cwd=ROOT)


def test_train_sentencepiece_writes_a_tiny_t5_folder(tmp_path):
    corpus = tmp_path / "captions.jsonl"
    corpus.write_text("".join(json.dumps({"long_caption": c}) + "\n" for c in CAPTIONS * 4))
    res = _run("infinity_jax.tools.train_sentencepiece", f"--corpus={corpus}", f"--out={tmp_path / 't5'}",
               "--vocab_size=60", "--tiny_model")
    assert res.returncode == 0, res.stderr[-2000:]
    tok = T5Tokenizer.from_folder(tmp_path / "t5")
    ids = tok.encode("a big red star on a white background")
    assert ids[-1] == tok.eos_id and tok.unk_id not in ids
    model = load(tmp_path / "t5")
    assert model.cfg.vocab_size == tok.vocab_size


def test_text_commands_give_one_line_errors(tmp_path):
    res = _run("infinity_jax.tools.train_sentencepiece", f"--corpus={tmp_path / 'none.txt'}", f"--out={tmp_path}")
    assert res.returncode != 0 and res.stderr.strip().splitlines()[-1] == \
        f"error: --corpus {tmp_path / 'none.txt'} is not a file"
    (tmp_path / "c.jsonl").write_text(json.dumps({"long_caption": "a cat"}) + "\n")
    res = _run("infinity_jax.tools.precompute_text", f"--data={tmp_path / 'c.jsonl'}", f"--t5={tmp_path / 'no_t5'}")
    assert res.returncode != 0 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and f"{tmp_path / 'no_t5'} does not exist" in last
