"""Ranking statistics (against scipy), bootstrap intervals, cost-stratified sampling, block similarity."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from conftest import load_space, tiny_space
from scipy import stats

from fairnas.analysis import (
    block_similarity,
    bootstrap_ci,
    extreme_archs,
    kendall_tau,
    markdown_table,
    paired_bootstrap_diff,
    partial_kendall_tau,
    pearson_r,
    plot_similarity,
    ranking_report,
    read_archs,
    similarity_summary,
    spearman_rho,
    stratified_sample,
    top_k_precision,
    write_archs,
    write_csv,
)
from fairnas.errors import ConfigError
from fairnas.models import ArchitectureError, CostModel, SearchSpace, Supernet

# ---------------------------------------------------------------- ranking statistics


def test_perfect_and_reversed_rankings():
    a = [0.1, 0.5, 0.3, 0.9, 0.7]
    assert kendall_tau(a, a) == pytest.approx(1.0)
    assert spearman_rho(a, a) == pytest.approx(1.0)
    assert pearson_r(a, a) == pytest.approx(1.0)
    reversed_ = [-v for v in a]
    assert kendall_tau(a, reversed_) == pytest.approx(-1.0)
    assert spearman_rho(a, reversed_) == pytest.approx(-1.0)


def test_ties_use_tau_b_like_scipy():
    a = [1, 2, 2, 3, 3, 3, 4]
    b = [1, 3, 2, 2, 4, 4, 5]
    assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-15)
    assert spearman_rho(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-15)
    # By hand: C = 4, D = 0, one tie in each of 6 pairs: tau-b = 4 / sqrt(5 * 5), not tau-a = 4 / 6.
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_inputs_match_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=40)
    b = a + rng.normal(size=40)
    b[:5] = np.round(b[:5])  # a few values that may tie
    assert kendall_tau(a, b) == stats.kendalltau(a, b).statistic
    assert spearman_rho(a, b) == stats.spearmanr(a, b).statistic
    assert pearson_r(a, b) == stats.pearsonr(a, b).statistic


def test_constant_and_invalid_inputs():
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert math.isnan(pearson_r([1, 2, 3], [2, 2, 2]))
    with pytest.raises(ValueError, match="length"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        spearman_rho([1, 2, float("nan")], [1, 2, 3])


def test_top_k_precision_by_hand():
    true = [0.9, 0.8, 0.7, 0.6, 0.5]
    assert top_k_precision(true, true, 2) == 1.0
    assert top_k_precision([0.1, 0.2, 0.3, 0.4, 0.5], true, 2) == 0.0
    # predicted top-3 = {0, 3, 4}; true top-3 = {0, 1, 2}
    assert top_k_precision([0.9, 0.1, 0.2, 0.8, 0.7], true, 3) == pytest.approx(1 / 3)
    # Ties are broken by index: the predicted top-2 of all-equal values is {0, 1}.
    assert top_k_precision([0.5] * 5, true, 2) == 1.0
    assert top_k_precision([0.5] * 5, true[::-1], 2) == 0.0
    with pytest.raises(ValueError, match="k"):
        top_k_precision(true, true, 6)


# ---------------------------------------------------------------- bootstrap


def noisy(n=30, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    true = rng.normal(size=n)
    return true + noise * rng.normal(size=n), true


def test_partial_kendall_tau_against_scipy_and_its_limits():
    # Rankings unrelated to the one held fixed (tau 0 with it): the partial tau is the plain tau.
    given, a, b = [1, 2, 3, 4, 5], [1, 4, 5, 3, 2], [1, 5, 3, 4, 2]
    assert stats.kendalltau(a, given).statistic == pytest.approx(0.0)
    assert stats.kendalltau(b, given).statistic == pytest.approx(0.0)
    assert partial_kendall_tau(a, b, given) == pytest.approx(stats.kendalltau(a, b).statistic) == pytest.approx(0.6)
    # General data: Kendall's formula from scipy's three taus; symmetric in the two rankings.
    rng = np.random.default_rng(0)
    size = rng.normal(size=30)
    true = size + rng.normal(size=30)
    pred = size + 0.5 * rng.normal(size=30)
    t_pt, t_ps, t_ts = (stats.kendalltau(x, y).statistic for x, y in ((pred, true), (pred, size), (true, size)))
    expected = (t_pt - t_ps * t_ts) / math.sqrt((1 - t_ps**2) * (1 - t_ts**2))
    assert partial_kendall_tau(pred, true, size) == pytest.approx(expected)
    assert partial_kendall_tau(true, pred, size) == pytest.approx(expected)
    assert 0.0 < expected < t_pt  # part of the agreement came through size
    # The ground truth predicts itself perfectly beyond size; size itself is undefined, not 0 or 1.
    assert partial_kendall_tau(true, true, size) == pytest.approx(1.0)
    assert math.isnan(partial_kendall_tau(size, true, size))
    assert math.isnan(partial_kendall_tau(pred, true, np.ones(30)))
    with pytest.raises(ValueError, match="length"):
        partial_kendall_tau(pred, true, size[:10])


def test_bootstrap_ci_resamples_a_given_column_with_the_pairs():
    rng = np.random.default_rng(1)
    size = rng.normal(size=40)
    true = size + rng.normal(size=40)
    pred = size + 0.5 * rng.normal(size=40)
    est, low, high = bootstrap_ci(partial_kendall_tau, pred, true, n_boot=300, seed=0, given=size)
    assert est == partial_kendall_tau(pred, true, size)
    assert low <= est <= high
    assert bootstrap_ci(partial_kendall_tau, pred, true, n_boot=300, seed=0, given=size) == (est, low, high)
    # A size meter (size plus noise unrelated to the truth): a clearly positive plain tau, but an
    # interval around 0 beyond size.
    meter = size + 0.3 * rng.normal(size=40)
    assert bootstrap_ci(kendall_tau, meter, true, n_boot=300)[1] > 0.2
    _, low, high = bootstrap_ci(partial_kendall_tau, meter, true, n_boot=300, given=size)
    assert low < 0.0 < high
    rows = ranking_report(true, {"pred": pred, "size": size}, ks=(5,), n_boot=100, given=size)
    assert rows[0]["partial_tau_given_madds"] == pytest.approx(est)
    assert math.isnan(rows[1]["partial_tau_given_madds"])
    assert "partial_tau_given_madds" not in ranking_report(true, {"pred": pred}, ks=(5,), n_boot=10)[0]


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    pred, true = noisy()
    est, low, high = bootstrap_ci(kendall_tau, pred, true, n_boot=300, seed=3)
    assert est == kendall_tau(pred, true)
    # The percentile bootstrap replayed by hand with scipy's tau: 300 resamples of the 30 pairs.
    idx = np.random.default_rng(3).integers(0, len(pred), size=(300, len(pred)))
    taus = [stats.kendalltau(pred[i], true[i]).statistic for i in idx]
    assert (low, high) == pytest.approx(tuple(np.percentile(taus, [2.5, 97.5])), abs=1e-12)
    assert low < est < high
    assert bootstrap_ci(kendall_tau, pred, true, n_boot=300, seed=3) == (est, low, high)
    assert bootstrap_ci(kendall_tau, pred, true, n_boot=300, seed=4) != (est, low, high)
    with pytest.raises(ConfigError, match="alpha"):
        bootstrap_ci(kendall_tau, pred, true, alpha=1.5)


def test_paired_bootstrap():
    pred, true = noisy()
    diff, low, high, p = paired_bootstrap_diff(spearman_rho, pred, pred, true, n_boot=200, seed=0)
    assert (diff, low, high, p) == (0.0, 0.0, 0.0, 1.0)
    worse, _ = noisy(noise=3.0, seed=0)
    diff, low, high, p = paired_bootstrap_diff(kendall_tau, pred, worse, true, n_boot=300, seed=0)
    assert diff == pytest.approx(kendall_tau(pred, true) - kendall_tau(worse, true))
    assert low <= diff <= high
    assert diff > 0 and p < 0.05


def test_ranking_report_table_and_csv(tmp_path):
    pred, true = noisy(n=12)
    rows = ranking_report(true, {"fair": pred, "true": true}, ks=(3, 5), n_boot=100, seed=0)
    assert [r["predictor"] for r in rows] == ["fair", "true"]
    fair, perfect = rows
    assert fair["kendall_tau"] == kendall_tau(pred, true)
    assert fair["top3_precision"] == top_k_precision(pred, true, 3)
    for key in ("kendall_tau", "spearman_rho", "pearson_r", "top3_precision", "top5_precision"):
        assert perfect[key] == pytest.approx(1.0)
        assert fair[f"{key}_low"] <= fair[f"{key}_high"]
    table = markdown_table(rows)
    assert table.splitlines()[0].startswith("| predictor | n | kendall_tau |")
    assert "_low" not in table and "[" in table and len(table.splitlines()) == 4
    path = write_csv(rows, tmp_path / "out" / "ranking.csv")
    with path.open() as f:
        read = list(csv.DictReader(f))
    assert float(read[0]["kendall_tau_high"]) == fair["kendall_tau_high"]
    with pytest.raises(ConfigError, match="ks"):
        ranking_report(true, {"fair": pred}, ks=(20,), n_boot=10)


# ---------------------------------------------------------------- stratified sampling


def wide_space() -> SearchSpace:
    """8 searchable layers x 4 choices (65536 architectures: more than the pool, so it is drawn)."""
    return SearchSpace.create(
        name="wide",
        input_size=16,
        num_classes=10,
        stem={"out": 8, "kernel": 3, "stride": 1},
        choices=["ir_k3_e1", "ir_k5_e3", "ir_k7_e6", "skip"],
        stages=[{"out": 8, "layers": 4, "stride": 1}, {"out": 8, "layers": 4, "stride": 1}],
    )


@pytest.mark.parametrize("make_space", [wide_space, tiny_space, lambda: load_space("fairnas_mini")])
def test_stratified_sample_covers_cost_range(make_space):
    space = make_space()
    cost = CostModel.create(space)
    n = min(20, space.size)
    archs = stratified_sample(space, n, seed=0)
    assert len(archs) == n == len(set(archs))
    assert all(space.parse_arch(a) == a for a in archs)
    madds = [cost.madds(a) for a in archs]
    assert madds == sorted(madds)
    low, high = cost.range_madds()
    assert max(madds) - min(madds) >= 0.9 * (high - low)
    smallest, largest = extreme_archs(space)
    assert smallest in archs and largest in archs
    assert (cost.madds(smallest), cost.madds(largest)) == (low, high)
    # Lowest and highest of 10 equal-width bins are both represented.
    bins = {min(int((m - low) / (high - low) * 10), 9) for m in madds}
    assert {0, 9} <= bins
    assert stratified_sample(space, n, seed=0) == archs


def test_stratified_sample_spreads_more_than_uniform():
    space = wide_space()
    cost = CostModel.create(space)
    archs = stratified_sample(space, 30, seed=1, pool=5000)
    assert archs != stratified_sample(space, 30, seed=2, pool=5000)
    low, high = cost.range_madds()
    bins = {min(int((cost.madds(a) - low) / (high - low) * 10), 9) for a in archs}
    assert len(bins) >= 8  # a uniform sample of 30 piles up in the middle bins


def test_stratified_sample_whole_space_and_errors():
    space = tiny_space()
    assert sorted(stratified_sample(space, space.size, seed=0)) == sorted(
        tuple(int(c) for c in np.unravel_index(i, (3, 3, 3))) for i in range(27)
    )
    with pytest.raises(ConfigError, match="27"):
        stratified_sample(space, 28, seed=0)
    with pytest.raises(ConfigError, match="num_bins"):
        stratified_sample(space, 5, seed=0, num_bins=0)


def test_write_read_archs_round_trip(tmp_path):
    space = wide_space()
    archs = stratified_sample(space, 10, seed=0, pool=2000)
    path = write_archs(archs, tmp_path / "sweep" / "archs.txt", space)
    assert path.read_text().splitlines()[0] == space.format_arch(archs[0])
    assert read_archs(path, space) == archs
    path.write_text("# header\n0-1-2-3-0-1-2-3\n\n0-1-2-9-0-1-2-3\n")
    with pytest.raises(ArchitectureError, match=r"archs\.txt:4"):
        read_archs(path, space)
    with pytest.raises(ArchitectureError, match=r"\(0, 1\) has 2 entries but space"):
        write_archs([(0, 1)], tmp_path / "bad.txt", space)


# ---------------------------------------------------------------- block similarity


def test_block_similarity_properties(tmp_path):
    space = tiny_space()
    net = Supernet(space, seed=0).train()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(2)]
    matrices = {}
    for layer in range(space.num_layers):
        matrix = block_similarity(net, layer, [(x, torch.zeros(4)) for x in batches], branch=False)
        assert matrix.shape == (space.num_choices, space.num_choices)
        np.testing.assert_allclose(np.diag(matrix), 1.0)
        np.testing.assert_allclose(matrix, matrix.T)
        assert np.isfinite(matrix).all() and (np.abs(matrix) <= 1.0).all()
        matrices[layer] = matrix
        # Residual branches only (the default): the skip choice (index 2) has none, so it is NaN;
        # the two real blocks are less alike than their full outputs, which share the identity.
        branches = block_similarity(net, layer, batches)
        assert np.isnan(branches[2]).all() and np.isnan(branches[:, 2]).all()
        np.testing.assert_allclose(np.diag(branches)[:2], 1.0)
        assert branches[0, 1] < matrix[0, 1]
    assert net.training  # the training mode is restored
    assert not np.allclose(matrices[0], 1.0)  # different blocks compute different features

    # Two identical blocks (copied weights) are perfectly similar off the diagonal too.
    twin = tiny_twin_space()
    twin_net = Supernet(twin, seed=0)
    twin_net.choice_blocks(0)[1].load_state_dict(twin_net.choice_blocks(0)[0].state_dict())
    assert block_similarity(twin_net, 0, batches)[0, 1] == pytest.approx(1.0)

    summary = similarity_summary(matrices)
    assert set(summary["per_layer"]) == {0, 1, 2}
    assert summary["overall"] == pytest.approx(np.mean(list(summary["per_layer"].values())))
    path = plot_similarity(list(matrices.values()), tmp_path / "plots" / "sim.png", "tiny")
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="searchable"):
        block_similarity(net, 3, batches)
    with pytest.raises(ValueError, match="empty"):
        block_similarity(net, 0, [])


def tiny_twin_space() -> SearchSpace:
    """Two identical candidate blocks per layer, to check that equal blocks have similarity 1."""
    return SearchSpace.create(
        name="twin",
        input_size=8,
        num_classes=4,
        stem={"out": 4, "kernel": 3, "stride": 1},
        choices=["ir_k3_e2", "ir_k3_e2", "skip"],
        stages=[{"out": 4, "layers": 2, "stride": 1}],
    )
