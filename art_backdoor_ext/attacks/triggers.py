"""
Trigger functions for backdoor poisoning: patch (BadNets), blend (Blended), SIG, warp (WaNet) and additive
(chessboard, sparse pixels).

Every builder returns a :class:`Trigger`, a callable ``np.ndarray -> np.ndarray`` for
``art.attacks.poisoning.PoisoningAttackBackdoor(perturbation=...)``. A trigger accepts a batch
``(N, C, H, W)`` / ``(N, H, W, C)`` or one image ``(C, H, W)`` / ``(H, W, C)``, never mutates its input,
keeps its dtype and clips the result to ``clip_values``. With ``channels_first=None`` the layout is inferred:
channels-first if axis -3 has size 1 or 3 (ambiguous shapes such as ``(N, 3, 8, 3)`` included), else
channels-last if the last axis has size 1 or 3, else :class:`DataError`.

Randomness is drawn once from ``random_state`` when the builder is called. Parts that depend on the image
size (random patch location, random blend noise, sparse pixels) come from a generator seeded by that draw and
the image shape, so all images of one shape get the same trigger whatever the call order. Patterns are in
pixel units, ``(H, W)`` (broadcast over channels) or channels-first ``(C, H, W)`` whatever the images' layout.
Bad parameters raise :class:`InvalidParameterError` in the builder; image-dependent errors (pattern larger
than the image, channel mismatch) raise :class:`DataError` when the trigger is applied.

Deviation from ARCHITECTURE.md: ``_validation`` and ``_torch`` do not exist yet, so the few checks and the
numpy <-> torch conversion needed here are private helpers of this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from art_backdoor_ext.exceptions import DataError, InvalidParameterError

logger = logging.getLogger(__name__)

__all__ = ["Trigger", "patch_trigger", "blend_trigger", "sig_trigger", "warp_trigger", "chessboard_trigger",
           "sparse_pixel_trigger"]

_LOCATIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "random")
RandomState = int | np.random.Generator | None


class Trigger:
    """
    A backdoor trigger: a callable ``np.ndarray -> np.ndarray`` for ``PoisoningAttackBackdoor``.

    :ivar name: ``"patch"``, ``"blend"``, ``"sig"``, ``"warp"``, ``"chessboard"`` or ``"sparse"``.
    :ivar params: JSON-serialisable parameters the trigger was built with.
    :ivar pattern: Ground truth in pixel units, channels-first. Patch: the patch ``(C|1, h, w)``; blend, SIG,
                   additive: the full pattern ``(C|1, H, W)`` last applied; warp: the noise-free sampling grid
                   ``(H, W, 2)`` last used. ``None`` before the first call when it depends on the image size.
    :ivar mask: Patch only: boolean ``(H, W)`` mask of the pixels last replaced; otherwise ``None``.
    :ivar clip_values: ``(min, max)`` the output is clipped to.
    :ivar channels_first: Image layout, or ``None`` to infer it on every call.
    """

    def __init__(self, name: str, apply: Callable[[Trigger, np.ndarray], np.ndarray], params: dict[str, Any],
                 clip_values: tuple[float, float], channels_first: bool | None,
                 pattern: np.ndarray | None = None) -> None:
        self.name = name
        self.params = {**params, "clip_values": list(clip_values), "channels_first": channels_first}
        self.clip_values = clip_values
        self.channels_first = channels_first
        self.pattern = pattern
        self.mask: np.ndarray | None = None
        self._apply = apply
        self._cache: dict[tuple[int, ...], Any] = {}

    def __repr__(self) -> str:
        return f"Trigger(name={self.name!r}, params={self.params!r})"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """
        Apply the trigger to a copy of ``x``.

        :param x: Batch ``(N, C, H, W)`` / ``(N, H, W, C)`` or one image ``(C, H, W)`` / ``(H, W, C)``, values
                  in ``clip_values`` (float, or integer which is rounded back).
        :return: Triggered copy of ``x``, same shape and dtype, clipped to ``clip_values``.
        """
        x = np.asarray(x)
        if x.ndim not in (3, 4):
            raise DataError(f"expected a batch (N, C, H, W) / (N, H, W, C) or one image (C, H, W) / "
                            f"(H, W, C), got {x.ndim} dimensions, shape {x.shape}")
        is_int = np.issubdtype(x.dtype, np.integer)
        if x.dtype == np.bool_ or not (is_int or np.issubdtype(x.dtype, np.floating)):
            raise DataError(f"expected real-valued images (float or integer dtype), got dtype {x.dtype}")
        channels_first = self.channels_first
        channels_first = _infer_channels_first(x.shape) if channels_first is None else channels_first
        x4 = x[None] if x.ndim == 3 else x
        out = np.array(x4 if channels_first else np.moveaxis(x4, -1, 1), dtype=np.float64)
        if out.shape[0] > 0:
            out = self._apply(self, out)
        out = np.clip(out, *self.clip_values)
        out = out if channels_first else np.moveaxis(out, 1, -1)
        out = out[0] if x.ndim == 3 else out
        return np.ascontiguousarray((np.rint(out) if is_int else out).astype(x.dtype))


def _infer_channels_first(shape: tuple[int, ...]) -> bool:
    if shape[-3] in (1, 3):
        if shape[-1] in (1, 3):
            logger.debug("Ambiguous channel axis for shape %s: assuming channels-first.", shape)
        return True
    if shape[-1] in (1, 3):
        return False
    raise DataError(f"cannot infer the channel axis of shape {shape}: expected size 1 or 3 at axis "
                    f"{len(shape) - 3} (channels-first) or at the last axis; pass channels_first explicitly")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_number(name: str, value: Any, low: float, high: float = np.inf, *, open_low: bool = False,
                  integer: bool = False) -> Any:
    if not (_is_int(value) or (not integer and isinstance(value, (float, np.floating)))):
        kind = "an integer" if integer else "a real number"
        raise InvalidParameterError(f"{name} must be {kind}, got {value!r} of type {type(value).__name__}")
    if not np.isfinite(value) or value > high or (value <= low if open_low else value < low):
        interval = f"{'(' if open_low else '['}{low}, {high}{']' if np.isfinite(high) else ')'}"
        raise InvalidParameterError(f"{name} must be a finite number in {interval}, got {value!r}")
    return int(value) if integer else float(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be a bool, got {value!r}")
    return value


def _check_common(clip_values: Any, channels_first: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in clip_values)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"clip_values must be a pair (min, max), got {clip_values!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise InvalidParameterError(f"clip_values must be finite with min < max, got {clip_values!r}")
    if channels_first is not None and not isinstance(channels_first, bool):
        raise InvalidParameterError(f"channels_first must be True, False or None, got {channels_first!r}")
    return low, high


def _check_random_state(random_state: Any) -> np.random.Generator:
    if random_state is None or isinstance(random_state, np.random.Generator):
        return np.random.default_rng(random_state)
    if _is_int(random_state) and random_state >= 0:
        return np.random.default_rng(int(random_state))
    raise InvalidParameterError(
        f"random_state must be None, an int >= 0 or a numpy.random.Generator, got {random_state!r}")


def _check_pattern(pattern: Any) -> np.ndarray:
    try:
        arr = np.array(pattern, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"pattern must be numeric, got {type(pattern).__name__}") from None
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise InvalidParameterError(f"pattern must be a non-empty (H, W) or (C, H, W) array, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidParameterError("pattern must contain only finite values, got NaN or inf")
    return arr if arr.ndim == 3 else arr[None]


def _check_channels(pattern: np.ndarray, channels: int) -> None:
    if pattern.shape[0] not in (1, channels):
        raise DataError(f"pattern has {pattern.shape[0]} channels but the images have {channels}; patterns "
                        "are (H, W) or channels-first (C, H, W) with C equal to 1 or to the images' channels")


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**63))


def _shape_rng(seed: int, shape: tuple[int, ...]) -> np.random.Generator:
    return np.random.default_rng([seed, *shape])


def _state_param(random_state: Any) -> int | None:
    return int(random_state) if _is_int(random_state) else None


def patch_trigger(size: int | None = None, *, pattern: np.ndarray | None = None,
                  location: str | tuple[int, int] = "bottom-right",
                  clip_values: tuple[float, float] = (0.0, 1.0), channels_first: bool | None = None,
                  random_state: RandomState = None) -> Trigger:
    """
    Implementation of the BadNets patch trigger (Gu et al., 2017): the pixels of a small region are replaced.

    | Paper link: https://arxiv.org/abs/1708.06733

    :param size: Side of the random binary patch (``None``: 3). With ``pattern``, ``None`` or its side.
    :param pattern: Patch in pixel units, ``(h, w)`` or channels-first ``(C, h, w)``. ``None`` draws a random
                    binary ``(size, size)`` pattern of min/max pixel values (never all min).
    :param location: ``"bottom-right"``, ``"bottom-left"``, ``"top-right"``, ``"top-left"``, ``"random"``
                     (uniform over valid positions, once per image size) or ``(row, col)`` of its top left.
    :param clip_values: ``(min, max)`` pixel range; the output is clipped to it.
    :param channels_first: Image layout; ``None`` infers it (see the module docstring).
    :param random_state: Seed or generator for the pattern and the random location.
    :return: Trigger; ``.pattern`` is the ``(C|1, h, w)`` patch, ``.mask`` the ``(H, W)`` region last used.
    """
    clip = _check_common(clip_values, channels_first)
    rng = _check_random_state(random_state)
    if pattern is None:
        size = 3 if size is None else _check_number("size", size, 1, integer=True)
        bits = rng.integers(0, 2, size=(1, size, size))
        if not bits.any():
            bits[0, rng.integers(size), rng.integers(size)] = 1
        patch = clip[0] + bits * (clip[1] - clip[0])
    else:
        patch = _check_pattern(pattern)
        if size is not None and patch.shape[1:] != (size, size):
            raise InvalidParameterError(f"size={size!r} disagrees with the pattern's shape "
                                        f"{patch.shape[1:]}; leave size=None when giving a pattern")
    if isinstance(location, str):
        if location not in _LOCATIONS:
            raise InvalidParameterError(f"location must be one of {_LOCATIONS} or (row, col), "
                                        f"got {location!r}")
    elif not (isinstance(location, (tuple, list)) and len(location) == 2
              and all(_is_int(v) and v >= 0 for v in location)):
        raise InvalidParameterError(f"location must be a name or (row, col) ints >= 0, got {location!r}")
    seed, (ph, pw) = _seed(rng), patch.shape[1:]

    def apply(trigger: Trigger, x: np.ndarray) -> np.ndarray:
        _, channels, height, width = x.shape
        _check_channels(patch, channels)
        if ph > height or pw > width:
            raise DataError(f"patch of size ({ph}, {pw}) does not fit images of size ({height}, {width})")
        if location == "random":
            gen = _shape_rng(seed, (height, width))
            row, col = int(gen.integers(height - ph + 1)), int(gen.integers(width - pw + 1))
        elif isinstance(location, str):
            row = height - ph if location.startswith("bottom") else 0
            col = width - pw if location.endswith("right") else 0
        else:
            row, col = int(location[0]), int(location[1])
            if row + ph > height or col + pw > width:
                raise DataError(f"patch of size ({ph}, {pw}) at (row, col)={(row, col)} exceeds images of "
                                f"size ({height}, {width})")
        trigger.mask = np.zeros((height, width), dtype=bool)
        trigger.mask[row:row + ph, col:col + pw] = True
        x[:, :, row:row + ph, col:col + pw] = patch
        return x

    loc = location if isinstance(location, str) else [int(v) for v in location]
    params = {"size": [int(ph), int(pw)], "location": loc, "random_state": _state_param(random_state)}
    return Trigger("patch", apply, params, clip, channels_first, pattern=patch)


def blend_trigger(pattern: np.ndarray | None = None, *, alpha: float = 0.2,
                  clip_values: tuple[float, float] = (0.0, 1.0), channels_first: bool | None = None,
                  random_state: RandomState = None) -> Trigger:
    """
    Implementation of the Blended trigger (Chen et al., 2017): ``x' = (1 - alpha) * x + alpha * pattern``.

    | Paper link: https://arxiv.org/abs/1712.05526

    :param pattern: Full-size pattern in pixel units, ``(H, W)`` or channels-first ``(C, H, W)``. ``None``:
                    uniform noise in ``clip_values`` of the images' shape ``(C, H, W)``, drawn at the first
                    call per shape from a seed taken from ``random_state`` (the same noise for every image).
    :param alpha: Blend ratio in ``[0, 1]``.
    :param clip_values: ``(min, max)`` pixel range; the output is clipped to it.
    :param channels_first: Image layout; ``None`` infers it (see the module docstring).
    :param random_state: Seed or generator for the noise pattern.
    :return: Trigger; ``.pattern`` is the ``(C|1, H, W)`` pattern last blended.
    """
    clip = _check_common(clip_values, channels_first)
    alpha = _check_number("alpha", alpha, 0.0, 1.0)
    fixed = None if pattern is None else _check_pattern(pattern)
    seed = _seed(_check_random_state(random_state))

    def apply(trigger: Trigger, x: np.ndarray) -> np.ndarray:
        shape = x.shape[1:]
        if fixed is None:
            if shape not in trigger._cache:
                trigger._cache[shape] = _shape_rng(seed, shape).uniform(clip[0], clip[1], size=shape)
            pattern = trigger._cache[shape]
            trigger.pattern = pattern
        else:
            _check_channels(fixed, shape[0])
            if fixed.shape[1:] != shape[1:]:
                raise DataError(f"pattern has spatial shape {fixed.shape[1:]} but the images {shape[1:]}")
            pattern = fixed
        return (1.0 - alpha) * x + alpha * pattern

    params = {"alpha": alpha, "random_pattern": fixed is None, "random_state": _state_param(random_state)}
    return Trigger("blend", apply, params, clip, channels_first, pattern=fixed)


def sig_trigger(delta: float = 0.1, *, frequency: float = 6, clip_values: tuple[float, float] = (0.0, 1.0),
                channels_first: bool | None = None) -> Trigger:
    """
    Implementation of the sinusoidal signal (SIG) trigger (Barni et al., 2019):
    ``x'[..., i, j] = x[..., i, j] + delta * sin(2 * pi * j * frequency / W)`` for every row ``i``, channel.

    | Paper link: https://arxiv.org/abs/1902.11237

    :param delta: Amplitude in pixel units (> 0). The paper uses 20 on [0, 255], about 0.078 on [0, 1].
    :param frequency: Number of periods across the image width (> 0; the paper uses 6).
    :param clip_values: ``(min, max)`` pixel range; the output is clipped to it.
    :param channels_first: Image layout; ``None`` infers it (see the module docstring).
    :return: Trigger; ``.pattern`` is the ``(1, H, W)`` signal last added.
    """
    clip = _check_common(clip_values, channels_first)
    delta = _check_number("delta", delta, 0.0, open_low=True)
    frequency = _check_number("frequency", frequency, 0.0, open_low=True)

    def apply(trigger: Trigger, x: np.ndarray) -> np.ndarray:
        height, width = x.shape[2:]
        signal = delta * np.sin(2.0 * np.pi * np.arange(width) * frequency / width)
        trigger.pattern = np.broadcast_to(signal, (1, height, width)).copy()
        return x + trigger.pattern

    return Trigger("sig", apply, {"delta": delta, "frequency": frequency}, clip, channels_first)


def warp_trigger(grid_size: int = 4, *, strength: float = 0.5, noise: bool = False, noise_scale: float = 1.0,
                 clip_values: tuple[float, float] = (0.0, 1.0), channels_first: bool | None = None,
                 random_state: RandomState = None) -> Trigger:
    """
    Implementation of the WaNet warping trigger (Nguyen and Tran, 2021). A uniform random ``(2, k, k)``
    control grid, scaled to mean absolute value 1, is upsampled bicubically to ``(H, W)``; the sampling grid
    ``clip(identity + strength * flow / size, -1, 1)`` resamples the images with ``grid_sample``.

    | Paper link: https://arxiv.org/abs/2102.10369

    :param grid_size: Control grid side ``k`` (>= 2; the paper uses 4).
    :param strength: Warping strength ``s`` (>= 0; the paper uses 0.5); 0 gives the identity.
    :param noise: WaNet's "noise mode": every call adds fresh noise ``U(-noise_scale, noise_scale) / size``
                  per image and pixel to the grid, from a generator seeded from ``random_state`` that advances
                  per call. The warp field equals that of ``noise=False`` for the same int ``random_state``.
    :param noise_scale: Noise amplitude in grid steps (> 0; the paper uses 1).
    :param clip_values: ``(min, max)`` pixel range; the output is clipped to it.
    :param channels_first: Image layout; ``None`` infers it (see the module docstring).
    :param random_state: Seed or generator for the control grid and the noise.
    :return: Trigger; ``.pattern`` is the ``(H, W, 2)`` noise-free sampling grid last used.
    """
    clip = _check_common(clip_values, channels_first)
    grid_size = _check_number("grid_size", grid_size, 2, integer=True)
    strength = _check_number("strength", strength, 0.0)
    noise = _check_bool("noise", noise)
    noise_scale = _check_number("noise_scale", noise_scale, 0.0, open_low=True)
    rng = _check_random_state(random_state)
    control = rng.uniform(-1.0, 1.0, size=(1, 2, grid_size, grid_size))
    control /= np.mean(np.abs(control))
    noise_rng = np.random.default_rng(_seed(rng))

    def apply(trigger: Trigger, x: np.ndarray) -> np.ndarray:
        n, _, height, width = x.shape
        step = np.array([width, height], dtype=np.float64)
        if (height, width) not in trigger._cache:
            flow = F.interpolate(torch.from_numpy(control), size=(height, width), mode="bicubic",
                                 align_corners=True)[0].permute(1, 2, 0).numpy()
            rows, cols = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
            identity = np.stack([cols, rows], axis=-1)  # grid_sample wants (x, y)
            trigger._cache[(height, width)] = np.clip(identity + strength * flow / step, -1.0, 1.0)
        trigger.pattern = trigger._cache[(height, width)]
        grid = np.broadcast_to(trigger.pattern, (n, height, width, 2))
        if noise:
            jitter = noise_rng.uniform(-1.0, 1.0, size=grid.shape) * noise_scale / step
            grid = np.clip(grid + jitter, -1.0, 1.0)
        with torch.no_grad():
            out = F.grid_sample(torch.from_numpy(x), torch.tensor(grid),
                                mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.numpy()

    params = {"grid_size": grid_size, "strength": strength, "noise": noise, "noise_scale": noise_scale,
              "random_state": _state_param(random_state)}
    return Trigger("warp", apply, params, clip, channels_first)


def _additive(name: str, make: Callable[[int, int, int], np.ndarray], l2_norm: float,
              clip: tuple[float, float], channels_first: bool | None, params: dict[str, Any]) -> Trigger:
    def apply(trigger: Trigger, x: np.ndarray) -> np.ndarray:
        shape = x.shape[1:]
        if shape not in trigger._cache:
            raw = np.broadcast_to(make(*shape), shape)
            trigger._cache[shape] = raw * (l2_norm / np.linalg.norm(raw))
        trigger.pattern = trigger._cache[shape]
        return x + trigger.pattern

    return Trigger(name, apply, {**params, "l2_norm": l2_norm}, clip, channels_first)


def chessboard_trigger(l2_norm: float = 1.0, *, signed: bool = False,
                       clip_values: tuple[float, float] = (0.0, 1.0),
                       channels_first: bool | None = None) -> Trigger:
    """
    Implementation of the global additive chessboard trigger (Xiang et al., 2020): of any two adjacent
    pixels exactly one is perturbed, positively and on every channel; the perturbation is scaled to L2 norm
    ``l2_norm`` over ``C * H * W``, added, then clipped (clipping can lower the effective norm). The paper's
    random per-pixel factors N(1, 0.05) are omitted: all perturbed pixels get the same value.

    | Paper link: https://arxiv.org/abs/1908.10498

    :param l2_norm: L2 norm of the perturbation per image (> 0), in pixel units (paper: 0.2 on CIFAR-10).
    :param signed: ``False`` (paper): ``+v`` on "black" squares, 0 on the others. ``True``: ``+v`` / ``-v``.
    :param clip_values: ``(min, max)`` pixel range; the output is clipped to it.
    :param channels_first: Image layout; ``None`` infers it (see the module docstring).
    :return: Trigger; ``.pattern`` is the ``(C, H, W)`` perturbation last added.
    """
    clip = _check_common(clip_values, channels_first)
    l2_norm = _check_number("l2_norm", l2_norm, 0.0, open_low=True)
    signed = _check_bool("signed", signed)

    def make(channels: int, height: int, width: int) -> np.ndarray:
        even = np.add.outer(np.arange(height), np.arange(width)) % 2 == 0
        return np.where(even, 1.0, -1.0 if signed else 0.0)

    return _additive("chessboard", make, l2_norm, clip, channels_first, {"signed": signed})


def sparse_pixel_trigger(n_pixels: int = 4, *, l2_norm: float = 1.0, signed: bool = False,
                         clip_values: tuple[float, float] = (0.0, 1.0), channels_first: bool | None = None,
                         random_state: RandomState = None) -> Trigger:
    """
    Implementation of the sparse pixel-wise additive trigger (Xiang et al., 2020): ``n_pixels`` distinct
    random pixel locations, one random channel each, get magnitudes ``N(1, 0.05)``, scaled so that the
    perturbation's L2 norm over ``C * H * W`` is ``l2_norm``; added, then clipped.

    | Paper link: https://arxiv.org/abs/1908.10498

    :param n_pixels: Number of perturbed pixel locations (>= 1, at most ``H * W``; the paper uses 4).
    :param l2_norm: L2 norm of the perturbation per image (> 0), in pixel units (paper: 0.6 on CIFAR-10).
    :param signed: ``False``: all perturbations positive. ``True`` (as in the paper): random signs.
    :param clip_values: ``(min, max)`` pixel range; the output is clipped to it.
    :param channels_first: Image layout; ``None`` infers it (see the module docstring).
    :param random_state: Seed or generator; locations, channels, signs, magnitudes are drawn once per shape.
    :return: Trigger; ``.pattern`` is the ``(C, H, W)`` perturbation last added.
    """
    clip = _check_common(clip_values, channels_first)
    n_pixels = _check_number("n_pixels", n_pixels, 1, integer=True)
    l2_norm = _check_number("l2_norm", l2_norm, 0.0, open_low=True)
    signed = _check_bool("signed", signed)
    seed = _seed(_check_random_state(random_state))

    def make(channels: int, height: int, width: int) -> np.ndarray:
        if n_pixels > height * width:
            raise DataError(f"n_pixels={n_pixels} exceeds the {height * width} pixels of "
                            f"{height}x{width} images")
        gen = _shape_rng(seed, (channels, height, width))
        pixels = gen.choice(height * width, size=n_pixels, replace=False)
        values = np.abs(gen.normal(1.0, 0.05, size=n_pixels))
        if signed:
            values *= gen.choice([-1.0, 1.0], size=n_pixels)
        out = np.zeros((channels, height * width))
        out[gen.integers(channels, size=n_pixels), pixels] = values
        return out.reshape(channels, height, width)

    params = {"n_pixels": n_pixels, "signed": signed, "random_state": _state_param(random_state)}
    return _additive("sparse", make, l2_norm, clip, channels_first, params)
