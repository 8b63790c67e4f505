"""The one config-file reader (``infinity_jax.config_files``): ``path[:arg]``, typed ``a.b=v``
overrides, and one-line errors for the usual mistakes."""
import pathlib

import pytest

from infinity_jax import config_files
from infinity_jax.config_files import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]

CONFIG = '''
import ml_collections


def get_config(arg=""):
    c = ml_collections.ConfigDict(dict(name="run", steps=10, lr=1e-3, ema=False, sizes=(1, 2), path=None,
                                       opt=dict(b1=0.9, clip=1)))
    c.arg = arg
    return c
'''


@pytest.fixture
def cfg_file(tmp_path) -> pathlib.Path:
    p = tmp_path / "exp.py"
    p.write_text(CONFIG)
    return p


def test_arg_and_typed_overrides(cfg_file):
    c = config_files.load(f"{cfg_file}:size=2b,pn=1M",
                          ["steps=20", "--config.lr=3e-4", "ema=true", "sizes=(4, 5, 6)", "opt.b1=0.95",
                           "opt.clip=2.0", "name=123", "path=/data"])
    assert c.arg == "size=2b,pn=1M"
    assert c.steps == 20 and isinstance(c.steps, int)
    assert c.lr == pytest.approx(3e-4) and c.ema is True and c.sizes == (4, 5, 6)
    assert c.opt.b1 == pytest.approx(0.95) and c.opt.clip == 2 and isinstance(c.opt.clip, int)
    assert c.name == "123" and c.path == "/data"  # strings stay as written
    # no arg: get_config() with its default; a mapping of values as they are
    c = config_files.load(str(cfg_file), {"steps": 7, "opt.b1": 0.5})
    assert c.arg == "" and c.steps == 7 and c.opt.b1 == 0.5


@pytest.mark.parametrize("overrides, match", [
    (["stepz=3"], r"^config.stepz: no such key$"),
    (["opt.b3=3"], r"^config.opt.b3: no such key$"),
    (["steps=abc"], r"^config.steps: int expected, got 'abc'$"),
    (["steps=2.5"], r"^config.steps: int expected, got '2.5'$"),
    (["ema=maybe"], r"^config.ema: bool expected \(true/false\), got 'maybe'$"),
    (["sizes=7"], r"^config.sizes: tuple expected, got '7'$"),
    (["steps"], r"^override 'steps' is not of the form key=value"),
    ({"steps": "ten"}, r"^config.steps: int expected, got 'ten'$"),
    ({"nope.x": 1}, r"^config.nope.x: no such key$"),
])
def test_override_errors_are_one_line(cfg_file, overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        config_files.load(str(cfg_file), overrides)
    assert "\n" not in str(e.value)


def test_file_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^config file .*missing.py not found$"):
        config_files.load(f"{tmp_path}/missing.py:size=tiny")
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(ConfigError, match=r"^config file .*empty.py defines no get_config\(arg\)$"):
        config_files.load(str(tmp_path / "empty.py"))
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    with pytest.raises(ConfigError, match=r"^config file .*broken.py line 1: "):
        config_files.load(str(tmp_path / "broken.py"))
    (tmp_path / "plain.py").write_text("def get_config(arg=''):\n    return {'a': 1}\n")
    with pytest.raises(ConfigError, match="get_config returned a dict, not a ConfigDict"):
        config_files.load(str(tmp_path / "plain.py"))


def test_repository_configs_load_with_overrides():
    c = config_files.load(f"{ROOT}/configs/infinity.py:size=tiny,runlocal=True",
                          ["batch_size=4", "data.path=/data/shards", "model.dtype=float32"])
    assert c.size == "tiny" and c.batch_size == 4 and c.data.path == "/data/shards" and c.model.dtype == "float32"


def test_demo_config_quick_and_overrides():
    from infinity_jax import demo  # noqa: PLC0415 - the command module (sentencepiece, the sampler)

    full = demo.load_config(None, False)
    quick = demo.load_config(None, True, ["--config.infinity.total_steps=3"])
    assert quick.infinity.total_steps == 3 and full.infinity.total_steps != 3
    assert quick.to_dict() != full.to_dict()
    with pytest.raises(ConfigError, match="config.infinity.total_stepz: no such key"):
        demo.load_config(None, True, ["--config.infinity.total_stepz=3"])
    with pytest.raises(ConfigError, match="not found"):
        demo.load_config("/nonexistent/demo.py", False)
