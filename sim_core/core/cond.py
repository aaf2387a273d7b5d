"""Conditioning is opaque to the core: whatever a testbed draws with a batch (one-hot class labels today, text
embeddings with their masks tomorrow) reaches the networks as ``cond`` unopened. The core only needs to cut it like
the batch: a tensor, None, or any object with ``__getitem__(slice)`` over its first (batch) dimension."""
from __future__ import annotations


def take(cond, part: slice):
    """The conditioning of the samples ``part`` of a batch (None stays None)."""
    return None if cond is None else cond[part]
