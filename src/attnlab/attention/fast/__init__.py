"""Fast paths, one file per form; each computes, and the dispatch table (``attnlab.attention.dispatch``) chooses.

- tiles of scores for the score normalisers: ``tiling`` (the problem and the ``Rule`` interface), one rule per
  file (``rule_softmax``, ``rule_pointwise``, ``rule_softplus``, ``rule_clipped``), ``chunked`` (the autograd
  Function and entry points) and ``native`` (the same rules compiled for CPU);
- PyTorch's fused SDPA by exact reformulation: ``sdpa_variants`` (the overview and ``softmax_sdpa``), ``sdpa_flash``,
  ``sdpa_augmented``, ``sdpa_alibi``, ``sdpa_sinks``, ``sdpa_relative``, ``sdpa_band``, ``sdpa_documents``;
- compiled FlexAttention: ``flex``.

These modules take tensors and typed values (``attnlab.types``) only: no position entry, normaliser or heads module
(an import-linter contract in pyproject.toml). Every path is checked against
``attnlab.attention.core.attend_reference`` (outputs and gradients).
"""
