import pytest
import torch
from art.estimators.classification import PyTorchClassifier

from art_backdoor_ext.exceptions import InvalidParameterError
from art_backdoor_ext.models import ARCHITECTURES, build_model, make_classifier


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_reference_networks_shapes_and_named_layers(arch):
    model = build_model(arch, nb_classes=7, random_state=0)
    x = torch.zeros((2,) + model.input_shape)
    model.eval()
    assert model(x).shape == (2, 7)
    names = dict(model.named_modules())
    assert "conv1" in names and "logits" in names


def test_seeded_builds_are_identical_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a, b = build_model("digits-cnn", random_state=3), build_model("digits-cnn", random_state=3)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert torch.equal(state, torch.random.get_rng_state())
    with pytest.raises(InvalidParameterError, match="unknown architecture"):
        build_model("vgg")


def test_make_classifier():
    clf = make_classifier(build_model("digits-cnn"), device_type="cpu")
    assert isinstance(clf, PyTorchClassifier)
    assert clf.input_shape == (1, 8, 8) and clf.nb_classes == 10 and tuple(clf.clip_values) == (0.0, 1.0)
    with pytest.raises(InvalidParameterError, match="input_shape and nb_classes"):
        make_classifier(torch.nn.Linear(2, 2))
    with pytest.raises(InvalidParameterError, match="torch.nn.Module"):
        make_classifier("model")
