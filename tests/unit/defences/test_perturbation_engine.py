import numpy as np
import pytest

from art_backdoor_ext.datasets import sample_per_class
from art_backdoor_ext.defences.model.perturbation import Additive, PerturbationEngine, pair_problems
from art_backdoor_ext.exceptions import InvalidParameterError


@pytest.fixture(scope="module")
def clean_set(digits):
    return sample_per_class(digits.x_test, digits.y_test, 6, random_state=0)


def _subset_pairs(y, pairs):
    problems = pair_problems(y, 10)
    keep = np.array([np.flatnonzero((problems.sources == s) & (problems.targets == t))[0] for s, t in pairs])
    return problems.subset(keep)


PAIRS = [(1, 0), (3, 9), (5, 6), (8, 1)]


def test_pair_problems_layout():
    y = np.array([0, 0, 1, 2, 2, 2])
    p = pair_problems(y, 3)
    assert len(p) == 6 and p.indices.shape == (6, 3)
    assert p.sources.tolist() == [0, 0, 1, 1, 2, 2] and p.targets.tolist() == [1, 2, 0, 2, 0, 1]
    assert p.indices[2].tolist() == [2, -1, -1]


def test_batched_equals_one_at_a_time(badnets_victim, clean_set):
    x, y = clean_set
    problems = _subset_pairs(y, PAIRS)
    engine = PerturbationEngine(badnets_victim.classifier, Additive(0.05), max_iter=200)
    batched = engine.run(x, y, problems)
    for i in range(len(problems)):
        alone = engine.run(x, y, problems.subset(np.array([i])))
        assert alone.iterations[0] == batched.iterations[i]
        np.testing.assert_allclose(alone.size_l2[0], batched.size_l2[i], rtol=1e-4)


def test_stopping_rule_and_found_perturbation_works(badnets_victim, clean_set):
    x, y = clean_set
    clf = badnets_victim.classifier
    step = 0.05
    result = PerturbationEngine(clf, Additive(step), target_misclassification=0.8, max_iter=300).run(
        x, y, _subset_pairs(y, PAIRS))
    assert result.reached.all() and np.all(result.misclassification >= 0.8)
    # normalised steps: the size after n steps is at most n * step
    assert np.all(result.size_l2 <= result.iterations * step + 1e-4)
    # the trace starts at zero size with the clean confusion, and the last entry is the stopping point
    np.testing.assert_allclose(result.trace_size_l2[0], 0.0)
    np.testing.assert_allclose(result.trace_misclassification[0], result.initial_misclassification)
    for i, (s, t) in enumerate(PAIRS):
        x_s = x[y == s]
        pred = clf.predict(np.clip(x_s + result.perturbations[i], 0, 1).astype(np.float32)).argmax(1)
        assert np.mean(pred == t) >= 0.8


def test_size_cap_stops_unreached(badnets_victim, clean_set):
    x, y = clean_set
    result = PerturbationEngine(badnets_victim.classifier, Additive(0.05), max_size_l2=0.1, max_iter=100).run(
        x, y, _subset_pairs(y, [(3, 9), (5, 6)]))
    assert not result.reached.any() and np.all(result.size_l2 >= 0.1) and np.all(result.size_l2 < 0.1 + 0.051)


def test_layer_space_and_objectives(badnets_victim, clean_set):
    x, y = clean_set
    model = badnets_victim.classifier.model
    problems = _subset_pairs(y, PAIRS[:2])
    for objective in ("J", "Jp", "Jc"):
        r = PerturbationEngine(badnets_victim.classifier, Additive(0.5), layer="relu1", objective=objective,
                               max_iter=200).run(x, y, problems)
        assert r.perturbations.shape == (2, 16, 8, 8) and r.reached.all()
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0
    assert all(p.requires_grad for p in model.parameters())


def test_bad_objective():
    with pytest.raises(InvalidParameterError, match="objective must be one of"):
        PerturbationEngine(None, Additive(0.1), objective="K")


def test_perturbation_reaches_pixels_that_are_black_in_every_sample(badnets_victim, clean_set):
    """The victim's 2x2 corner patch sits on pixels that are 0 in every digit: a zero-initialised perturbation
    must still be able to brighten them (torch.clamp's zero gradient at the bound froze them)."""
    x, y = clean_set
    sources = [s for s in range(1, 10) if np.all(x[y == s][..., -2:, -2:] == 0)]
    assert sources, "the test needs a source class whose corner is black in every sample"
    problems = _subset_pairs(y, [(s, 0) for s in sources])
    result = PerturbationEngine(badnets_victim.classifier, Additive(0.05), max_iter=100).run(x, y, problems)
    corner = np.abs(result.perturbations[..., -2:, -2:]).reshape(len(sources), -1).max(1)
    assert np.all(corner > 0.05), corner
