"""infinity-jax: a JAX/Flax NNX implementation of Infinity (bitwise autoregressive text-to-image)."""
from setuptools import find_packages, setup

setup(
    name="infinity-jax",
    version="0.1.0",
    description="Infinity (bitwise scale-autoregressive text-to-image) in JAX / Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["infinity_jax", "infinity_jax.*"]),
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "grain>=0.2.18",
        "tensorflow-datasets",
        "sentencepiece",
        "absl-py",
        "ml-collections",
        "numpy",
        "pillow",
        "safetensors",
        "tqdm",
        "regex",
        "scipy",
        "matplotlib",
        "tensorboardX",
        "protobuf",
        "array-record",
    ],
    extras_require={
        "torch": ["torch>=2.5"],
        "test": ["pytest>=8", "pytest-xdist>=3", "torch>=2.5", "transformers>=4.40", "nbclient", "nbformat", "ipykernel"],
        # libtpu for ahead-of-time compilation for TPU topologies (infinity_jax.tools.aot) on any
        # machine; pinned to the jax version it was built with (pip resolves libtpu 0.0.42.1)
        "tpu": ["jax[tpu]==0.10.2"],
    },
    # each command also runs as `python -m <module>`
    entry_points={
        "console_scripts": [
            "infinity-generate = infinity_jax.generate:run",
            "infinity-train = infinity_jax.train:run",
            "infinity-train-tokenizer = infinity_jax.train_tokenizer:run",
            "infinity-convert = infinity_jax.convert:run",
            "infinity-demo = infinity_jax.demo:cli",
            "infinity-scaling = infinity_jax.scaling.__main__:run",
            "infinity-aot = infinity_jax.tools.aot:cli",
            "infinity-run-fixture = infinity_jax.tools.run_fixture:main",
            "infinity-model-stats = infinity_jax.tools.model_stats:run",
            "infinity-write-shards = infinity_jax.data.writer:run",
            "infinity-precompute-text = infinity_jax.tools.precompute_text:run",
            "infinity-train-sentencepiece = infinity_jax.tools.train_sentencepiece:run",
            "infinity-prefix-replay = infinity_jax.eval.prefix_replay:main",
        ],
    },
)
