"""User mistakes on the command line give one clear error line and exit code 2, never a traceback."""
import subprocess

import pytest
from train_helpers import ROOT, subprocess_env, train_command

CASES = {
    "bad_arg": ("size=tiny,runlocal=True,colour=red", {}, "unknown config argument 'colour'"),
    "bad_key": ("size=tiny,runlocal=True", {"optim.bogus": 1}, "unknown config key(s) optim.bogus"),
    "bad_value": ("size=tiny,runlocal=True", {"data.source": "parquet"}, "config.data.source must be"),
    "empty_data": ("size=tiny,runlocal=True", {"data.synthetic.num_records": 3},
                   "cannot fill one global batch of 8 images"),
    "no_workdir_parent": ("size=tiny,runlocal=True", {}, "parent folder of --workdir"),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """All cases run at once (each is a separate process; they fail before compiling anything)."""
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "empty").mkdir()
    procs = {}
    for name, (arg, over, _) in CASES.items():
        over = {k: (v.format(tmp=tmp) if isinstance(v, str) else v) for k, v in over.items()}
        workdir = tmp / "missing" / "run" if name == "no_workdir_parent" else tmp / name
        procs[name] = subprocess.Popen(train_command(workdir, over, arg), env=subprocess_env(1), cwd=ROOT,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return {name: (p.wait(timeout=300), *p.communicate()) for name, p in procs.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_train_cli_user_errors(cli_results, name):
    rc, out, err = cli_results[name]
    assert rc == 2, (out[-2000:], err[-4000:])
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert lines and CASES[name][2] in lines[-1], err[-3000:]
    assert "Traceback" not in err


def test_train_config_mistakes_in_process(tmp_path):
    """The same kind of mistakes, caught when the trainer is built (no subprocess needed)."""
    import jax
    from train_helpers import load_config

    from infinity_jax.data.arrayrecord import ArrayRecordSource
    from infinity_jax.sharding import make_mesh
    from infinity_jax.training.trainer import ConfigError, Trainer

    mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
    with pytest.raises(ConfigError, match="needs config.text.t5_path"):
        Trainer(load_config("size=tiny", **{"data.source": "synthetic"}), None, mesh=mesh)
    with pytest.raises(ConfigError, match="needs config.data.path"):
        Trainer(load_config(**{"data.source": "arrayrecord"}), None, mesh=mesh)
    with pytest.raises(ConfigError, match="exceeds the model's text_maxlen"):
        Trainer(load_config(**{"text.max_len": 64}), None, mesh=mesh)
    with pytest.raises(ConfigError, match="scales"):
        Trainer(load_config(schedule=tuple((i, i) for i in range(1, 17))), None, mesh=mesh)
    with pytest.raises(FileNotFoundError, match="no ArrayRecord shards"):
        ArrayRecordSource(tmp_path)


def test_train_cli_missing_config_file_is_one_line(tmp_path):
    cmd = [c if not c.startswith("--config=") else f"--config={tmp_path}/nope.py:size=tiny"
           for c in train_command(tmp_path / "w", {})]
    p = subprocess.run(cmd, env=subprocess_env(1), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert p.stderr.strip().splitlines()[-1] == f"error: config file {tmp_path}/nope.py not found"
