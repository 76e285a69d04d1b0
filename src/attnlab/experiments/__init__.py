"""Paper experiments built on the lens (capture, metrics, interventions, pretrained loaders) and the training loop.

One module per experiment, each citing its paper and, where one exists, the authors' code:

- ``ablation``: head ablation (zero / mean) and head scaling on the copying probe (Olsson et al. 2022,
  arXiv:2209.11895);
- ``pear``: PEAR head re-weighting learned on a copying proxy (Tan et al. 2025, arXiv:2409.19745);
- ``act``: ACT attention calibration of hidden sinks (Yu et al. 2024, arXiv:2406.15765);
- ``kv_eviction``: StreamingLLM, H2O and a recent window under a KV-cache budget (arXiv:2309.17453,
  arXiv:2306.14048);
- ``longctx_kv``: every KV-cache policy of ``attnlab.longctx.kv`` (StreamingLLM, H2O, recent, SnapKV, PyramidKV,
  TOVA, Task-KV, Recycled Attention) on SmolLM2 at 2k–16k tokens: perplexity and passkey accuracy against
  compression ratio and time, as NVIDIA's kvpress reports them;
- ``rope_scaling``: PI, NTK, YaRN, ABF on SmolLM2 without fine-tuning;
- ``sinks``: does the first-token sink emerge with softmax and with sigmoid attention (Gu et al. 2025,
  arXiv:2410.10781);
- ``ioi``: the indirect-object-identification circuit found by patching and attribution (Wang et al. 2023,
  arXiv:2211.00593), on the prompt sets of ``prompts`` (built offline with the model's tokenizer);
- ``text``: the real text they run on (``pydoc_data.topics``), ``tables``: their table cells.

The dependency points one way: experiments import ``attnlab.lens`` and ``attnlab.train``; the lens never imports
an experiment. Modules are imported on use (``attnlab.experiments.pear``), so importing this package is cheap.
"""
