"""Test setup: 8 simulated CPU devices and the location of the shared reference fixtures.

XLA_FLAGS must be set before jax is imported, which is why this happens at module import.
"""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# compile-only TPU topologies (libtpu) in several test processes at once
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_dir() -> pathlib.Path:
    env = os.environ.get("INFINITY_JAX_SHARED")
    return pathlib.Path(env) if env else ROOT.parent / "shared"


def _fixture(name: str) -> pathlib.Path:
    path = shared_dir() / "fixtures" / name
    if not (path / "manifest.json").exists():
        msg = f"reference fixture {path} not found (set INFINITY_JAX_SHARED)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


#: The reference fixtures of the official code: the 2B-style layout and the 8B's spatial patchify.
OFFICIAL_FIXTURES = ("official-tiny", "official-patchify")


@pytest.fixture(scope="session")
def official_tiny() -> pathlib.Path:
    """Folder of the official-tiny reference fixture."""
    return _fixture("official-tiny")


@pytest.fixture(scope="session")
def official_patchify() -> pathlib.Path:
    """Folder of the official-patchify reference fixture (the official 8B's token layout)."""
    return _fixture("official-patchify")


@pytest.fixture(scope="session", params=OFFICIAL_FIXTURES)
def official(request) -> pathlib.Path:
    """Each reference fixture in turn (parity tests run on both layouts)."""
    return _fixture(request.param)
