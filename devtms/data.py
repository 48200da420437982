"""Feature generators and the batched data streams of a run.

Three generators (docs/science.md, the setups), each returning `(samples, n)`:

- sparse-uniform: each feature independently U[0, 1) with probability p = 1 - S, else 0
- single-feature: one feature, chosen uniformly, with magnitude U[0, 1); the others 0
- one-hot-binary: one feature, chosen uniformly, set to 1

A run's data depends only on each instance's (seed, sparsity): instances that differ only
in activation or importance see identical samples (common random numbers, so comparisons
across activations are paired). Streams are stateless in the step: `batch(step)` is a pure
function of the step, which is what makes resume exact and sharding free.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from devtms.rng import generator

if TYPE_CHECKING:
    import pandas as pd

    from devtms.config import RunConfig

Tensor = torch.Tensor

# Fresh-data runs draw this many steps' batches at once per data key (amortises the RNG calls).
# It depends only on (batch_size, n) so a shard of a run draws the same numbers as the whole run.
_BLOCK_FLOATS = 2**20


def sample_features(
    kind: str, samples: int, n: int, feature_probability: float, gen: torch.Generator
) -> Tensor:
    """Draw `(samples, n)` feature vectors from one of the three generators."""
    if kind == "sparse-uniform":
        values, keep = torch.rand((2, samples, n), generator=gen)
        return values * (keep < feature_probability)
    index = torch.randint(n, (samples,), generator=gen)
    if kind == "single-feature":
        magnitude = torch.rand((samples,), generator=gen)
    elif kind == "one-hot-binary":
        magnitude = torch.ones(samples)
    else:
        raise ValueError(f"unknown data kind {kind!r}")
    x = torch.zeros(samples, n)
    x[torch.arange(samples), index] = magnitude
    return x


class DataKeys:
    """Maps instances to the distinct (seed, feature_probability) pairs that determine their data.

    keys: the distinct pairs; index: (instances,) position of each instance's pair in `keys`.
    """

    def __init__(self, seeds: Sequence[int], feature_probabilities: Sequence[float]):
        pairs = list(zip((int(s) for s in seeds), (float(p) for p in feature_probabilities),
                         strict=True))
        self.keys: list[tuple[int, float]] = list(dict.fromkeys(pairs))
        position = {k: i for i, k in enumerate(self.keys)}
        self.index = torch.tensor([position[p] for p in pairs], dtype=torch.long)

    def expand(self, per_key: Tensor) -> Tensor:
        """(keys, ...) -> (instances, ...)"""
        return per_key.index_select(0, self.index)


def fixed_sets(kind: str, keys: DataKeys, samples: int, n: int, purpose: str) -> Tensor:
    """A fixed set of `samples` per data key, e.g. the finite training set. -> (keys, samples, n)

    `purpose` ("train", "eval", "llc") keys the random stream, so the sets are independent.
    Expand to instances with `keys.expand`.
    """
    return torch.stack([
        sample_features(kind, samples, n, p, generator(seed, "data", purpose, kind, samples, n))
        for seed, p in keys.keys
    ])  # the stream ignores p: sparsities of one seed share draws (nested masks)


class _BlockedBatches:
    """A stream that makes the batches of K consecutive steps at a time, per data key, and hands
    them out one step at a time (one draw or gather per block instead of one per step).
    K = `block_steps`, which depends only on (batch_size, n)."""

    def __init__(self, keys: DataKeys, batch_size: int, n: int):
        self.keys, self.batch_size, self.n = keys, batch_size, n
        self.block_steps = max(1, min(64, _BLOCK_FLOATS // (batch_size * n)))
        self._block_id = -1
        self._block: Tensor | None = None  # (keys, K, B, n)

    def batch(self, step: int) -> Tensor:
        """(instances, B, n)"""
        block_id, offset = divmod(step, self.block_steps)
        if block_id != self._block_id:
            self._block = self._make_block(block_id)
            self._block_id = block_id
        return self.keys.expand(self._block[:, offset])

    def _make_block(self, block_id: int) -> Tensor:
        """The batches of steps [block_id K, (block_id + 1) K). -> (keys, K, B, n)"""
        raise NotImplementedError


class FiniteBatches(_BlockedBatches):
    """Minibatches drawn from a fixed training set, stateless in the step.

    The sample order of a seed is the concatenation of independent permutations of the N
    samples, one per epoch, seeded by (seed, epoch); step t takes positions [tB, (t+1)B).
    Batches may straddle an epoch boundary, so every batch has exactly B samples.
    """

    def __init__(self, train_sets: Tensor, keys: DataKeys, batch_size: int):
        super().__init__(keys, batch_size, train_sets.shape[2])
        self.train_sets = train_sets  # (keys, N, n)
        self.key_seeds = [seed for seed, _ in keys.keys]
        self._perms: dict[int, Tensor] = {}  # epoch -> (keys, N)

    def _epoch_perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            n_samples = self.train_sets.shape[1]
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            per_seed = {
                seed: torch.randperm(n_samples, generator=generator(seed, "batches", epoch))
                for seed in dict.fromkeys(self.key_seeds)
            }
            self._perms[epoch] = torch.stack([per_seed[s] for s in self.key_seeds])
        return self._perms[epoch]

    def indices(self, step: int, count: int = 1) -> Tensor:
        """(keys, count * B) sample indices of the batches at steps [step, step + count)."""
        n_samples = self.train_sets.shape[1]
        positions = torch.arange(step * self.batch_size, (step + count) * self.batch_size)
        epochs = positions // n_samples
        columns = [
            self._epoch_perm(epoch)[:, positions[epochs == epoch] % n_samples]
            for epoch in torch.unique(epochs).tolist()
        ]
        return torch.cat(columns, dim=1)

    def batches(self, step: int, count: int) -> Tensor:
        """The batches of steps [step, step + count) at once. -> (count, instances, B, n)"""
        return self.keys.expand(self._per_key(step, count)).transpose(0, 1)

    def _make_block(self, block_id: int) -> Tensor:
        return self._per_key(block_id * self.block_steps, self.block_steps)

    def _per_key(self, step: int, count: int) -> Tensor:
        """-> (keys, count, B, n)"""
        idx = self.indices(step, count)  # (keys, count * B)
        per_key = torch.stack([self.train_sets[k, idx[k]] for k in range(len(self.key_seeds))])
        return per_key.unflatten(1, (count, self.batch_size))


class FreshBatches(_BlockedBatches):
    """Fresh samples every step, stateless in the step.

    Per data key, the batches of steps [kK, (k+1)K) are drawn together from a generator
    seeded by (seed, block k).
    """

    def __init__(self, kind: str, keys: DataKeys, batch_size: int, n: int):
        super().__init__(keys, batch_size, n)
        self.kind = kind

    def _make_block(self, block_id: int) -> Tensor:
        k, b = self.block_steps, self.batch_size
        return torch.stack([
            sample_features(
                self.kind, k * b, self.n, p, generator(seed, "fresh", self.kind, b, block_id)
            ).view(k, b, self.n)
            for seed, p in self.keys.keys
        ])


def importance_weights(ratios: Sequence[float], n: int) -> Tensor:
    """I_i = r^i for each instance's ratio r. -> (instances, n)"""
    r = torch.tensor([float(x) for x in ratios], dtype=torch.float64)[:, None]
    return (r ** torch.arange(n, dtype=torch.float64)).float()


# ---------------------------------------------------------------------------------------------
# The datasets of a run


def llc_data(config: RunConfig, instances: pd.DataFrame) -> Tensor:
    """The fixed set each instance's LLC is measured on. -> (I, N, n)

    Finite-data runs: the training set itself (identical to what training drew from).
    Fresh-data runs: a fixed sample of llc.n_samples from the same distribution.
    """
    d, n = config.data, config.model.n_features
    keys = DataKeys(instances["seed"], instances["feature_probability"])
    if d.finite:
        return keys.expand(fixed_sets(d.kind, keys, d.n_samples, n, "train"))
    return keys.expand(fixed_sets(d.kind, keys, config.llc.n_samples, n, "llc"))


def training_data(config: RunConfig, instances: pd.DataFrame) -> tuple[FiniteBatches |
                                                                       FreshBatches, Tensor]:
    """The batch stream and the fixed set the logged loss is measured on. -> (stream, (I, S, n))"""
    d, n = config.data, config.model.n_features
    keys = DataKeys(instances["seed"], instances["feature_probability"])
    if d.finite:
        train_sets = fixed_sets(d.kind, keys, d.n_samples, n, "train")  # (keys, N, n)
        stream = FiniteBatches(train_sets, keys, config.train.batch_size)
        return stream, keys.expand(train_sets)
    stream = FreshBatches(d.kind, keys, config.train.batch_size, n)
    return stream, keys.expand(fixed_sets(d.kind, keys, d.eval_samples, n, "eval"))
