"""Checks shared by the conformance batteries: parameter round trip, and PyTorch hygiene around a call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from art_backdoor_ext.exceptions import InvalidParameterError


def hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def check_params_round_trip(obj) -> None:
    """repr names the class; get_params -> set_params -> get_params is stable; an unknown parameter raises."""
    assert type(obj).__name__ in repr(obj)
    params = obj.get_params()
    obj.set_params(**{k: v for k, v in params.items() if k != "classifier"})
    assert obj.get_params() == params
    with pytest.raises(InvalidParameterError, match="unknown parameter"):
        obj.set_params(no_such_parameter=1)


def run_in_train_mode(model, call: Callable[[], Any]) -> Any:
    """Run ``call()`` with ``model`` in train mode; check the mode, hooks and requires_grad flags are as before.
    The model is left in eval mode."""
    model.train()
    hooks = hook_count(model)
    grads = [p.requires_grad for p in model.parameters()]
    try:
        result = call()
        assert model.training, "model mode not restored"
    finally:
        model.eval()
    assert hook_count(model) == hooks, "hooks left on the model"
    assert [p.requires_grad for p in model.parameters()] == grads
    return result


def drop_seconds(value: Any) -> Any:
    """A JSON-like result without its (timing) ``seconds`` entries, at any depth of nested dicts."""
    if isinstance(value, dict):
        return {k: drop_seconds(v) for k, v in value.items() if k != "seconds"}
    return value
