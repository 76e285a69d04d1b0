"""Prompt sets for the circuit experiments, built offline from templates and a model's own tokenizer.

A prompt set is data: templates, word lists and a seed, turned into token ids by whatever tokenizer the model
brings (``encode(text)`` returning a list of ids or an object with ``.ids``, as ``tokenizers.Tokenizer`` does).

- ``ioi``: indirect object identification (Wang et al. 2023, arXiv:2211.00593), ABBA and BABA orders, single-token
  names, and the ABC and S2-flip corruptions.
- ``recall``: counterfactual factual recall ("The capital of Poland is London. The capital of Poland is"), memory
  against context answers over several relations.
- ``mcq``: multiple-choice questions, each in four rotations that move the answer across A–D.
"""
