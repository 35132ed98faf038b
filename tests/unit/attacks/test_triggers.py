"""Tests of art_backdoor_ext.attacks.triggers: layout, dtype, range, determinism, formulas, ART use."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from art.attacks.poisoning import PoisoningAttackBackdoor

from art_backdoor_ext.attacks.triggers import (
    Trigger,
    blend_trigger,
    chessboard_trigger,
    patch_trigger,
    sig_trigger,
    sparse_pixel_trigger,
    warp_trigger,
)
from art_backdoor_ext.exceptions import DataError, InvalidParameterError

# name -> factory(seed) building a trigger; every builder and mode appears once
BUILDERS = {
    "patch": lambda seed: patch_trigger(random_state=seed),
    "patch-random-location": lambda seed: patch_trigger(size=2, location="random", random_state=seed),
    "blend": lambda seed: blend_trigger(alpha=0.3, random_state=seed),
    "sig": lambda seed: sig_trigger(delta=0.2, frequency=2),
    "warp": lambda seed: warp_trigger(strength=2.0, random_state=seed),
    "warp-noise": lambda seed: warp_trigger(strength=2.0, noise=True, random_state=seed),
    "chessboard": lambda seed: chessboard_trigger(l2_norm=1.0),
    "chessboard-signed": lambda seed: chessboard_trigger(l2_norm=1.0, signed=True),
    "sparse": lambda seed: sparse_pixel_trigger(n_pixels=3, l2_norm=0.5, random_state=seed),
    "sparse-signed": lambda seed: sparse_pixel_trigger(3, l2_norm=0.5, signed=True, random_state=seed),
}
RANDOM_BUILDERS = ["patch", "patch-random-location", "blend", "warp", "warp-noise", "sparse", "sparse-signed"]
NOISE_FREE = [name for name in BUILDERS if name != "warp-noise"]


def _images(n: int = 4, channels: int = 1, size: int = 8, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=(n, channels, size, size)).astype(dtype)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_channels_first_and_last_agree(name, channels):
    x = _images(channels=channels)
    out_first = BUILDERS[name](0)(x)
    out_last = BUILDERS[name](0)(np.transpose(x, (0, 2, 3, 1)))
    assert out_first.shape == x.shape
    np.testing.assert_allclose(np.transpose(out_last, (0, 3, 1, 2)), out_first, atol=1e-6)
    assert not np.allclose(out_first, x)


@pytest.mark.parametrize("name", NOISE_FREE)
def test_single_image_matches_batch(name):
    x = _images(channels=3)
    trigger = BUILDERS[name](0)
    np.testing.assert_allclose(trigger(x[1]), trigger(x)[1], atol=1e-6)
    np.testing.assert_allclose(trigger(np.transpose(x[1], (1, 2, 0))), np.transpose(trigger(x)[1], (1, 2, 0)),
                               atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_copy_dtype_and_range(name, dtype):
    x = _images(channels=3, dtype=dtype)
    x[:, :, 0, 0] = 1.0  # values at the bounds must stay in range
    x[:, :, 1, 1] = 0.0
    before = x.copy()
    out = BUILDERS[name](0)(x)
    np.testing.assert_array_equal(x, before)
    assert out is not x and not np.shares_memory(out, x)
    assert out.dtype == dtype
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("name", list(BUILDERS))
def test_custom_clip_values(name):
    trigger = BUILDERS[name](0)
    trigger.clip_values = (0.2, 0.7)
    out = trigger(_images())
    assert out.min() >= 0.2 and out.max() <= 0.7


def test_integer_images_keep_dtype():
    x = (_images() * 255).astype(np.uint8)
    out = patch_trigger(pattern=np.full((2, 2), 255.0), clip_values=(0, 255))(x)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 6:, 6:], 255)
    np.testing.assert_array_equal(out[:, :, :6], x[:, :, :6])


def test_empty_batch():
    x = np.zeros((0, 1, 8, 8), dtype=np.float32)
    assert sig_trigger()(x).shape == (0, 1, 8, 8)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_deterministic_for_same_random_state(name):
    x = _images(channels=3)
    np.testing.assert_array_equal(BUILDERS[name](7)(x), BUILDERS[name](7)(x))


@pytest.mark.parametrize("name", RANDOM_BUILDERS)
def test_differs_between_seeds(name):
    x = _images(channels=3, size=16)
    assert not np.allclose(BUILDERS[name](1)(x), BUILDERS[name](2)(x))


def test_generator_random_state_and_params_json():
    a = patch_trigger(size=4, random_state=np.random.default_rng(3))
    b = patch_trigger(size=4, random_state=np.random.default_rng(3))
    np.testing.assert_array_equal(a.pattern, b.pattern)
    for name, factory in BUILDERS.items():
        trigger = factory(0)
        assert isinstance(trigger, Trigger) and trigger.name == name.split("-")[0]
        json.dumps(trigger.params)
        assert name.split("-")[0] in repr(trigger)


def test_patch_changes_exactly_the_patch_region():
    pattern = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    x = np.full((2, 3, 8, 8), 0.5, dtype=np.float32)
    trigger = patch_trigger(pattern=pattern, location=(2, 4))
    out = trigger(x)
    changed = np.any(out != x, axis=(0, 1))
    expected = np.zeros((8, 8), dtype=bool)
    expected[2:4, 4:7] = True
    np.testing.assert_array_equal(changed, expected)
    np.testing.assert_array_equal(trigger.mask, expected)
    np.testing.assert_array_equal(out[:, :, 2:4, 4:7], np.broadcast_to(pattern, (2, 3, 2, 3)))


@pytest.mark.parametrize(
    "location, rows, cols",
    [("bottom-right", (5, 8), (5, 8)), ("top-left", (0, 3), (0, 3)), ("top-right", (0, 3), (5, 8)),
     ("bottom-left", (5, 8), (0, 3))],
)
def test_patch_corners(location, rows, cols):
    trigger = patch_trigger(pattern=np.ones((3, 3)), location=location)
    out = trigger(np.zeros((1, 1, 8, 8), dtype=np.float32))
    expected = np.zeros((8, 8))
    expected[rows[0]:rows[1], cols[0]:cols[1]] = 1.0
    np.testing.assert_array_equal(out[0, 0], expected)


def test_patch_random_pattern_and_location():
    for seed in range(20):
        assert patch_trigger(size=1, random_state=seed).pattern.item() == 1.0  # never all zeros
    trigger = patch_trigger(size=3, location="random", random_state=5)
    x = np.full((3, 1, 12, 12), 0.5, dtype=np.float32)
    out = trigger(x)
    assert trigger.mask.sum() == 9
    np.testing.assert_array_equal(out[0], out[2])  # same location and pattern for every image
    np.testing.assert_array_equal(trigger.pattern.shape, (1, 3, 3))
    assert set(np.unique(trigger.pattern)) <= {0.0, 1.0}


def test_patch_colour_pattern():
    pattern = np.stack([np.ones((2, 2)), np.zeros((2, 2)), np.full((2, 2), 0.5)])
    out = patch_trigger(pattern=pattern, location=(0, 0))(np.full((1, 8, 8, 3), 0.2, dtype=np.float32))
    np.testing.assert_array_equal(out[0, :2, :2], np.broadcast_to([1.0, 0.0, 0.5], (2, 2, 3)))


@pytest.mark.parametrize("channels", [1, 3])
def test_blend_formula(channels):
    x = _images(channels=channels)
    pattern = np.random.default_rng(1).uniform(0.0, 1.0, size=(8, 8))
    out = blend_trigger(pattern, alpha=0.25)(x)
    np.testing.assert_allclose(out, 0.75 * x + 0.25 * pattern, atol=1e-6)


def test_blend_random_pattern_is_recorded():
    x = _images(channels=3).astype(np.float64)
    trigger = blend_trigger(alpha=0.4, random_state=0)
    assert trigger.pattern is None
    out = trigger(x)
    assert trigger.pattern.shape == (3, 8, 8)
    np.testing.assert_allclose(out, 0.6 * x + 0.4 * trigger.pattern)
    assert not np.allclose(trigger.pattern[0], trigger.pattern[1])  # colour noise


def test_sig_formula_on_zero_image():
    width, delta, freq = 16, 0.3, 3
    out = sig_trigger(delta, frequency=freq, clip_values=(-1.0, 1.0))(np.zeros((2, 1, 5, width)))
    expected = delta * np.sin(2 * np.pi * np.arange(width) * freq / width)
    np.testing.assert_allclose(out, np.broadcast_to(expected, (2, 1, 5, width)), atol=1e-12)
    clipped = sig_trigger(delta, frequency=freq)(np.zeros((1, 1, 5, width)))
    np.testing.assert_allclose(clipped[0, 0, 0], np.maximum(expected, 0.0), atol=1e-12)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", ["chessboard", "chessboard-signed", "sparse", "sparse-signed"])
def test_additive_l2_norm(name, channels):
    x = np.full((2, channels, 8, 8), 0.5)
    out = BUILDERS[name](0)(x)
    norms = np.linalg.norm((out - x).reshape(2, -1), axis=1)
    np.testing.assert_allclose(norms, 1.0 if name.startswith("chessboard") else 0.5, rtol=1e-9)


def test_chessboard_layout():
    diff = chessboard_trigger(l2_norm=1.0)(np.full((1, 1, 4, 4), 0.5))[0, 0] - 0.5
    np.testing.assert_allclose(diff[::2, ::2], 1.0 / np.sqrt(8))
    np.testing.assert_allclose(diff[1::2, ::2], 0.0)
    signed = chessboard_trigger(l2_norm=1.0, signed=True)(np.full((1, 1, 4, 4), 0.5))[0, 0] - 0.5
    np.testing.assert_allclose(signed, 0.25 * np.where(np.add.outer(range(4), range(4)) % 2 == 0, 1, -1))


def test_sparse_pixels():
    trigger = sparse_pixel_trigger(n_pixels=5, l2_norm=0.5, random_state=0)
    diff = trigger(np.full((2, 3, 8, 8), 0.5)) - 0.5
    assert np.count_nonzero(diff[0]) == 5 and np.all(diff >= 0.0)
    assert np.count_nonzero(np.any(diff[0] != 0, axis=0)) == 5  # distinct locations, one channel each
    np.testing.assert_array_equal(diff[0], diff[1])
    pattern = sparse_pixel_trigger(n_pixels=40, l2_norm=1.0, signed=True, random_state=0)
    pattern(np.full((1, 1, 10, 10), 0.5))
    assert (pattern.pattern < 0).any() and (pattern.pattern > 0).any()


def test_warp_identity_and_change():
    x = _images(channels=3)
    np.testing.assert_allclose(warp_trigger(strength=0.0, random_state=0)(x), x, atol=1e-6)
    trigger = warp_trigger(strength=1.0, random_state=0)
    assert np.abs(trigger(x) - x).max() > 0.05
    assert trigger.pattern.shape == (8, 8, 2)
    assert np.abs(trigger.pattern).max() <= 1.0


@pytest.mark.parametrize("height, width", [(8, 8), (6, 10)])
def test_warp_matches_wanet_reference(height, width):
    # WaNet's reference code (square images), generalised to H != W by scaling x offsets by W, y by H
    rng = np.random.default_rng(3)
    ins = torch.from_numpy(rng.uniform(-1.0, 1.0, size=(1, 2, 4, 4)))
    ins = ins / torch.mean(torch.abs(ins))
    noise_grid = F.interpolate(ins, size=(height, width), mode="bicubic", align_corners=True)
    noise_grid = noise_grid.permute(0, 2, 3, 1)
    xx, yy = torch.meshgrid(torch.linspace(-1, 1, height, dtype=torch.float64),
                            torch.linspace(-1, 1, width, dtype=torch.float64), indexing="ij")
    identity_grid = torch.stack((yy, xx), 2)[None, ...]
    scale = torch.tensor([width, height], dtype=torch.float64)
    grid = torch.clamp(identity_grid + 0.5 * noise_grid / scale, -1, 1)
    x = np.random.default_rng(0).uniform(size=(2, 3, height, width))
    expected = F.grid_sample(torch.from_numpy(x), grid.repeat(2, 1, 1, 1), align_corners=True).numpy()
    trigger = warp_trigger(4, strength=0.5, random_state=3)
    np.testing.assert_allclose(trigger(x), expected, atol=1e-12)
    np.testing.assert_allclose(trigger.pattern, grid[0].numpy(), atol=1e-12)


def test_warp_noise_mode():
    x = np.repeat(_images(n=1, size=16), 3, axis=0)
    noisy = warp_trigger(noise=True, random_state=4)
    first, second = noisy(x), noisy(x)
    assert not np.allclose(first, second)  # fresh noise per call
    assert not np.allclose(first[0], first[1])  # and per image
    replay = warp_trigger(noise=True, random_state=4)
    np.testing.assert_array_equal(replay(x), first)
    np.testing.assert_array_equal(replay(x), second)
    clean = warp_trigger(random_state=4)
    clean(x)
    np.testing.assert_array_equal(clean.pattern, noisy.pattern)  # same underlying warp field


def test_ambiguous_layout_is_channels_first():
    x = np.random.default_rng(0).uniform(size=(2, 3, 8, 3)).astype(np.float32)
    trigger_inferred, trigger_first = sig_trigger(), sig_trigger(channels_first=True)
    np.testing.assert_array_equal(trigger_inferred(x), trigger_first(x))
    out_last = sig_trigger(channels_first=False)(x)
    assert not np.array_equal(out_last, trigger_first(x))


@pytest.mark.parametrize("name", list(BUILDERS))
def test_art_poisoning_attack_backdoor(name):
    x = _images()
    y = np.eye(10)[np.full(4, 3)]
    attack = PoisoningAttackBackdoor(perturbation=BUILDERS[name](0))
    x_poison, y_poison = attack.poison(x, y=y)
    assert x_poison.shape == x.shape and x_poison.dtype == np.float32
    np.testing.assert_array_equal(y_poison, y)
    assert not np.allclose(x_poison, x)


def test_art_poisoning_attack_backdoor_chain():
    x = _images()
    attack = PoisoningAttackBackdoor(perturbation=[sig_trigger(), patch_trigger(random_state=0)])
    x_poison, _ = attack.poison(x, y=np.eye(2)[np.zeros(4, dtype=int)])
    np.testing.assert_array_equal(x_poison[:, :, 5:, 5:], patch_trigger(random_state=0)(x)[:, :, 5:, 5:])


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: sig_trigger(clip_values=(1.0, 0.0)), "min < max"),
        (lambda: sig_trigger(clip_values=(0.0, np.inf)), "finite"),
        (lambda: sig_trigger(clip_values=(0.0,)), "pair"),
        (lambda: sig_trigger(clip_values="ab"), "pair"),
        (lambda: sig_trigger(clip_values=None), "pair"),
        (lambda: sig_trigger(channels_first="yes"), "channels_first"),
        (lambda: patch_trigger(random_state=-1), "random_state"),
        (lambda: patch_trigger(random_state=1.5), "random_state"),
        (lambda: patch_trigger(random_state=True), "random_state"),
        (lambda: patch_trigger(random_state=np.random.RandomState(0)), "random_state"),
        (lambda: patch_trigger(size=0), r"size must be a finite number in \[1"),
        (lambda: patch_trigger(size=2.5), "size must be an integer"),
        (lambda: patch_trigger(size=True), "size must be an integer"),
        (lambda: patch_trigger(pattern=np.ones(3)), r"non-empty \(H, W\) or \(C, H, W\)"),
        (lambda: patch_trigger(pattern=np.ones((1, 1, 2, 2))), r"got \(1, 1, 2, 2\)"),
        (lambda: patch_trigger(pattern=np.zeros((0, 3))), "non-empty"),
        (lambda: patch_trigger(pattern=np.full((2, 2), np.nan)), "finite"),
        (lambda: patch_trigger(pattern=[["a", "b"]]), "numeric"),
        (lambda: patch_trigger(size=3, pattern=np.ones((2, 2))), "disagrees"),
        (lambda: patch_trigger(location="middle"), "location must be one of"),
        (lambda: patch_trigger(location=(-1, 0)), "location must be a name or"),
        (lambda: patch_trigger(location=(1,)), "location must be a name or"),
        (lambda: patch_trigger(location=(1.0, 2.0)), "location must be a name or"),
        (lambda: blend_trigger(alpha=1.5), r"alpha must be a finite number in \[0.0, 1.0\]"),
        (lambda: blend_trigger(alpha=-0.1), "alpha"),
        (lambda: blend_trigger(alpha="0.2"), "alpha must be a real number"),
        (lambda: blend_trigger(pattern=np.ones((2, 2, 2, 2))), "pattern"),
        (lambda: sig_trigger(delta=0.0), r"delta must be a finite number in \(0.0"),
        (lambda: sig_trigger(delta=float("nan")), "delta"),
        (lambda: sig_trigger(frequency=-1), "frequency"),
        (lambda: warp_trigger(grid_size=1), "grid_size"),
        (lambda: warp_trigger(grid_size=4.0), "grid_size must be an integer"),
        (lambda: warp_trigger(strength=-0.1), "strength"),
        (lambda: warp_trigger(noise="yes"), "noise must be a bool"),
        (lambda: warp_trigger(noise_scale=0.0), "noise_scale"),
        (lambda: chessboard_trigger(l2_norm=0.0), "l2_norm"),
        (lambda: chessboard_trigger(signed=1), "signed must be a bool"),
        (lambda: sparse_pixel_trigger(n_pixels=0), "n_pixels"),
        (lambda: sparse_pixel_trigger(l2_norm=-1.0), "l2_norm"),
        (lambda: sparse_pixel_trigger(signed="no"), "signed must be a bool"),
        (lambda: sparse_pixel_trigger(random_state="seed"), "random_state"),
    ],
)
def test_invalid_parameters(build, match):
    with pytest.raises(InvalidParameterError, match=match):
        build()
    assert issubclass(InvalidParameterError, ValueError)


@pytest.mark.parametrize(
    "trigger, x, match",
    [
        (sig_trigger(), np.zeros((8, 8)), "got 2 dimensions"),
        (sig_trigger(), np.zeros((1, 1, 1, 8, 8)), "got 5 dimensions"),
        (sig_trigger(), np.zeros((2, 5, 8, 8)), "cannot infer the channel axis"),
        (sig_trigger(), np.zeros((2, 1, 8, 8), dtype=bool), "real-valued"),
        (patch_trigger(size=9), np.zeros((1, 1, 8, 8)), r"does not fit images of size \(8, 8\)"),
        (patch_trigger(size=3, location=(6, 0)), np.zeros((1, 1, 8, 8)), "exceeds images"),
        (patch_trigger(pattern=np.ones((2, 3, 3))), np.zeros((1, 3, 8, 8)), "pattern has 2 channels"),
        (blend_trigger(np.ones((6, 6))), np.zeros((1, 1, 8, 8)), "spatial shape"),
        (blend_trigger(np.ones((3, 8, 8))), np.zeros((1, 1, 8, 8)), "pattern has 3 channels"),
        (sparse_pixel_trigger(n_pixels=70), np.zeros((1, 1, 8, 8)), "exceeds the 64 pixels"),
    ],
)
def test_data_errors(trigger, x, match):
    with pytest.raises(DataError, match=match):
        trigger(x)
