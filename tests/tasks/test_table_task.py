"""The table task: the answer is the asked column read top to bottom, and in column-major table positions (2D-TPE)
every scored position reads its cell at a distance fixed by the column."""

from __future__ import annotations

import torch

from attnlab.position.tpe2d import column_major_positions
from attnlab.tasks import IGNORE, task_from_dict


def test_the_answer_is_the_asked_column_top_to_bottom() -> None:
    config = task_from_dict({"name": "table", "rows": 3, "cols": 4, "vocab": 5})
    batch = config.build(0).train_batch(0, 16)
    assert config.seq_len == 3 * 4 + 1 + 3 and config.vocab_size == 4 + 5
    for inputs, targets in zip(batch.inputs, batch.targets, strict=True):
        table, column = inputs[:12].view(3, 4), int(inputs[12])
        assert 0 <= column < 4 and bool((table >= 4).all())  # column tokens and content never mix
        assert torch.equal(inputs[13:], table[:, column])  # teacher-forced answer
        assert torch.equal(targets[12:15], table[:, column]) and bool((targets[:12] == IGNORE).all())
        assert int(targets[15]) == IGNORE  # the last cell predicts nothing


def test_column_major_positions_put_each_read_cell_at_a_distance_fixed_by_the_column() -> None:
    rows, cols = 3, 4
    positions = torch.arange(rows * cols + 1 + rows)
    col_order = column_major_positions(positions, rows, cols, start=0)
    for c in range(cols):
        row_major, column_major = set(), set()
        for r in range(rows):
            query, cell = rows * cols + r, r * cols + c  # scored position, the cell it must read
            row_major.add(int(positions[query] - positions[cell]))
            column_major.add(int(col_order[query] - col_order[cell]))
        assert column_major == {rows * (cols - c)}
        assert len(row_major) == rows  # a different distance for every row
