"""Every registered advantage estimator, policy loss and off-policy correction has a hand-computed test, and the
registries refuse duplicate names.

Each test module keys its parametrised hand-example test by name (`HAND_CASES`) and exports `COVERED =
set(HAND_CASES)`, so a name is only covered if a hand example actually runs for it."""
import pytest

from rl.registry import Registry
from tests.trainers import test_advantages, test_grpo_loss, test_offpolicy
from trainers.advantages import ADVANTAGES
from trainers.grpo.loss import POLICY_LOSSES
from trainers.offpolicy import OFFPOLICY

REGISTRIES = {
    "advantages": (ADVANTAGES, test_advantages.COVERED),
    "policy_losses": (POLICY_LOSSES, test_grpo_loss.COVERED),
    "offpolicy": (OFFPOLICY, test_offpolicy.COVERED),
}


def untested(registry: Registry, covered: set[str]) -> set[str]:
    return set(registry.names()) - set(covered)


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_registered_name_is_tested(kind):
    registry, covered = REGISTRIES[kind]
    assert not untested(registry, covered), f"registered {registry.kind}s without a test: {untested(registry, covered)}"
    assert covered <= set(registry.names()), f"tests cover names that are not registered: {covered - set(registry.names())}"


def test_the_coverage_check_catches_a_new_name():
    scratch = Registry("scratch")
    scratch.register("a")(object())
    assert untested(scratch, {"a"}) == set()
    scratch.register("b")(object())
    assert untested(scratch, {"a"}) == {"b"}


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_duplicate_name_raises_and_keeps_the_original(kind):
    registry, _ = REGISTRIES[kind]
    name = registry.names()[0]
    original = registry.get(name)
    with pytest.raises(ValueError, match=f"duplicate {registry.kind} name '{name}'"):
        registry.register(name)(lambda *a, **k: None)
    assert registry.get(name) is original


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_unknown_name_suggests_the_closest(kind):
    registry, _ = REGISTRIES[kind]
    name = registry.names()[-1]
    with pytest.raises(KeyError, match=f"did you mean '{name}'"):
        registry.get(name + "x")
