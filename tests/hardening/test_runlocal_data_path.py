"""``runlocal=True`` shrinks a run but never replaces the user's explicit ``--config.data.path``
shards by synthetic images; with no path it still uses the synthetic source."""
import pathlib
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "training"))
from train_helpers import ROOT, load_config, make_image_folder, subprocess_env, train_command  # noqa: E402

from infinity_jax.data.arrayrecord import ArrayRecordSource  # noqa: E402
from infinity_jax.data.sources import build_source  # noqa: E402
from infinity_jax.data.synthetic import SyntheticSource  # noqa: E402
from infinity_jax.data.writer import write_shards  # noqa: E402
from infinity_jax.sharding import make_mesh  # noqa: E402
from infinity_jax.training.trainer import ConfigError, Trainer  # noqa: E402


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    make_image_folder(root / "raw", 12)
    write_shards(root / "raw" / "captions.jsonl", root / "raw", root / "shards", shard_size=8)
    return root / "shards"


def test_explicit_data_path_wins_over_runlocal(shards):
    tr = Trainer(load_config(**{"data.path": str(shards)}), None, mesh=make_mesh({"fsdp": 8}))
    src = build_source(tr.config)
    assert isinstance(src, ArrayRecordSource) and len(src) == 12
    plain = Trainer(load_config(), None, mesh=make_mesh({"fsdp": 8}))
    assert isinstance(build_source(plain.config), SyntheticSource)
    # asking for both the synthetic source and a path is ambiguous: an error
    with pytest.raises(ConfigError, match="data.path"):
        Trainer(load_config("size=tiny,runlocal=True,data=synthetic", **{"data.path": str(shards)}), None,
                mesh=make_mesh({"fsdp": 8}))


def test_cli_explicit_path_is_used(shards, tmp_path):
    """On the command line too: the run reads the 12 shard records (a missing path is an error)."""
    p = subprocess.run(train_command(tmp_path / "w", {"data.path": str(tmp_path / "nope"), "total_steps": 0}),
                       env=subprocess_env(1), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert "nope" in p.stderr.strip().splitlines()[-1]
