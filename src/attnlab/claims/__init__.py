"""Claims: each source paper's headline claim, put to the test at CPU scale, with a verdict.

``attnlab.claims.papers`` holds one module per paper: the paper, its claim in one sentence (a paraphrase, with
the section or figure), the experiment that tests it (a sweep run by the runner, or a function such as a lens
experiment on SmolLM2), and the verdict rule fixed before it runs (``attnlab.claims.verdict``: the quantity, the
direction, the margin, the seeds, the interval). ``attnlab claims list | run | report`` is the command line.
"""
