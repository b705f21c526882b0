"""The pretext task's answers that need no learning, and how much of the network's output
they explain: to pretraining what cdssl.baselines is to fine-tuning.

A pretrained network is only worth its epochs below these: the shaken crystal's own
standardised lengths, each graph's mean length, and lookup tables of the noisy length
(overall and per element pair) fitted on the training split.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader
from torchmetrics import Metric

from .graphs import GraphBatch
from .pretext import denoising_target, edge_lengths, perturb, standardise_per_graph, validation_generator
from .training import step_generator


def no_learning_reference(val_loader: DataLoader, sigma: float, val_seed: int) -> dict[str, float]:
    """Validation loss of two answers that need no training, on the validation noise.

    ``noisy_distances``: the standardised edge lengths of the shaken crystal itself, what
    the input already says; ``zeros``: each graph's mean distance. A pretrained network
    is only worth its epochs below the first.
    """
    se_noisy = se_zero = n = 0.0
    for batch_idx, batch in enumerate(val_loader):
        target = denoising_target(batch)
        shaken = perturb(batch.pos, sigma, validation_generator(batch.pos.device, val_seed, batch_idx))
        noisy = standardise_per_graph(edge_lengths(shaken, batch), batch.edge_batch, batch.num_graphs)
        se_noisy += float(((noisy - target) ** 2).sum())
        se_zero += float((target**2).sum())
        n += target.numel()
    return {"val_loss_noisy_distances": se_noisy / n, "val_loss_zeros": se_zero / n, "sigma": sigma, "n_edges": int(n)}


# Bins of the per-graph-standardised noisy length, for the lookup references and for the
# share of the network's output a lookup explains: 0.1 wide over [-4, 4], plus two tails.
LOOKUP_EDGES = torch.linspace(-4.0, 4.0, 81)


PAIR_PRIOR = 20.0


def lookup_bin(noisy: torch.Tensor) -> torch.Tensor:
    return torch.bucketize(noisy, LOOKUP_EDGES.to(noisy.device, noisy.dtype))


def pair_key(batch: GraphBatch, n_types: int = 128) -> torch.Tensor:
    """Each edge's unordered element pair as one integer."""
    src, dst = batch.edge_index
    a, b = batch.node_type[src].long(), batch.node_type[dst].long()
    return torch.minimum(a, b) * n_types + torch.maximum(a, b)


def _noisy_standardised(batch: GraphBatch, sigma: float, generator: torch.Generator) -> torch.Tensor:
    shaken = perturb(batch.pos, sigma, generator)
    return standardise_per_graph(edge_lengths(shaken, batch), batch.edge_batch, batch.num_graphs)


def lookup_references(train_loader: DataLoader, val_loader: DataLoader, sigma: float, seed: int) -> dict[str, float]:
    """Validation loss of two lookup tables fitted on the training split: the mean target
    per bin of the standardised noisy length, and the same per element pair, each (pair,
    bin) mean shrunk towards the bin's mean by :data:`PAIR_PRIOR` edges (a pair or bin
    never seen in training falls back to the first table, an unseen bin to its centre). What a network must beat
    to have learned more than "read the noisy length, correct its average bias".

    The training noise is one draw per training graph (generator keyed by the seed and
    batch, independent of the training run's own draws); the validation noise is the
    very noise the network's validation loss uses.
    """
    nb = len(LOOKUP_EDGES) + 1
    s_bin, n_bin = torch.zeros(nb, dtype=torch.float64), torch.zeros(nb, dtype=torch.float64)
    pair_sums: dict[int, torch.Tensor] = {}
    for batch_idx, batch in enumerate(train_loader):
        target = denoising_target(batch).double()
        bins = lookup_bin(_noisy_standardised(batch, sigma, step_generator(batch.pos.device, seed, -1, batch_idx)))
        s_bin.index_add_(0, bins, target)
        n_bin.index_add_(0, bins, torch.ones_like(target))
        keys = pair_key(batch) * nb + bins
        uniq, inverse = torch.unique(keys, return_inverse=True)
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, target)
        counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(target))
        for k, sv, cv in zip(uniq.tolist(), sums.tolist(), counts.tolist(), strict=True):
            acc = pair_sums.setdefault(k, torch.zeros(2, dtype=torch.float64))
            acc += torch.tensor([sv, cv], dtype=torch.float64)
    # a bin no training edge fell in answers its own centre: the noisy length as read
    edges = LOOKUP_EDGES.double()
    centres = torch.cat([edges[:1] - 0.05, (edges[1:] + edges[:-1]) / 2, edges[-1:] + 0.05])
    by_bin = torch.where(n_bin > 0, s_bin / n_bin.clamp(min=1), centres)
    # a (pair, bin) cell seen a few times is mostly noise: its mean is shrunk towards the
    # bin's mean with the weight of PAIR_PRIOR edges (an empirical-Bayes average), which
    # keeps the table from doing worse than the binned lookup on a pool of many elements
    by_pair = {k: float((v[0] + PAIR_PRIOR * by_bin[k % nb]) / (v[1] + PAIR_PRIOR)) for k, v in pair_sums.items()}
    se_bin = se_pair = n = 0.0
    for batch_idx, batch in enumerate(val_loader):
        target = denoising_target(batch).double()
        bins = lookup_bin(_noisy_standardised(batch, sigma, validation_generator(batch.pos.device, seed, batch_idx)))
        pred_bin = by_bin[bins]
        keys = (pair_key(batch) * nb + bins).tolist()
        pred_pair = torch.tensor([by_pair.get(k, float("nan")) for k in keys], dtype=torch.float64)
        pred_pair = torch.where(pred_pair.isnan(), pred_bin, pred_pair)
        se_bin += float(((pred_bin - target) ** 2).sum())
        se_pair += float(((pred_pair - target) ** 2).sum())
        n += target.numel()
    return {"val_loss_lookup_noisy_length": se_bin / n, "val_loss_lookup_element_pair": se_pair / n}


def lookup_share(s: dict) -> float:
    """Share of the variance of the network's validation outputs that their mean per bin
    of the noisy length explains (between-bin / total sum of squares): near 1, the
    encoder does little more than copy its input."""
    if "bin_n" not in s:
        return float("nan")
    n, s1, s2 = (torch.as_tensor(s[k], dtype=torch.float64) for k in ("bin_n", "bin_s", "bin_ss"))
    total = float(s2.sum() - s1.sum() ** 2 / n.sum())
    within = float((s2 - torch.where(n > 0, s1**2 / n.clamp(min=1), torch.zeros_like(s1))).sum())
    return 1.0 - within / total if total > 0 else float("nan")


class LookupShare(Metric):
    """:func:`lookup_share` of an epoch's validation outputs, as a torchmetrics Metric:
    per bin of the noisy length the count, sum and sum of squares of the outputs,
    summed over batches and DDP ranks."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        for name in ("bin_n", "bin_s", "bin_ss"):
            self.add_state(name, torch.zeros(len(LOOKUP_EDGES) + 1, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, bins: torch.Tensor) -> None:
        p = pred.detach().double()
        self.bin_n += torch.zeros_like(self.bin_n).index_add(0, bins, torch.ones_like(p))
        self.bin_s += torch.zeros_like(self.bin_s).index_add(0, bins, p)
        self.bin_ss += torch.zeros_like(self.bin_ss).index_add(0, bins, p * p)

    def compute(self) -> torch.Tensor:
        share = lookup_share({"bin_n": self.bin_n, "bin_s": self.bin_s, "bin_ss": self.bin_ss})
        return torch.tensor(share, dtype=torch.float64)
