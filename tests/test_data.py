"""Feature generators (their distributions) and the batch streams (stateless, shardable)."""

import pytest
import torch

from devtms.data import DataKeys, FiniteBatches, FreshBatches, fixed_sets, sample_features
from devtms.rng import generator


def test_sparse_uniform_keeps_each_feature_with_probability_p():
    x = sample_features("sparse-uniform", 200_000, 5, 0.3, generator(0))
    nonzero = x != 0
    assert nonzero.float().mean().item() == pytest.approx(0.3, abs=0.005)
    kept = x[nonzero]
    assert kept.min() >= 0 and kept.max() < 1
    assert kept.mean().item() == pytest.approx(0.5, abs=0.01)  # U[0, 1)


@pytest.mark.parametrize("kind", ["single-feature", "one-hot-binary"])
def test_one_feature_per_sample_chosen_uniformly(kind):
    x = sample_features(kind, 60_000, 6, 1.0, generator(1))
    assert torch.equal((x != 0).sum(1), torch.ones(60_000, dtype=torch.long))
    counts = (x != 0).sum(0).float() / 60_000
    torch.testing.assert_close(counts, torch.full((6,), 1 / 6), atol=0.01, rtol=0)
    if kind == "one-hot-binary":
        assert set(x.unique().tolist()) == {0.0, 1.0}
    else:
        assert x.max() < 1 and x.sum(1).mean().item() == pytest.approx(0.5, abs=0.01)


def _finite(seeds, probs, N=50, B=16):
    keys = DataKeys(seeds, probs)
    sets = fixed_sets("sparse-uniform", keys, N, 4, "train")
    return FiniteBatches(sets, keys, B), keys.expand(sets)


def test_finite_batches_cover_each_sample_once_per_epoch():
    stream, train = _finite([3], [0.5], N=48, B=16)
    idx = torch.cat([stream.indices(step) for step in range(3)], dim=1)[0]
    assert sorted(idx.tolist()) == list(range(48))


def test_a_block_of_batches_is_the_batches_of_its_steps_across_epochs():
    stream, _ = _finite([0, 1], [0.5, 0.9], N=50, B=16)  # 50 / 16: batches straddle epochs
    block = stream.batches(2, 9)  # (9, instances, B, n)
    assert block.shape == (9, 2, 16, 4)
    for k in range(9):
        assert torch.equal(block[k], stream.batch(2 + k))


def test_batches_are_pure_functions_of_the_step():
    stream, _ = _finite([0, 1], [0.5, 0.5], N=50, B=16)
    later = stream.batch(7)
    _ = [stream.batch(s) for s in (0, 3, 12, 1)]
    assert torch.equal(stream.batch(7), later)
    fresh = FreshBatches("sparse-uniform", DataKeys([0, 1], [0.5, 0.9]), 8, 4)
    a = fresh.batch(130)
    _ = [fresh.batch(s) for s in (0, 64, 1)]
    assert torch.equal(fresh.batch(130), a)


def test_a_shard_of_instances_draws_what_the_whole_batch_draws():
    seeds, probs = [0, 1, 2, 0], [0.5, 0.5, 0.2, 0.2]
    whole, _ = _finite(seeds, probs)
    shard, _ = _finite(seeds[2:], probs[2:])
    for step in (0, 5, 9):
        assert torch.equal(whole.batch(step)[2:], shard.batch(step))
    whole_f = FreshBatches("single-feature", DataKeys(seeds, probs), 8, 4)
    shard_f = FreshBatches("single-feature", DataKeys(seeds[1:], probs[1:]), 8, 4)
    assert torch.equal(whole_f.batch(70)[1:], shard_f.batch(70))


def test_instances_sharing_seed_and_sparsity_share_data_others_do_not():
    _, train = _finite([0, 0, 1], [0.5, 0.5, 0.5])
    assert torch.equal(train[0], train[1])
    assert not torch.equal(train[0], train[2])
