"""Tests of art_backdoor_ext.attacks.jumbo: distribution ranges, Eq. 4, shadow datasets, layouts, ART use."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from art.attacks.attack import PoisoningAttackBlackBox

from art_backdoor_ext.attacks.jumbo import JumboContamination, JumboDistribution, JumboSetting, ShadowDataset
from art_backdoor_ext.exceptions import DataError, InvalidParameterError


def _images(n: int = 40, channels: int = 1, size: int = 8, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, size=(n, channels, size, size)).astype(dtype)


def _labels(n: int = 40, nb_classes: int = 10) -> np.ndarray:
    return np.arange(n) % nb_classes


# ---------------------------------------------------------------------------------------------- distribution
@pytest.mark.parametrize("channels", [1, 3])
def test_default_settings_stay_in_mntd_ranges(channels):
    dist = JumboDistribution()
    rng = np.random.default_rng(0)
    settings = [dist.sample((channels, 12, 12), nb_classes=10, random_state=rng) for _ in range(600)]
    sizes, targets, n_full = set(), set(), 0
    for s in settings:
        assert 0.05 <= s.rate <= 0.5
        assert 0 <= s.target < 10
        targets.add(s.target)
        assert s.mask.shape == (12, 12) and set(np.unique(s.mask)) <= {0.0, 1.0}
        assert s.pattern.shape[1:] == (12, 12)
        inside = s.pattern[:, s.mask == 1]
        assert inside.min() >= 0.0 and inside.max() <= 1.0
        if s.kind == "blend":
            n_full += 1
            assert s.size is None and s.location == (0, 0)
            assert s.mask.sum() == 144
            assert 0.05 <= s.alpha <= 0.2
        else:
            sizes.add(s.size)
            assert s.size in (2, 3, 4, 5)
            assert s.mask.sum() == s.size**2
            row, col = s.location
            assert 0 <= row <= 12 - s.size and 0 <= col <= 12 - s.size
            assert s.mask[row:row + s.size, col:col + s.size].all()
            assert s.alpha == 1.0 or 0.2 <= s.alpha <= 0.5  # U(0.2, 0.6), set to 1.0 above 0.5
        if channels == 1:  # binary pattern with at least one 1 and one 0
            assert set(np.unique(inside)) <= {0.0, 1.0}
            assert 1 <= inside.sum() <= inside.size - 1 or inside.size == 1
            assert s.eps is None
        else:
            assert s.pattern.shape[0] == 3 and 0.0 <= s.eps <= 1.0
    assert sizes == {2, 3, 4, 5}
    assert targets == set(range(10))
    assert 0.13 < n_full / len(settings) < 0.27  # 1/5 (binomial sd ~0.016)
    alphas = [s.alpha for s in settings if s.kind == "patch"]
    assert any(a == 1.0 for a in alphas) and any(a < 0.5 for a in alphas)


def test_custom_ranges_are_honoured():
    dist = JumboDistribution(patch_sizes=(1, 6), full_image_probability=0.0, patch_alpha=(0.3, 0.4),
                             patch_alpha_threshold=None, rate=(0.2, 0.25), pattern_kind="uniform",
                             pattern_eps=(0.5, 0.5))
    rng = np.random.default_rng(1)
    for _ in range(200):
        s = dist.sample((1, 8, 8), nb_classes=3, random_state=rng)
        assert s.kind == "patch" and s.size in (1, 6)
        assert 0.3 <= s.alpha <= 0.4
        assert 0.2 <= s.rate <= 0.25 and 0 <= s.target < 3
        assert s.eps == 0.5
    only_blend = JumboDistribution(patch_sizes=(), full_image_probability=1.0, blend_alpha=(0.1, 0.1))
    s = only_blend.sample((3, 5, 7), nb_classes=2, random_state=0)
    assert s.kind == "blend" and s.mask.shape == (5, 7) and s.mask.all() and s.alpha == 0.1


def test_pattern_is_mapped_to_clip_values():
    dist = JumboDistribution(full_image_probability=1.0)
    s = dist.sample((1, 6, 6), nb_classes=10, clip_values=(0.0, 255.0), random_state=0)
    assert set(np.unique(s.pattern)) <= {0.0, 255.0} and s.pattern.max() == 255.0


def test_apply_matches_equation_4():
    x = _images(3, channels=3)
    s = JumboDistribution(patch_alpha_threshold=None).sample((3, 8, 8), nb_classes=10, random_state=3)
    expected = (1 - s.alpha * s.mask) * x + s.alpha * s.mask * s.pattern
    np.testing.assert_allclose(s.apply(x), np.clip(expected, 0, 1), atol=1e-6)
    # the paper's form with its image opacity a = 1 - alpha
    a = 1 - s.alpha
    paper = (1 - s.mask) * x + s.mask * ((1 - a) * s.pattern + a * x)
    np.testing.assert_allclose(s.apply(x), paper, atol=1e-6)
    np.testing.assert_allclose(s.apply(x[0]), s.apply(x)[0], atol=1e-7)  # one image
    full = JumboSetting(mask=np.ones((8, 8), np.float32), pattern=np.full((1, 8, 8), 0.5, np.float32), alpha=1.0,
                        target=0, rate=0.1)
    np.testing.assert_array_equal(full.apply(x), np.full_like(x, 0.5))  # alpha 1 replaces; C=1 broadcasts


def test_apply_keeps_integer_dtype_and_checks_shapes():
    s = JumboSetting(mask=np.ones((4, 4), np.float32), pattern=np.full((1, 4, 4), 255.0, np.float32), alpha=0.5,
                     target=0, rate=0.1, clip_values=(0.0, 255.0))
    out = s.apply(np.zeros((2, 1, 4, 4), dtype=np.uint8))
    assert out.dtype == np.uint8 and np.all(out == 128)
    with pytest.raises(DataError, match="spatial size"):
        s.apply(np.zeros((2, 1, 5, 5), dtype=np.float32))
    with pytest.raises(DataError, match="channels"):
        JumboSetting(mask=np.ones((4, 4)), pattern=np.ones((3, 4, 4)), alpha=1.0, target=0,
                     rate=0.1).apply(np.zeros((1, 2, 4, 4)), channels_first=True)
    with pytest.raises(DataError, match="expected a batch"):
        s.apply(np.zeros((4, 4)))
    with pytest.raises(DataError, match="real-valued"):
        s.apply(np.zeros((1, 1, 4, 4), dtype=bool))
    with pytest.raises(DataError, match="cannot infer the channel axis"):
        s.apply(np.zeros((1, 4, 4, 4), dtype=np.float32))


def test_setting_to_dict_is_json_and_round_trips():
    s = JumboDistribution().sample((3, 8, 8), nb_classes=10, random_state=5)
    data = json.loads(json.dumps(s.to_dict()))
    back = JumboSetting.from_dict(data)
    x = _images(2, channels=3)
    np.testing.assert_allclose(back.apply(x), s.apply(x), atol=1e-6)
    light = s.to_dict(include_arrays=False)
    assert "mask" not in light and json.dumps(light)
    with pytest.raises(DataError, match="include_arrays=True"):
        JumboSetting.from_dict(light)


# ---------------------------------------------------------------------------------------------- attack
def test_poison_appends_triggered_copies():
    x, y = _images(40), _labels(40)
    attack = JumboContamination(nb_classes=10, random_state=0)
    x_out, y_out = attack.poison(x, y)
    s = attack.last_setting
    n_poison = max(1, int(np.floor(s.rate * 40 + 0.5)))
    assert x_out.shape == (40 + n_poison, 1, 8, 8) and y_out.shape == (40 + n_poison,)
    assert x_out.dtype == x.dtype and y_out.dtype == y.dtype
    np.testing.assert_array_equal(x_out[:40], x)  # clean part unchanged
    np.testing.assert_array_equal(y_out[:40], y)
    np.testing.assert_array_equal(attack.last_poison_indices, np.arange(40, 40 + n_poison))
    np.testing.assert_array_equal(np.flatnonzero(attack.last_is_poison), attack.last_poison_indices)
    sources = attack.last_source_indices
    assert len(np.unique(sources)) == n_poison
    np.testing.assert_array_equal(x_out[40:], s.apply(x[sources]))
    assert np.all(y_out[40:] == s.target)
    assert not np.allclose(x_out[40:], x[sources])


def test_poisoned_fraction_follows_rate():
    dist = JumboDistribution(rate=(0.25, 0.25))
    x_out, _ = JumboContamination(distribution=dist, random_state=0).poison(_images(200), _labels(200))
    assert len(x_out) == 250  # fraction p / (1 + p) = 0.2


def test_channels_first_and_last_agree():
    x, y = _images(30, channels=3), _labels(30)
    out_first, y_first = JumboContamination(random_state=4).poison(x, y)
    out_last, y_last = JumboContamination(random_state=4).poison(np.transpose(x, (0, 2, 3, 1)), y)
    np.testing.assert_allclose(np.transpose(out_last, (0, 3, 1, 2)), out_first, atol=1e-7)
    np.testing.assert_array_equal(y_first, y_last)
    explicit, _ = JumboContamination(channels_first=False, random_state=4).poison(np.transpose(x, (0, 2, 3, 1)), y)
    np.testing.assert_array_equal(explicit, out_last)


def test_determinism_and_no_input_mutation():
    x, y = _images(30, dtype=np.float64), _labels(30)
    x_before, y_before = x.copy(), y.copy()
    a1, a2 = JumboContamination(random_state=7), JumboContamination(random_state=7)
    first, second = a1.poison(x, y), a2.poison(x, y)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[0].dtype == np.float64
    assert a1.last_setting.to_dict() == a2.last_setting.to_dict()
    third = a1.poison(x, y)  # the stream goes on: a new setting
    assert a1.last_setting.to_dict() != a2.last_setting.to_dict() or len(third[0]) != len(first[0])
    gen = JumboContamination(random_state=np.random.default_rng(7))
    np.testing.assert_array_equal(gen.poison(x, y)[0], first[0])
    a1.set_params(random_state=7)  # restarts the stream
    np.testing.assert_array_equal(a1.poison(x, y)[0], first[0])
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)


def test_one_hot_in_one_hot_out():
    x, y = _images(30), _labels(30, 4)
    one_hot = np.eye(4, dtype=np.float32)[y]
    x_int, y_int = JumboContamination(random_state=2).poison(x, y)
    attack = JumboContamination(random_state=2)
    x_oh, y_oh = attack.poison(x, one_hot)
    assert y_oh.shape == (len(x_oh), 4) and y_oh.dtype == np.float32
    np.testing.assert_array_equal(y_oh.sum(axis=1), 1)
    np.testing.assert_array_equal(np.argmax(y_oh, axis=1), y_int)
    np.testing.assert_array_equal(x_oh, x_int)
    assert 0 <= attack.last_setting.target < 4


def test_output_is_clipped_to_clip_values():
    x = _images(20) * 255.0
    attack = JumboContamination(clip_values=(0.0, 255.0), random_state=0)
    x_out, _ = attack.poison(x, _labels(20))
    assert x_out.min() >= 0.0 and x_out.max() <= 255.0
    assert attack.last_setting.clip_values == (0.0, 255.0)


def test_generate_shadow_datasets_is_lazy_and_varied(monkeypatch):
    x, y = _images(30), _labels(30)
    attack = JumboContamination(nb_classes=10, random_state=0)
    built = []
    original = JumboContamination._make_shadow

    def counting(self, *args, **kwargs):
        built.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(JumboContamination, "_make_shadow", counting)
    shadows = attack.generate_shadow_datasets(x, y, 6)
    assert inspect.isgenerator(shadows) and not built
    first = next(shadows)
    assert isinstance(first, ShadowDataset) and len(built) == 1
    rest = list(shadows)
    assert len(built) == 6 and len(rest) == 5
    settings = [json.dumps(s.setting.to_dict()) for s in [first, *rest]]
    assert len(set(settings)) == 6
    for shadow in [first, *rest]:
        n = len(shadow.x)
        assert shadow.y.shape == (n,) and shadow.is_poison.shape == (n,) and shadow.is_poison[30:].all()
        assert not shadow.is_poison[:30].any()
        np.testing.assert_array_equal(shadow.x[30:], shadow.setting.apply(x[shadow.source_indices]))
        assert json.dumps(shadow.to_dict())
    again = list(JumboContamination(nb_classes=10, random_state=0).generate_shadow_datasets(x, y, 6))
    assert [json.dumps(s.setting.to_dict()) for s in again] == settings


def test_art_integration():
    attack = JumboContamination(random_state=0)
    assert isinstance(attack, PoisoningAttackBlackBox)
    assert attack.estimator is None
    assert set(attack.attack_params) == {"distribution", "nb_classes", "channels_first", "clip_values",
                                         "random_state"}
    result = attack.poison(_images(10), _labels(10))
    assert isinstance(result, tuple) and len(result) == 2
    assert "JumboContamination(" in repr(attack) and "JumboDistribution(" in repr(JumboDistribution())
    params = attack.get_params()
    attack.set_params(**params)
    assert attack.get_params() == params


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch_sizes": 3}, "patch_sizes must be a tuple of ints"),
        ({"patch_sizes": (0, 2)}, "patch_sizes must hold ints >= 1"),
        ({"patch_sizes": (2.5,)}, "patch_sizes must hold ints >= 1"),
        ({"patch_sizes": ()}, "patch_sizes is empty"),
        ({"full_image_probability": 1.5}, "full_image_probability must be a number in"),
        ({"patch_alpha": 0.3}, "patch_alpha must be a pair"),
        ({"patch_alpha": (0.6, 0.2)}, "patch_alpha must have low <= high"),
        ({"patch_alpha": (0.2, 1.2)}, r"patch_alpha must be a pair \(low, high\) of numbers in \[0.0, 1.0\]"),
        ({"patch_alpha_threshold": -0.1}, "patch_alpha_threshold must be"),
        ({"blend_alpha": (0.1, 0.2, 0.3)}, "blend_alpha must be a pair"),
        ({"rate": (0.0, 0.5)}, r"rate must be a pair \(low, high\) of numbers in \(0.0, 1.0\]"),
        ({"rate": (0.2, 1.5)}, "rate must be a pair"),
        ({"pattern_eps": (-1.0, 1.0)}, "pattern_eps must be a pair"),
        ({"pattern_kind": "gaussian"}, "pattern_kind must be one of"),
    ],
)
def test_distribution_rejects_bad_parameters(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        JumboDistribution(**kwargs)


def test_distribution_sample_errors_and_atomic_set_params():
    dist = JumboDistribution()
    with pytest.raises(InvalidParameterError, match="image_shape must be"):
        dist.sample((8, 8), nb_classes=10)
    with pytest.raises(InvalidParameterError, match="nb_classes must be an int >= 1"):
        dist.sample((1, 8, 8), nb_classes=0)
    with pytest.raises(InvalidParameterError, match="clip_values must be a pair"):
        dist.sample((1, 8, 8), nb_classes=2, clip_values=(1.0, 0.0))
    with pytest.raises(DataError, match="drew patch size 9"):
        JumboDistribution(patch_sizes=(9,), full_image_probability=0.0).sample((1, 8, 8), nb_classes=2)
    with pytest.raises(InvalidParameterError, match="unknown parameter 'colour'"):
        dist.set_params(colour=True)
    with pytest.raises(InvalidParameterError, match="patch_alpha must have low <= high"):
        dist.set_params(rate=(0.1, 0.2), patch_alpha=(0.5, 0.1))
    assert dist.rate == (0.05, 0.5) and dist.patch_alpha == (0.2, 0.6)  # unchanged


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"distribution": {"rate": (0.1, 0.2)}}, "distribution must be an instance of JumboDistribution"),
        ({"nb_classes": 0}, "nb_classes must be an int in"),
        ({"channels_first": "yes"}, "channels_first must be an instance of bool or None"),
        ({"clip_values": (1.0, 0.0)}, "clip_values must be a pair"),
        ({"clip_values": 1.0}, "clip_values must be a pair"),
        ({"random_state": -1}, "random_state must be"),
        ({"random_state": 1.5}, "random_state must be"),
    ],
)
def test_attack_rejects_bad_parameters(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        JumboContamination(**kwargs)


def test_attack_rejects_bad_inputs():
    attack = JumboContamination(nb_classes=10, random_state=0)
    x, y = _images(10), _labels(10)
    with pytest.raises(DataError, match="needs the labels y"):
        attack.poison(x)
    with pytest.raises(DataError, match="numpy array of images"):
        attack.poison(x[:, 0], y)
    with pytest.raises(DataError, match="values in"):
        attack.poison(x * 3.0, y)
    with pytest.raises(DataError, match="has 9 labels but there are 10 samples"):
        attack.poison(x, y[:9])
    with pytest.raises(DataError, match="valid labels 0..2"):
        JumboContamination(nb_classes=3).poison(x, y)
    with pytest.raises(InvalidParameterError, match="unexpected arguments"):
        attack.poison(x, y, rate=0.1)
    with pytest.raises(InvalidParameterError, match="n must be an int >= 1"):
        attack.generate_shadow_datasets(x, y, 0)
    with pytest.raises(DataError, match="needs the labels y"):  # checked eagerly, before iteration
        attack.generate_shadow_datasets(x, None, 2)
    with pytest.raises(InvalidParameterError, match="nb_classes must be"):
        attack.set_params(nb_classes=-1)
    with pytest.raises(InvalidParameterError, match="unknown parameter 'rate'"):
        attack.set_params(rate=(0.1, 0.2))
    assert attack.nb_classes == 10
