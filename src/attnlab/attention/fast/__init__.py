"""Fast paths of the score normalisers: chunked online kernels (``chunked``) and compiled FlexAttention (``flex``).

Every path here is checked against ``attnlab.attention.core.attend_reference`` (outputs and gradients).
"""
