"""Path samplers: the strict-fairness invariant, reproducibility, and the baselines' statistics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairnas.samplers import BiasedSampler, FixedSampler, StrictFairSampler, UniformSampler


@settings(max_examples=200, deadline=None)
@given(
    layers=st.integers(1, 30),
    choices=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
    step=st.integers(0, 10**9),
)
def test_strict_fairness_uses_every_choice_of_every_layer_exactly_once(layers, choices, seed, step):
    groups = StrictFairSampler(layers, choices, seed).sample(step)
    assert len(groups) == 1  # one optimizer step per training step
    paths = np.array(groups[0])
    assert paths.shape == (choices, layers)
    for layer in range(layers):
        assert sorted(paths[:, layer]) == list(range(choices))


@settings(max_examples=50, deadline=None)
@given(layers=st.integers(1, 20), choices=st.integers(2, 8), steps=st.integers(1, 40))
def test_strict_fairness_counts_are_equal_after_any_number_of_steps(layers, choices, steps):
    sampler = StrictFairSampler(layers, choices, seed=3)
    counts = np.zeros((layers, choices), dtype=int)
    for step in range(steps):
        for arch in sampler.sample(step)[0]:
            counts[np.arange(layers), arch] += 1
    assert (counts == steps).all()


SAMPLERS = {
    "sf": lambda seed: StrictFairSampler(8, 6, seed),
    "ef": lambda seed: UniformSampler(8, 6, seed),
    "biased": lambda seed: BiasedSampler(8, 6, seed),
    "fixed": lambda seed: FixedSampler(8, 6, (1, 2, 3, 4, 5, 0, 1, 2), seed),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_is_a_pure_function_of_seed_and_step(name):
    a, b = SAMPLERS[name](7), SAMPLERS[name](7)
    # Interleaved, repeated and out-of-order calls draw the same: no hidden RNG state.
    first = [a.sample(s) for s in range(20)]
    assert [b.sample(s) for s in reversed(range(20))][::-1] == first
    assert a.sample(5) == first[5]
    if name != "fixed":
        assert SAMPLERS[name](8).sample(0) != first[0]
        assert len({repr(g) for g in first}) == 20


def test_uniform_sampler_is_one_update_per_path_with_sf_compute():
    sampler = UniformSampler(8, 6, seed=0)
    groups = sampler.sample(0)
    assert len(groups) == 6 and all(len(g) == 1 for g in groups)
    assert sampler.paths_per_step == StrictFairSampler(8, 6).paths_per_step == 6
    assert UniformSampler(8, 6, num_paths=1).updates_per_step == 1


def test_uniform_sampler_is_fair_only_in_expectation():
    sampler = UniformSampler(8, 6, seed=0)
    counts = np.zeros((8, 6))
    for step in range(2000):
        for (arch,) in sampler.sample(step):
            counts[np.arange(8), arch] += 1
    freq = counts / counts.sum(1, keepdims=True)
    assert np.allclose(freq, 1 / 6, atol=0.02)  # fair on average ...
    assert (counts.max(1) - counts.min(1)).min() > 0  # ... but never exactly


def test_biased_sampler_follows_its_probabilities():
    sampler = BiasedSampler(4, 3, seed=0, probs=[0.6, 0.3, 0.1])
    counts = np.zeros((4, 3))
    for step in range(3000):
        for (arch,) in sampler.sample(step):
            counts[np.arange(4), arch] += 1
    assert np.allclose(counts / counts.sum(1, keepdims=True), [0.6, 0.3, 0.1], atol=0.02)
    default = BiasedSampler(4, 3).probs
    assert np.allclose(default, [1 / 6, 2 / 6, 3 / 6])


def test_sampler_input_errors():
    with pytest.raises(ValueError, match="3 non-negative weights"):
        BiasedSampler(4, 3, probs=[1, 1])
    with pytest.raises(ValueError, match="does not fit"):
        FixedSampler(4, 3, (0, 0, 0, 3))
    with pytest.raises(ValueError, match="num_paths must be at least 1"):
        UniformSampler(4, 3, num_paths=0)
