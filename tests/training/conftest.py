"""Fixtures of the training tests: a shard dataset with corrupt images, a shared compilation cache."""
import pathlib

import pytest
from train_helpers import CORRUPT, make_image_folder


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory) -> str:
    """A persistent XLA compilation cache shared by the trainer subprocesses of this session."""
    return str(tmp_path_factory.mktemp("xla_cache"))


@pytest.fixture(scope="session")
def corrupt_shards(tmp_path_factory) -> pathlib.Path:
    """40 captioned 64x64 PNGs, 5 of them corrupt, written to ArrayRecord shards without verification."""
    from infinity_jax.data.writer import write_shards

    root = tmp_path_factory.mktemp("corrupt_data")
    make_image_folder(root / "raw", 40, corrupt=CORRUPT)
    index = write_shards(root / "raw" / "captions.jsonl", root / "raw", root / "shards", shard_size=16, verify=False)
    assert index["num_records"] == 40 and len(index["shards"]) == 3
    return root / "shards"
