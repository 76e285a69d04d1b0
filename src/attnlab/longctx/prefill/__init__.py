"""Sparse prefill: which key blocks each query block computes, and the block-sparse kernel that skips the rest.

- ``layout``: the common representation (``BlockLayout``: per head and query block, key blocks and single columns
  besides the causal diagonal block) and its dense reference (mask → masked softmax);
- ``a_shape``, ``vertical_slash``, ``block_topk``: MInference's three head types (Jiang et al. 2024,
  arXiv:2407.02490); ``hip``: HiP's hierarchical top-k (Lee et al. 2024, arXiv:2406.09827);
- ``search``: MInference's offline per-head pattern search; ``patterns``: one pattern at one key budget;
- ``apply``: a model's prefill under a pattern, through hook points.

The kernel is ``attnlab.attention.fast.block_sparse``. docs/longctx.md has the formulas and the measurements.
"""
