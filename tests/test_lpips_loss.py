"""LPIPS-AlexNet loaded offline: official heads, zero on equal images, monotone in noise, differentiable."""

import os
from pathlib import Path

import lpips
import pytest
import torch
from safetensors.torch import load_file, save_file

from ld3_core import lpips_loss
from ld3_core.errors import LD3InputError
from ld3_core.lpips_loss import load_lpips, lpips_distance

PACK_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("LD3_COMFYUI_DIR", PACK_ROOT / ".comfyui" / "ComfyUI"))
WEIGHTS = COMFYUI_DIR / "models" / "lpips" / "alexnet.safetensors"
PACKAGE_HEADS = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"

needs_weights = pytest.mark.skipif(
    not WEIGHTS.is_file(), reason=f"no LPIPS weights at {WEIGHTS} (scripts/setup.sh)"
)


@pytest.fixture(scope="module")
def model():
    if not WEIGHTS.is_file():
        pytest.skip(f"no LPIPS weights at {WEIGHTS}")
    return load_lpips(str(WEIGHTS), "cpu")


def smooth_image(size: int = 64, batch: int = 1) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = torch.stack(
        [0.5 + 0.4 * torch.sin(6 * xx), 0.5 + 0.4 * torch.cos(5 * yy), 0.5 + 0.3 * torch.sin(4 * (xx + yy))]
    )
    return img[None].repeat(batch, 1, 1, 1)


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """A torch hub folder of our own, so no real cache is read or written."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


@needs_weights
def test_stored_heads_are_the_official_lpips_heads():
    ours = load_file(str(WEIGHTS))
    official = torch.load(PACKAGE_HEADS, map_location="cpu", weights_only=True)
    for i in range(5):
        key = f"lin{i}.model.1.weight"
        assert torch.allclose(ours[key], official[key], rtol=0, atol=1e-6), key


def test_module_is_frozen_in_eval_mode_with_package_heads(model):
    assert isinstance(model, lpips.LPIPS)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    official = torch.load(PACKAGE_HEADS, map_location="cpu", weights_only=True)
    assert torch.equal(model.lin0.model[1].weight, official["lin0.model.1.weight"])


def test_backbone_comes_from_the_file(model):
    stored = load_file(str(WEIGHTS))
    pairs = {1: 0, 2: 3, 3: 6, 4: 8, 5: 10}
    for slice_index, layer in pairs.items():
        conv = dict(getattr(model.net, f"slice{slice_index}").named_children())[str(layer)]
        assert torch.equal(conv.weight, stored[f"features.{layer}.weight"])
        assert torch.equal(conv.bias, stored[f"features.{layer}.bias"])


def test_identical_images_have_zero_distance(model):
    x = smooth_image(batch=2)
    x[1] = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))
    d = lpips_distance(model, x, x.clone())
    assert d.shape == (2,)
    assert torch.allclose(d, torch.zeros(2), atol=1e-7)


def test_distance_grows_with_noise(model):
    img = smooth_image()
    noise = torch.randn(img.shape, generator=torch.Generator().manual_seed(1))
    levels = [0.0, 0.01, 0.03, 0.1, 0.2, 0.4]
    distances = [float(lpips_distance(model, img, (img + s * noise).clamp(0, 1))) for s in levels]
    assert distances[0] == pytest.approx(0.0, abs=1e-7)
    assert all(b > a for a, b in zip(distances, distances[1:])), distances
    assert 0.3 < distances[-1] < 1.5  # real LPIPS weights: heavy noise is clearly but finitely different


def test_gradients_reach_the_input(model):
    target = smooth_image()
    x = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    x.requires_grad_(True)
    d = lpips_distance(model, x, target).sum()
    d.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # A small step against the gradient lowers the distance: the gradient is the real one.
    with torch.no_grad():
        stepped = x - 1e-3 * x.grad / x.grad.norm() * x.numel() ** 0.5
        assert float(lpips_distance(model, stepped, target)) < float(d)


@pytest.mark.parametrize("height, width", [(8, 8), (16, 24), (31, 40), (32, 32), (48, 80)])
def test_any_size_works_and_small_images_are_upsampled(model, height, width):
    gen = torch.Generator().manual_seed(height * 100 + width)
    x, y = torch.rand(2, 3, height, width, generator=gen), torch.rand(2, 3, height, width, generator=gen)
    d = lpips_distance(model, x, y)
    assert d.shape == (2,) and torch.isfinite(d).all() and (d > 0).all()


def test_grayscale_is_treated_as_rgb(model):
    img = smooth_image()[:, :1]
    other = img.flip(-1)
    assert torch.allclose(
        lpips_distance(model, img, other),
        lpips_distance(model, img.repeat(1, 3, 1, 1), other.repeat(1, 3, 1, 1)),
    )


def test_shape_mismatch_is_refused(model):
    with pytest.raises(ValueError, match="NCHW"):
        lpips_distance(model, torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 33))


def test_missing_weights_without_torchvision_cache(empty_hub):
    with pytest.raises(LD3InputError) as info:
        load_lpips(None, "cpu")
    err = info.value
    assert err.input_name == "loss"
    message = str(err)
    for needed in (
        "offline",
        "alexnet.safetensors",
        "models/lpips",
        "convert_lpips_weights.py",
        "alexnet-owt-7be5be79.pth",
        "L2",
    ):
        assert needed in message, needed
    # torchvision tried to download (it may create its cache folder) but no weights file appeared.
    assert not any(p.is_file() for p in empty_hub.rglob("*")) if empty_hub.exists() else True


def test_missing_weights_file(tmp_path, empty_hub):
    with pytest.raises(LD3InputError, match="^loss: no LPIPS weights file at"):
        load_lpips(str(tmp_path / "alexnet.safetensors"), "cpu")


def test_unreadable_or_incomplete_weights_file(tmp_path, empty_hub):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(LD3InputError, match="not a readable safetensors"):
        load_lpips(str(junk), "cpu")
    partial = tmp_path / "partial.safetensors"
    save_file({"features.0.weight": torch.zeros(64, 3, 11, 11)}, str(partial))
    with pytest.raises(LD3InputError, match="lacks the AlexNet tensors"):
        load_lpips(str(partial), "cpu")
    wrong = tmp_path / "wrong.safetensors"
    tensors = {k: v for k, v in load_file(str(WEIGHTS)).items()} if WEIGHTS.is_file() else None
    if tensors is not None:
        tensors["features.3.weight"] = torch.zeros(10, 64, 5, 5)
        save_file(tensors, str(wrong))
        with pytest.raises(LD3InputError, match="expected \\[192, 64, 5, 5\\]"):
            load_lpips(str(wrong), "cpu")


@pytest.mark.slow
@needs_weights
def test_torchvision_cache_is_used_when_present(empty_hub):
    # Build a torchvision-layout checkpoint from our file (features.* plus a classifier, as torchvision has).
    stored = load_file(str(WEIGHTS))
    state = {k: v for k, v in stored.items() if k.startswith("features.")}
    state["classifier.1.weight"] = torch.zeros(2, 2)
    target = lpips_loss.torchvision_alexnet_cache_path()
    assert str(target).startswith(str(empty_hub))
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    from_cache = load_lpips(None, "cpu")
    from_file = load_lpips(str(WEIGHTS), "cpu")
    x, y = smooth_image(), smooth_image().flip(-1)
    assert torch.equal(lpips_distance(from_cache, x, y), lpips_distance(from_file, x, y))


def test_other_backbones_are_refused():
    with pytest.raises(LD3InputError, match="^loss: LPIPS backbone 'vgg'"):
        load_lpips(str(WEIGHTS), "cpu", net="vgg")
