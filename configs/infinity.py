r"""Infinity text-to-image: model, tokenizer and data settings, one file from a CPU smoke run to a pod.

Variants go through the argument string, e.g.::

  python -m infinity_jax.tools.model_stats --config configs/infinity.py:size=2b
  python -m infinity_jax.train --config configs/infinity.py:size=layer12,runlocal=True --workdir /tmp/w

Arguments: ``size`` (layer12 ... layer48, 2b, 8b, 20b, or ``tiny``), ``pn`` (0.06M, 0.25M,
0.60M, 1M), ``runlocal`` (shrink everything to a seconds-long CPU run).
"""
import ml_collections

from infinity_jax.transformer.config import SIZE_NAMES


def parse_arg(arg: str, **defaults) -> ml_collections.ConfigDict:
    """``'a=1,b=True,c=x'`` -> ConfigDict with typed values (types taken from the defaults)."""
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r}; known: {', '.join(defaults)}")
        t = type(defaults[key])
        if t is bool:
            value = value.lower() in ("1", "true", "yes", "")
        out[key] = t(value)
    return out


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = parse_arg(arg, size="2b", pn="1M", runlocal=False)
    if args.size not in SIZE_NAMES + ("tiny",):
        raise ValueError(f"unknown size {args.size!r}; choose one of {', '.join(SIZE_NAMES + ('tiny',))}")
    c = ml_collections.ConfigDict()
    c.size = args.size
    c.pn = args.pn
    c.h_div_w = 1.0
    c.text_len = 77  # typical caption length for FLOP accounting
    c.model = ml_collections.ConfigDict(dict(scan_blocks=True, remat=True, dtype="bfloat16"))
    c.tokenizer = ml_collections.ConfigDict(dict(codebook_dim=32, patch_size=16, base_ch=128))
    if args.size == "tiny":
        c.model.update(depth=2, embed_dim=128, num_heads=2, block_chunks=2)
        c.tokenizer.base_ch = 32
    if args.runlocal:
        c.pn = "0.06M"
        c.model.dtype = "float32"
    return c
