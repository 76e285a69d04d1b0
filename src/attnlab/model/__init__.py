"""The Transformer (``transformer.py``), its config (``config.py``) and hook points (``hooks.py``)."""
