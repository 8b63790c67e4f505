"""``generate``: every bad input is one clear line naming the flag or file, checked before the model
is loaded where possible; ``--out x.jpg`` writes a JPEG; seeds up to 2^32 - 1 work."""
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def setup(official_tiny, tmp_path_factory):
    from infinity_jax.convert import convert

    tmp = tmp_path_factory.mktemp("gen")
    ckpt = convert(transformer_path=official_tiny / "weights_infinity.npz", vae_path=official_tiny / "weights_vae.npz",
                   official_config=official_tiny / "manifest.json", out=tmp / "ckpt", log=lambda *a: None)
    inputs = np.load(official_tiny / "inputs.npz")
    np.savez(tmp / "f.npz", features=inputs["text_features"][:1], mask=inputs["text_mask"][:1])
    np.savez(tmp / "nofeat.npz", x=np.zeros(3))
    np.savez(tmp / "badmask.npz", features=inputs["text_features"][:1], mask=inputs["text_mask"][:, :5])
    np.savez(tmp / "width.npz", features=np.zeros((1, 4, 7), np.float32))
    (tmp / "garbage.npz").write_bytes(b"not a zip file")
    trunc = tmp / "trunc_cfg"
    shutil.copytree(ckpt, trunc)
    text = (trunc / "infinity_config.json").read_text()
    (trunc / "infinity_config.json").write_text(text[: len(text) // 2])
    trunc_t = tmp / "trunc_tensor"
    shutil.copytree(ckpt, trunc_t)
    big = max((f for f in (trunc_t / "transformer").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    big.write_bytes(big.read_bytes()[:100])
    (tmp / "a_file").write_text("")  # a folder that cannot be created, whoever runs the test
    return {"ckpt": ckpt, "tmp": tmp, "trunc_cfg": trunc, "trunc_tensor": trunc_t}


F = "--text_features={tmp}/f.npz"
CASES = {  # name: (args, expected text in the error line)
    "batch0": (["--batch=0", F], "--batch must be >= 1"),
    "batch_neg": (["--batch=-1", F], "--batch must be >= 1"),
    "cfg_neg": (["--cfg=-5", F], "--cfg"),
    "cfg_abc": (["--cfg=abc", F], "--cfg"),
    "tau0": (["--tau=0", F], "--tau must be > 0"),
    "tau_neg": (["--tau=-1", F], "--tau must be > 0"),
    "top_p": (["--top_p=1.5", F], "--top_p"),
    "empty_prompt": (["--prompt=   "], "empty"),
    "seed_big": (["--seed=4294967296", F], "--seed"),
    "seed_neg": (["--seed=-1", F], "--seed"),
    "out_unwritable": ([F, "--out={tmp}/a_file/sub/x.png"], "cannot write"),
    "out_suffix_many": (["--prompt=a", "--prompt=b", "--out={tmp}/x.jpg"], "one file"),
    "tf_missing": (["--text_features={tmp}/none.npz"], "does not exist"),
    "tf_nokey": (["--text_features={tmp}/nofeat.npz"], "'features'"),
    "tf_garbage": (["--text_features={tmp}/garbage.npz"], "cannot read"),
    "tf_mask": (["--text_features={tmp}/badmask.npz"], "mask"),
    "tf_width": (["--text_features={tmp}/width.npz", "--ckpt={ckpt}"], "text features have width 7"),
    "trunc_cfg": (["--ckpt={trunc_cfg}", F], "infinity_config.json"),
    "trunc_tensor": (["--ckpt={trunc_tensor}", F], "transformer"),
}


def _args(setup, name):
    args = [a.format(**setup) for a in CASES[name][0]]
    if not any(a.startswith("--ckpt") for a in args):
        args = [f"--ckpt={setup['ckpt']}", *args]
    if not any(a.startswith("--out") for a in args):
        args.append(f"--out={setup['tmp'] / ('out_' + name)}")
    return ["--resolution=0.06M", *args]


#: Bundles that fail to load end the process at once (``os._exit``): checked in a subprocess only.
LOAD_FAILURES = ("trunc_cfg", "trunc_tensor")


@pytest.mark.parametrize("name", [n for n in CASES if n not in LOAD_FAILURES])
def test_generate_bad_input_is_one_line(setup, name, capsys):
    """The command's ``main`` in this process (it ends with ``sys.exit('error: ...')``)."""
    from absl import flags

    from infinity_jax import generate

    flags.FLAGS.unparse_flags()
    flags.FLAGS(["generate", *_args(setup, name)])
    with pytest.raises(SystemExit) as info:
        generate.main([])
    msg = str(info.value.code)
    assert msg.startswith("error: ") and len(msg.splitlines()) == 1 and CASES[name][1] in msg, msg
    assert not (setup["tmp"] / ("out_" + name)).exists()  # nothing left behind
    if name not in ("tf_width", "trunc_cfg", "trunc_tensor"):
        assert "loaded" not in capsys.readouterr().out  # rejected before the model was loaded


@pytest.mark.parametrize("name", ["batch0", *LOAD_FAILURES])
def test_generate_command_prints_no_traceback(setup, name):
    p = subprocess.run([sys.executable, "-m", "infinity_jax.generate", *_args(setup, name)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and CASES[name][1] in last, last
    assert not (setup["tmp"] / ("out_" + name)).exists()


def test_generate_out_suffix_and_large_seed(setup):
    out = setup["tmp"] / "pic.jpg"
    p = subprocess.run([sys.executable, "-m", "infinity_jax.generate", f"--ckpt={setup['ckpt']}", "--resolution=0.06M",
                        f"--text_features={setup['tmp']}/f.npz", f"--seed={2 ** 31 + 5}", f"--out={out}"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert out.is_file() and Image.open(out).format == "JPEG"
