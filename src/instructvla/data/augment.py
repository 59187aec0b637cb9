"""Image augmentation in plain torch (no torchvision): random-resized crop + colour jitter, and the test-time crop.

Training (method.md §4.1): random-resized crop of 90% of the area at aspect 1 (-> size x size), then brightness
(additive, +-0.2), contrast [0.8, 1.2], saturation [0.8, 1.2], hue +-0.05, in that order, clipping to [0, 1] after
each. All views of one frame share the same parameters. When the crop is smaller than the output, the colour ops run
before the upscaling resize (7x cheaper from 64 px; equal up to interpolation). Test time: centre crop of side sqrt(0.9) then resize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    """Augmentation ranges; `size` is the output side in pixels."""

    crop_area: float = 0.9
    crop_ratio: float = 1.0
    brightness: float = 0.2
    contrast: tuple[float, float] = (0.8, 1.2)
    saturation: tuple[float, float] = (0.8, 1.2)
    hue: float = 0.05
    size: int = 224

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_area <= 1.0:
            raise ValueError(f"AugmentConfig.crop_area must be in (0, 1], got {self.crop_area}")
        if self.crop_ratio <= 0:
            raise ValueError(f"AugmentConfig.crop_ratio must be > 0, got {self.crop_ratio}")
        for name in ("contrast", "saturation"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"AugmentConfig.{name} must be (lo, hi) with 0 <= lo <= hi, got {(lo, hi)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"AugmentConfig.hue must be in [0, 0.5], got {self.hue}")
        if self.brightness < 0:
            raise ValueError(f"AugmentConfig.brightness must be >= 0, got {self.brightness}")
        if self.size < 1:
            raise ValueError(f"AugmentConfig.size must be >= 1, got {self.size}")


@dataclass
class AugmentParams:
    """One draw of augmentation parameters; crop box in fractions of the image so it applies to any view size."""

    top: float
    left: float
    height: float
    width: float
    brightness: float
    contrast: float
    saturation: float
    hue: float


def sample_params(rng: np.random.Generator, cfg: AugmentConfig) -> AugmentParams:
    """Draw crop box and jitter factors."""
    h = min(1.0, math.sqrt(cfg.crop_area / cfg.crop_ratio))
    w = min(1.0, math.sqrt(cfg.crop_area * cfg.crop_ratio))
    return AugmentParams(
        top=float(rng.uniform(0, 1 - h)), left=float(rng.uniform(0, 1 - w)), height=h, width=w,
        brightness=float(rng.uniform(-cfg.brightness, cfg.brightness)),
        contrast=float(rng.uniform(*cfg.contrast)),
        saturation=float(rng.uniform(*cfg.saturation)),
        hue=float(rng.uniform(-cfg.hue, cfg.hue)),
    )


def _to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(V, H, W, 3) uint8 -> (V, 3, H, W) float in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        images = np.asarray(images)
        images = torch.from_numpy(images if images.flags.writeable else images.copy())
    t = images
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (V, H, W, 3), got {t.dtype} {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return x.clamp_(0, 1).mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _crop_box(H: int, W: int, top: float, left: float, height: float, width: float) -> tuple[int, int, int, int]:
    """Pixel box (y0, x0, ch, cw) of a fractional crop of an H x W image."""
    ch, cw = max(1, round(height * H)), max(1, round(width * W))
    return min(round(top * H), H - ch), min(round(left * W), W - cw), ch, cw


def _crop(x: torch.Tensor, top: float, left: float, height: float, width: float) -> torch.Tensor:
    y0, x0, ch, cw = _crop_box(*x.shape[-2:], top, left, height, width)
    return x[..., y0:y0 + ch, x0:x0 + cw]


def crop_keypoints(uv: np.ndarray, p: AugmentParams, height: int, width: int) -> np.ndarray:
    """Image positions (..., 2) in [-1, 1] of an H x W frame -> the same points in the crop `apply_params` takes
    (resizing keeps normalised coordinates; colour jitter does not move anything)."""
    y0, x0, ch, cw = _crop_box(height, width, p.top, p.left, p.height, p.width)
    uv = np.asarray(uv, dtype=np.float32)
    u = ((uv[..., 0] + 1.0) * (width / 2.0) - x0) / cw * 2.0 - 1.0
    v = ((uv[..., 1] + 1.0) * (height / 2.0) - y0) / ch * 2.0 - 1.0
    return np.stack([u, v], axis=-1).astype(np.float32)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> HSV with all channels in [0, 1]."""
    r, g, b = x.unbind(-3)
    maxc, _ = x.max(-3)
    minc, _ = x.min(-3)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc], dim=-3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv` (closed form: channel n in (5, 3, 1) = v - v s clamp(min(k, 4 - k), 0, 1),
    k = (n + 6 h) mod 6)."""
    h, s, v = x.unbind(-3)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(3, 1, 1)
    k = (n + 6.0 * h.unsqueeze(-3)) % 6.0
    return v.unsqueeze(-3) - (v * s).unsqueeze(-3) * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


def color_jitter(x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
    """Brightness, contrast, saturation, hue (that order) on (V, 3, H, W) floats in [0, 1]."""
    x = (x + p.brightness).clamp(0, 1)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    x = ((x - mean) * p.contrast + mean).clamp(0, 1)
    if p.saturation != 1.0 or p.hue != 0.0:
        hsv = rgb_to_hsv(x)
        h, s, v = hsv.unbind(-3)
        hsv = torch.stack([(h + p.hue) % 1.0, (s * p.saturation).clamp(0, 1), v], dim=-3)
        x = hsv_to_rgb(hsv).clamp(0, 1)
    return x


def apply_params(images: np.ndarray | torch.Tensor, p: AugmentParams, size: int) -> np.ndarray:
    """Apply one parameter draw to every view: (V, H, W, 3) uint8 -> (V, size, size, 3) uint8."""
    with torch.no_grad():
        x = _crop(_to_float(images), p.top, p.left, p.height, p.width)
        if x.shape[-1] * x.shape[-2] < size * size:  # upscaling: jitter the (smaller) crop first, same result
            return _to_uint8(_resize(color_jitter(x, p), size))  # up to interpolating the colour ops
        return _to_uint8(color_jitter(_resize(x, size), p))


def augment(images: np.ndarray | torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig | None = None) -> np.ndarray:
    """Training augmentation of all views of one frame with shared parameters."""
    cfg = cfg or AugmentConfig()
    return apply_params(images, sample_params(rng, cfg), cfg.size)


def center_crop_resize(images: np.ndarray | torch.Tensor, area: float = 0.9, size: int = 224) -> np.ndarray:
    """Test-time transform matching the train crop: centre crop of side sqrt(area), resize to size x size.
    Accepts (H, W, 3) or (V, H, W, 3) uint8 and returns the same rank."""
    arr = np.asarray(images) if not isinstance(images, torch.Tensor) else images
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    side = math.sqrt(area)
    with torch.no_grad():
        x = _crop(_to_float(arr), (1 - side) / 2, (1 - side) / 2, side, side)
        out = _to_uint8(_resize(x, size))
    return out[0] if single else out


def resize_images(images: np.ndarray | torch.Tensor, size: int = 224) -> np.ndarray:
    """Plain (squash) resize of (V, H, W, 3) uint8 views to size x size."""
    with torch.no_grad():
        return _to_uint8(_resize(_to_float(images), size))
