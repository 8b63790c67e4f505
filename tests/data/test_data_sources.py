"""Data sources by name (``infinity_jax.data.sources``): built-in factories, older spellings, user
``module:callable`` specs, the source checks, and the repository's configs."""
import pathlib

import ml_collections
import numpy as np
import pytest

from infinity_jax import config_files
from infinity_jax.config_files import ConfigError
from infinity_jax.data import shapes
from infinity_jax.data import sources
from infinity_jax.data.arrayrecord import ArrayRecordSource
from infinity_jax.data.synthetic import SyntheticSource

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _data(**kw) -> ml_collections.ConfigDict:
    d = dict(source="factory", path="", factory="", factory_kwargs={}, tfds=dict(name=""),
             synthetic=dict(num_records=4, sizes=((32, 32),), seed=0))
    d.update(kw)
    return ml_collections.ConfigDict({"data": d})


def test_builtin_names_and_the_old_demo_specs_resolve_in_data():
    assert sources.resolve_factory("shapes") is shapes.shapes_source
    assert sources.resolve_factory("shapes_heldout") is shapes.heldout_images
    # the spellings of older configs (saved in existing workdirs) name the same factories, from data/
    assert sources.resolve_factory("infinity_jax.demo:shapes_source") is shapes.shapes_source
    assert sources.resolve_factory("infinity_jax.demo:heldout_images") is shapes.heldout_images
    # user code: any module:callable
    assert sources.resolve_factory("infinity_jax.data.shapes:ShapesSource") is shapes.ShapesSource


@pytest.mark.parametrize("spec, match", [
    ("shapez", r"config.data.factory must be one of \['shapes', 'shapes_heldout'\] or 'module:callable'"),
    ("no_such_module_xyz:fn", "cannot import config.data.factory 'no_such_module_xyz:fn'"),
    ("infinity_jax.data.shapes:nope", "cannot import config.data.factory"),
])
def test_bad_factory_specs_are_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        sources.build_source(_data(factory=spec))


def test_shapes_source_by_name_and_by_old_spec_are_the_same_stream():
    kw = dict(size=16, seed=3, length=10, style="lattice", backgrounds=("light gray",))
    new = sources.build_source(_data(factory="shapes", factory_kwargs=kw))
    old = sources.build_source(_data(factory="infinity_jax.demo:shapes_source", factory_kwargs=kw))
    assert isinstance(new, shapes.ShapesSource) and len(new) == 10 and new.spec_format is None
    for i in (0, 7):
        assert new[i]["caption"] == old[i]["caption"]
        np.testing.assert_array_equal(new[i]["image"], old[i]["image"])
    assert new[0]["image"].shape == (16, 16, 3) and "spec" not in new[0]


def test_heldout_images_are_the_true_renders():
    imgs = sources.resolve_factory("shapes_heldout", "config.eval.factory")(size=16, seeds=2)
    ref, specs = shapes.render_heldout(16, range(2))
    assert imgs.dtype == np.uint8 and imgs.shape == (2 * len(shapes.heldout_prompts()), 16, 16, 3) == ref.shape
    np.testing.assert_array_equal(imgs, ref)
    assert len(specs) == len(imgs)


def test_built_in_sources_and_checks():
    assert isinstance(sources.build_source(_data(source="synthetic")), SyntheticSource)
    c = _data(source="synthetic", path="/data/shards", synthetic_unless_path=True)
    sources.resolve_data_source(c)  # runlocal's synthetic default gives way to an explicit path
    assert c.data.source == "arrayrecord"
    with pytest.raises(ConfigError, match="source='synthetic' ignores it"):
        sources.resolve_data_source(_data(source="synthetic", path="/data/shards"))
    with pytest.raises(ConfigError, match="needs config.data.path"):
        sources.resolve_data_source(_data(source="arrayrecord"))
    with pytest.raises(ConfigError, match="needs config.data.tfds.name"):
        sources.resolve_data_source(_data(source="tfds"))
    with pytest.raises(ConfigError, match="must be 'arrayrecord', 'tfds', 'synthetic' or 'factory', got 'csv'"):
        sources.resolve_data_source(_data(source="csv"))
    with pytest.raises(ConfigError, match="must be one of"):
        sources.build_source(_data(source="csv"))
    assert sources.SOURCES == ("arrayrecord", "tfds", "synthetic", "factory")
    assert ArrayRecordSource  # the arrayrecord branch is covered by tests/hardening/test_runlocal_data_path.py


def test_no_config_names_a_command_module():
    """Configs name built-in factories or data modules, never the demo command."""
    for f in sorted((ROOT / "configs").glob("*.py")):
        assert "infinity_jax.demo:" not in f.read_text(), f


@pytest.mark.parametrize("spec, section", [
    ("configs/tokenizer.py:preset=shapes", "data"),
    ("configs/infinity.py:size=tiny,data=shapes", "data"),
    ("configs/scaling_toy.py", "validation"),
])
def test_repository_configs_build_their_sources(spec, section):
    c = config_files.load(str(ROOT / spec))
    d = c[section]
    src = sources.build_source(ml_collections.ConfigDict({"data": d.to_dict()}))
    item = src[0]
    assert isinstance(src, shapes.ShapesSource) and item["image"].dtype == np.uint8 and item["caption"]


def test_tokenizer_config_eval_factory_resolves():
    c = config_files.load(str(ROOT / "configs/tokenizer.py:preset=shapes"))
    imgs = sources.resolve_factory(c.eval.factory, "config.eval.factory")(**dict(c.eval.factory_kwargs, seeds=1))
    assert imgs.shape[0] == len(shapes.heldout_prompts()) and imgs.dtype == np.uint8
