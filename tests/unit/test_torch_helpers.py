import numpy as np
import pytest
import torch

from art_backdoor_ext._torch import capture, eval_mode, extract_features, predict_logits, preprocess, resolve_layers
from art_backdoor_ext.exceptions import InvalidParameterError
from art_backdoor_ext.models import DigitsCNN, make_classifier


def _hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_capture_removes_hooks_even_on_error():
    model = DigitsCNN()
    with pytest.raises(RuntimeError):
        with capture(model, ["relu1", "fc1"]):
            assert _hooks(model) == 2
            model(torch.zeros(2, 1, 10, 10))  # 5x5 after pooling does not fit fc1
    assert _hooks(model) == 0


def test_capture_records_outputs_and_flattens():
    model = DigitsCNN()
    with capture(model, ["relu1", "fc1"], flatten=True) as out:
        model(torch.zeros(3, 1, 8, 8))
    assert out["relu1"].shape == (3, 16 * 64) and out["fc1"].shape == (3, 64)


def test_unknown_layer_lists_valid_names():
    with pytest.raises(InvalidParameterError, match="unknown layer 'nope'.*conv1.*logits"):
        resolve_layers(DigitsCNN(), ["nope"])


def test_eval_mode_restores_mixed_modes():
    model = DigitsCNN()
    model.train()
    model.conv1.eval()
    with eval_mode(model):
        assert not model.training and not model.fc1.training
    assert model.training and not model.conv1.training and model.fc1.training


def test_extract_features_one_pass_matches_model_and_restores_mode():
    clf = make_classifier(DigitsCNN(), device_type="cpu")
    clf.model.train()
    calls = []
    clf.model.conv1.register_forward_hook(lambda *a: calls.append(1))
    x = np.random.default_rng(0).random((10, 1, 8, 8), dtype=np.float32)
    x_copy = x.copy()
    feats = extract_features(clf, x, ["relu1", "relu3"], batch_size=4, include_logits=True)
    assert len(calls) == 3  # ceil(10 / 4) forward passes for two layers plus logits
    assert clf.model.training
    with torch.no_grad():
        expected = clf.model.eval()(torch.tensor(x)).numpy()
    np.testing.assert_allclose(feats["logits"], expected, atol=1e-5)
    np.testing.assert_array_equal(x, x_copy)
    assert feats["relu3"].shape == (10, 64)


def test_preprocessing_is_applied():
    model = DigitsCNN()
    clf = make_classifier(model, preprocessing=(0.5, 0.25), device_type="cpu")
    x = np.full((2, 1, 8, 8), 0.75, dtype=np.float32)
    t = preprocess(clf, torch.tensor(x))
    np.testing.assert_allclose(t.numpy(), 1.0)
    with torch.no_grad():
        expected = model.eval()(torch.ones(2, 1, 8, 8)).numpy()
    np.testing.assert_allclose(predict_logits(clf, x), expected, atol=1e-5)


def test_clip_to_range_forward_is_clamp_and_gradient_is_one_sided_at_the_bounds():
    from art_backdoor_ext._torch import clip_to_range

    t = torch.tensor([-0.5, 0.0, 0.0, 0.3, 1.0, 1.0, 1.5], requires_grad=True)
    out = clip_to_range(t, 0.0, 1.0)
    torch.testing.assert_close(out, t.detach().clamp(0.0, 1.0))
    # upstream gradient: a descent step (-g) moves t down where g > 0, up where g < 0
    g = torch.tensor([-1.0, -1.0, 1.0, 2.0, 1.0, -1.0, -1.0])
    out.backward(g)
    # strictly outside: zero (as clamp); at 0: passes only when the step goes up; inside: identity;
    # at 1: passes only when the step goes down
    assert t.grad.tolist() == [0.0, -1.0, 0.0, 2.0, 1.0, 0.0, 0.0]


def test_torch_clamp_would_freeze_a_zero_start_on_black_pixels():
    """Why clip_to_range exists: clamp's gradient at the bound is zero."""
    from art_backdoor_ext._torch import clip_to_range

    x = torch.zeros(4)
    delta = torch.zeros(4, requires_grad=True)
    (-(x + delta).clamp(0.0, 1.0).sum()).backward()
    assert delta.grad.abs().sum() == 0
    delta.grad = None
    (-clip_to_range(x + delta, 0.0, 1.0).sum()).backward()
    assert (delta.grad < 0).all()


def test_scan_model_is_a_channels_last_copy_on_cpu_with_the_same_outputs():
    from art_backdoor_ext._torch import scan_model
    from art_backdoor_ext.models import build_model

    model = build_model("badnets-cnn", random_state=0).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    working = scan_model(model, torch.device("cpu"))
    assert working is not model
    assert working.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.conv2.weight.is_contiguous(memory_format=torch.channels_last)  # the caller's is untouched
    assert working.training == model.training
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(working(x), model(x), rtol=1e-5, atol=1e-5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_scan_model_keeps_the_model_off_cpu_or_without_convolutions():
    from art_backdoor_ext._torch import scan_model

    dense = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    assert scan_model(dense, torch.device("cpu")) is dense
    conv = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    assert scan_model(conv, torch.device("cuda")) is conv  # only the device type is read: no GPU needed


def test_scan_batch_images_defaults_per_device():
    from art_backdoor_ext._torch import scan_batch_images

    assert scan_batch_images(torch.device("cpu"), None) == 512
    assert scan_batch_images(torch.device("cuda"), None) == 4096
    assert scan_batch_images(torch.device("cpu"), 64) == 64


def test_deepcopy_classifier_after_arts_get_activations(fresh_classifier, digits):
    """ART's get_activations leaves a hook that caches non-leaf tensors on the classifier; deepcopy then fails."""
    import copy

    from art_backdoor_ext._torch import deepcopy_classifier

    clf = fresh_classifier
    x = digits.x_test[:8]
    clf.get_activations(x, layer=0, batch_size=8)  # ART registers its caching hook on the model
    clf.model(torch.from_numpy(x))  # a forward with gradients: the cache now holds a non-leaf tensor
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(clf)
    cache = clf._features
    cached = {k: v for k, v in cache.items()}
    clone = deepcopy_classifier(clf)
    assert clone is not clf and clone.model is not clf.model
    assert clf._features is cache and all(cache[k] is v for k, v in cached.items())  # the original is untouched
    np.testing.assert_allclose(clone.predict(x), clf.predict(x), rtol=1e-6)
