"""Datasets for training and evaluation: the H3 synthetic tasks, byte-level text, JSONL.

- :mod:`h3lab.data.config` — :class:`TaskConfig`, the dataset section of a run's config (pure
  Python; :mod:`h3lab.config` re-exports it).
- :mod:`h3lab.data.datasets` — :class:`TokenDataset` and :func:`make_datasets` (torch).
- :mod:`h3lab.data.synthetic`, :mod:`~h3lab.data.text`, :mod:`~h3lab.data.jsonl` — the sources.

The package imports nothing from above it (not :mod:`h3lab.config`, not Django). This file
imports nothing at all, so reading the config does not load torch.
"""
