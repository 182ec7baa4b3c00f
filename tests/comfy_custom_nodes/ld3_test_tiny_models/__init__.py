"""Test-only ComfyUI nodes: the tiny Flux of testing/tiny_models.py as a MODEL, and seeded text conditioning.

A Flux that ComfyUI's UNETLoader detects needs the full width (detection hard-codes 24 heads and
3072 channels) and DualCLIPLoader needs a full T5-XXL: neither fits a CPU test. The Flux pipeline
test therefore starts a ComfyUI whose extra custom_nodes path holds this folder and swaps these two
nodes in for UNETLoader and DualCLIPLoader + CLIPTextEncode; every other node of the workflow is the
real one. Never loaded outside the tests.
"""

import importlib.util
import sys
import zlib
from pathlib import Path

_TINY_MODELS = Path(__file__).resolve().parents[3] / "testing" / "tiny_models.py"
_spec = importlib.util.spec_from_file_location("ld3_tests_tiny_models", _TINY_MODELS)
tiny_models = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tiny_models
_spec.loader.exec_module(tiny_models)


class LD3TestTinyFluxModel:
    """testing/tiny_models.build_tiny_flux as a MODEL (Flux-dev layout, guidance embedding, fp32)."""

    CATEGORY = "LD3 tests"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 2, "min": 0, "max": 2**31 - 1})}}

    def load(self, seed):
        return (tiny_models.build_tiny_flux(seed=seed),)


class LD3TestTinyFluxText:
    """Seeded random conditioning for the tiny Flux, the seed derived from the text (CRC-32)."""

    CATEGORY = "LD3 tests"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True})}}

    def encode(self, text):
        seed = zlib.crc32(text.encode("utf-8"))
        return (tiny_models.conditioning(tiny_models.FLUX_CONTEXT, tiny_models.FLUX_POOLED, seed=seed),)


NODE_CLASS_MAPPINGS = {
    "LD3TestTinyFluxModel": LD3TestTinyFluxModel,
    "LD3TestTinyFluxText": LD3TestTinyFluxText,
}
