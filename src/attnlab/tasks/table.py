"""Reading a column of a table: a synthetic table task for two-dimensional table positions (2D-TPE: Li et al.,
"2D-TPE: Two-Dimensional Positional Encoding Enhances Table Understanding for Large Language Models", 2024,
arXiv:2409.19700, which argues that flattening a table row by row loses its columns).

A sequence is a ``rows × cols`` table of random content tokens flattened row by row from position 0 (one token per
cell), then a column token naming a column c, then that column's cells from top to bottom (teacher-forced)::

    t(0,0) … t(0,C−1)  t(1,0) … t(R−1,C−1)  COL_c  t(0,c) t(1,c) … t(R−1,c)

Tokens 0 … cols − 1 are the column tokens, content is drawn uniformly with replacement from cols … cols + vocab − 1.
Scored: the R positions that predict the column (the column token → t(0,c), each t(r,c) → t(r+1,c)); the last
cell's prediction is not scored. Metric: the loop's cross-entropy and per-cell accuracy.

Why it separates the two encodings: the scored position R·C + r (the column token for r = 0) reads cell (r, c). In
row-major order that cell is R·C − c − r·(C − 1) positions back, a distance that changes with the row reached; in
column-major order (``tpe2d`` with these ``rows`` and ``cols`` and ``start`` = 0) the cells of a column are contiguous
and the distance is R·(C − c) for every row, fixed by the column alone.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from attnlab.tasks.base import IGNORE, TASKS, Batch, Task, TaskConfig


class TableConfig(TaskConfig):
    name: Literal["table"] = "table"
    rows: int = Field(6, gt=1)
    cols: int = Field(6, gt=1)
    vocab: int = Field(16, gt=1)  # content tokens

    @property
    def vocab_size(self) -> int:
        return self.cols + self.vocab

    @property
    def seq_len(self) -> int:
        return self.rows * self.cols + 1 + self.rows

    def build(self, seed: int) -> Table:
        return Table(self, seed)


TASKS.register(
    "table",
    summary="read one column of a row-major flattened table (the column token, then its cells top to bottom)",
    paper="Li et al. 2024, arXiv:2409.19700",
)(TableConfig)


class Table(Task):
    config: TableConfig

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        c = self.config
        cells = torch.randint(c.cols, c.cols + c.vocab, (n, c.rows, c.cols), generator=generator)
        column = torch.randint(0, c.cols, (n,), generator=generator)
        answer = cells.gather(2, column[:, None, None].expand(n, c.rows, 1))[:, :, 0]  # [n, rows]: t(r, c)
        size = c.rows * c.cols
        inputs = torch.cat([cells.reshape(n, size), column[:, None], answer], dim=1)
        targets = torch.full_like(inputs, IGNORE)
        targets[:, size : size + c.rows] = answer  # COL_c → t(0, c), t(r, c) → t(r + 1, c)
        return Batch(inputs, targets)
