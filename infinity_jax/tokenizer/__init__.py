"""BSQ-VAE tokenizer: CNN encoder/decoder, multi-scale bitwise quantizer, official weight converter.

Public API (channels-last throughout; images NHWC in [-1, 1]):

* :class:`VAEConfig`, :class:`BSQVAE` (alias :data:`Model`), :func:`init` -- the model.
* :func:`load` (:mod:`~infinity_jax.tokenizer.convert`) -- the model from an official checkpoint.
* :func:`jit_encode`, :func:`jit_decode`, :func:`jit_decode_bits` -- compiled entry points.
* :func:`patchify` / :func:`unpatchify` (:mod:`~infinity_jax.tokenizer.packing`) -- 2x2 token packing
  of the 8B (spatial patchify) layout.
* :mod:`~infinity_jax.tokenizer.quantizer` -- BSQ and the multi-scale residual quantizer.
* :mod:`~infinity_jax.tokenizer.convert` -- official state_dict <-> NNX, and the loader :func:`load`.
"""
from infinity_jax.tokenizer.convert import from_official, infer_config, load, to_official
from infinity_jax.tokenizer.packing import patchify, unpatchify
from infinity_jax.tokenizer.quantizer import (
    MultiScaleOutput,
    bits_to_codes,
    bsq,
    codes_from_bits,
    multiscale_quantize,
    var_inputs_from_bits,
)
from infinity_jax.tokenizer.resample import area_resize, bilinear_resize
from infinity_jax.tokenizer.vae import (
    ALLOWED_CODEBOOK_DIMS,
    BSQVAE,
    Decoder,
    Encoder,
    Model,
    VAEConfig,
    default_schedule,
    init,
    jit_decode,
    jit_decode_bits,
    jit_encode,
)

__all__ = [
    "ALLOWED_CODEBOOK_DIMS", "BSQVAE", "Decoder", "Encoder", "Model", "MultiScaleOutput", "VAEConfig",
    "area_resize", "bilinear_resize", "bits_to_codes", "bsq", "codes_from_bits", "default_schedule",
    "from_official", "infer_config", "init", "jit_decode", "jit_decode_bits", "jit_encode", "load",
    "multiscale_quantize", "patchify", "to_official", "unpatchify", "var_inputs_from_bits",
]
