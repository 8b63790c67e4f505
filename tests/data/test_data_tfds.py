"""A TFDS dataset by name and data_dir (prepared here, offline, in ArrayRecord format)."""
import io

import numpy as np
import pytest

from infinity_jax.data.bucketing import make_buckets
from infinity_jax.data.pipeline import DataPipeline
from infinity_jax.data.tfds_source import TFDSSource


def _png(a: np.ndarray) -> io.BytesIO:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    buf.seek(0)
    return buf


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    tfds = pytest.importorskip("tensorflow_datasets")

    class InfinityTinyCaptions(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)), "caption": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=["red_square", "blue_circle"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(12):
                h, w = ((64, 64), (96, 48))[i % 2]
                img = np.full((h, w, 3), 10 * i, np.uint8)
                yield i, {"image": _png(img), "caption": f"image number {i}", "label": i % 2}

    data_dir = tmp_path_factory.mktemp("tfds")
    InfinityTinyCaptions(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    return data_dir


def test_data_tfds_source_by_name(tfds_dir):
    src = TFDSSource("infinity_tiny_captions", data_dir=tfds_dir)
    assert len(src) == 12
    caps = sorted(src[i]["long_caption"] for i in range(12))
    assert caps == sorted(f"image number {i}" for i in range(12))
    assert isinstance(src[0]["image"], bytes)  # decoded by the pipeline, not by TensorFlow
    # no aspect metadata: the pipeline reads the image headers once (and caches them)
    pipe = DataPipeline(src, make_buckets("0.06M", templates=[1.0, 2.0]), global_batch=3, num_threads=2,
                        aspect_cache=str(tfds_dir / "aspects.npy"))
    assert pipe.template_counts() == {1.0: 6, 2.0: 6}
    assert (tfds_dir / "aspects.npy").exists()
    for _ in range(4):
        b = next(pipe)
        assert b["image"].shape[1:3] == pipe.buckets[b["bucket"]].pixel
    labels = TFDSSource("infinity_tiny_captions", data_dir=tfds_dir, caption_key=None)
    assert {labels[i]["long_caption"] for i in range(12)} == {"a photo of a red square", "a photo of a blue circle"}


def test_data_tfds_errors_are_clear(tfds_dir):
    with pytest.raises(FileNotFoundError, match="not found"):
        TFDSSource("no_such_dataset_here", data_dir=tfds_dir)
    with pytest.raises(ValueError, match="no caption feature 'text'"):
        TFDSSource("infinity_tiny_captions", data_dir=tfds_dir, caption_key="text")
