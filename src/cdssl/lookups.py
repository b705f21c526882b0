"""Whether a pretraining learned: its validation loss against the lookup references' (no torch needed).

cdssl.references computes the references (reference.json); this module only reads them,
so the documents and comparisons can judge a run without importing the training stack.
"""

from __future__ import annotations

from collections.abc import Mapping

# the lookup tables' losses in reference.json: pretraining that is not below the lower of
# them learned nothing a table of lengths (overall, or per element pair) does not hold
LOOKUPS = ("val_loss_lookup_noisy_length", "val_loss_lookup_element_pair")


def best_lookup(reference: Mapping[str, float]) -> float:
    """The lower of the lookups' validation losses (:data:`LOOKUPS`)."""
    return min(reference[key] for key in LOOKUPS)


def pretext_learned(val_loss: float, reference: Mapping[str, float]) -> bool:
    """Whether a pretraining run's validation loss is below the lower lookup's."""
    return val_loss < best_lookup(reference)
