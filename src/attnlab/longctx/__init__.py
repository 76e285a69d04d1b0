"""Long-context inference on attnlab models and the pretrained ones the lens loads.

Two families of training-free methods, each a library of pure pieces that ``attnlab.experiments`` and the CLI use:

- ``attnlab.longctx.prefill``: sparse prefill patterns (which key blocks each query block computes);
- ``attnlab.longctx.kv``: KV-cache policies (which tokens each layer and head keeps, at prefill and while decoding).

The package sits beside the lens: it knows the model and the attention core, never the lens, runner or CLI.
"""
