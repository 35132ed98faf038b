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
    # the session-wide victim may carry hooks other tests' ART calls left (ART's get_activations keeps one per
    # call): the engine must add none that outlive its run
    hooks_before = sum(len(m._forward_hooks) for m in model.modules())
    problems = _subset_pairs(y, PAIRS[:2])
    for objective in ("J", "Jp", "Jc"):
        r = PerturbationEngine(badnets_victim.classifier, Additive(0.5), layer="relu1", objective=objective,
                               max_iter=200).run(x, y, problems)
        assert r.perturbations.shape == (2, 16, 8, 8) and r.reached.all()
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks_before
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


def _traced_result(rho_columns, size_columns, reached, misclassification, iterations):
    """An EngineResult with hand-written traces (one column per problem, NaN once the problem stopped)."""
    from art_backdoor_ext.defences.model.perturbation import EngineResult, Problems

    t = max(len(c) for c in rho_columns)

    def pad(columns):
        return np.array([list(c) + [np.nan] * (t - len(c)) for c in columns], dtype=float).T

    rho, d = pad(rho_columns), pad(size_columns)
    p = len(rho_columns)
    return EngineResult(
        problems=Problems(np.zeros((p, 1), dtype=int), np.ones(p, dtype=int), np.zeros(p, dtype=int)),
        size_l1=np.nanmax(d, 0) * 2, size_l2=np.nanmax(d, 0), misclassification=np.array(misclassification),
        initial_misclassification=rho[0], reached=np.array(reached), iterations=np.array(iterations),
        perturbations=np.zeros((p, 1, 2, 2)), trace_size_l1=d * 2, trace_size_l2=d, trace_misclassification=rho)


def test_at_fraction_stops_each_problem_where_a_smaller_pi_would():
    f32 = float(np.float32(21 / 30))  # the engine's float32 fraction 21/30, just below 0.7 in float64
    result = _traced_result(
        rho_columns=[[0.0, 0.4, 0.7, 0.9], [0.0, 0.1, 0.2], [0.65, 0.95], [0.0, f32, 0.9]],
        size_columns=[[0.0, 1.0, 2.0, 3.0], [0.0, 2.5, 5.0], [0.0, 1.0], [0.0, 1.5, 2.5]],
        reached=[True, False, True, True], misclassification=[0.9, 0.2, 0.95, 0.9], iterations=[3, 2, 1, 2])
    at = result.at_fraction(0.6, max_size_l2=5.0, max_iter=100)
    # problem 0 reaches 0.6 at step 2; problem 1 stops at the size cap as before; problem 2 starts above 0.6
    assert at.iterations.tolist() == [2, 2, 0, 1]
    assert at.size_l2.tolist() == [2.0, 5.0, 0.0, 1.5] and at.size_l1.tolist() == [4.0, 10.0, 0.0, 3.0]
    assert at.reached.tolist() == [True, False, True, True]
    np.testing.assert_allclose(at.misclassification, [0.7, 0.2, 0.65, f32])
    assert np.isnan(at.trace_size_l2[3:, 0]).all() and not np.isnan(at.trace_size_l2[:3, 0]).any()
    assert np.isnan(at.trace_misclassification[1:, 2]).all() and np.isnan(at.perturbations).all()
    assert result.at_fraction(0.7, 5.0, 100).iterations[3] == 1  # compared in float32, as the engine does
    assert result.at_fraction(0.6, 5.0, max_iter=1).iterations.tolist() == [1, 1, 0, 1]  # the iteration cap
    with pytest.raises(InvalidParameterError, match="only a smaller one can be read off"):
        result.at_fraction(0.92, 5.0, 100)


def test_at_fraction_equals_a_run_with_that_fraction(badnets_victim, clean_set):
    x, y = clean_set
    problems = _subset_pairs(y, PAIRS)

    def run(pi):
        return PerturbationEngine(badnets_victim.classifier, Additive(0.05), target_misclassification=pi,
                                  max_iter=200, max_size_l2=6.0).run(x, y, problems)

    high = run(1.0)
    for pi in (0.5, 0.8):
        read, direct = high.at_fraction(pi, 6.0, 200), run(pi)
        np.testing.assert_array_equal(read.iterations, direct.iterations)
        np.testing.assert_array_equal(read.reached, direct.reached)
        np.testing.assert_allclose(read.size_l2, direct.size_l2, rtol=1e-6)
        np.testing.assert_allclose(read.misclassification, direct.misclassification)
        t = direct.trace_size_l2.shape[0]
        np.testing.assert_allclose(read.trace_size_l2[:t], direct.trace_size_l2, rtol=1e-6)
        assert np.isnan(read.trace_size_l2[t:]).all()
    assert np.any(high.iterations > high.at_fraction(0.5, 6.0, 200).iterations)  # the test has teeth
