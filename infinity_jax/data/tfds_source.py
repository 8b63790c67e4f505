"""A TFDS dataset (prepared in ArrayRecord format) as a random-access source.

``TFDSSource("my_dataset", split="train", data_dir="/data/tfds")``: images are read as encoded
bytes (``tfds.decode.SkipDecoding``) and decoded by the pipeline, so TensorFlow is not needed and a
corrupt image is skipped like any other. The caption comes from ``caption_key`` (a Text feature);
with ``caption_key=None`` a ClassLabel feature ``label_key`` gives ``caption_template.format(name)``.

Only datasets prepared with ``file_format="array_record"`` support random access (TFDS's own
``tfds.data_source`` requirement).
"""
from __future__ import annotations

import os

from infinity_jax.data.records import CorruptRecord


class TFDSSource:
    def __init__(self, name: str, *, split: str = "train", data_dir: str | os.PathLike | None = None,
                 image_key: str = "image", caption_key: str | None = "caption", label_key: str = "label",
                 caption_template: str = "a photo of a {}"):
        import tensorflow_datasets as tfds  # noqa: PLC0415

        try:
            builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
        except Exception as e:  # noqa: BLE001 - tfds raises several types for "not found"
            raise FileNotFoundError(f"TFDS dataset {name!r} not found in data_dir={data_dir}: {e}") from e
        features = builder.info.features
        if image_key not in features:
            raise ValueError(f"TFDS dataset {name!r} has no image feature {image_key!r}; features: {list(features)}")
        self._labels = None
        if caption_key is not None and caption_key not in features:
            raise ValueError(f"TFDS dataset {name!r} has no caption feature {caption_key!r}; features: "
                             f"{list(features)} (set caption_key=None to caption from {label_key!r})")
        if caption_key is None:
            if label_key not in features or not hasattr(features[label_key], "names"):
                raise ValueError(f"TFDS dataset {name!r} has neither a caption nor a ClassLabel {label_key!r}")
            self._labels = list(features[label_key].names)
        try:
            self._src = builder.as_data_source(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
        except Exception as e:  # noqa: BLE001
            raise FileNotFoundError(f"TFDS dataset {name!r} split {split!r} cannot be opened for random access "
                                    f"(it must be prepared with file_format='array_record'): {e}") from e
        self.name, self.split = name, split
        self.image_key, self.caption_key, self.label_key = image_key, caption_key, label_key
        self.caption_template = caption_template

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i: int) -> dict:
        try:
            ex = self._src[int(i)]
        except Exception as e:  # noqa: BLE001
            raise CorruptRecord(f"cannot read TFDS record {i}: {e}") from e
        if self._labels is not None:
            caption = self.caption_template.format(self._labels[int(ex[self.label_key])].replace("_", " "))
        else:
            caption = ex[self.caption_key]
            caption = caption.decode("utf-8", "replace") if isinstance(caption, bytes) else str(caption)
        return {"image": ex[self.image_key], "long_caption": caption}

    def __repr__(self) -> str:
        return f"TFDSSource({self.name}, split={self.split}, {len(self)} records)"
