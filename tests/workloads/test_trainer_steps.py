"""How many steps a run takes, fresh, resumed, and resumed at another world size (elastic)."""

from __future__ import annotations

from typing import Any

import pytest

from lepton.api.trainingjob import Hyperparameters
from lepton.workloads.trainer.train import total_steps

EPOCHS2 = Hyperparameters(epochs=2)
ROWS = 400  # 25 steps an epoch at 16 rows a step (world 2 x batch 8), 50 at 8 (world 1)


@pytest.mark.parametrize(
    ("name", "hp", "step", "at", "per_step", "world", "saved", "total"),
    [
        ("maxSteps wins", Hyperparameters(max_steps=7, epochs=2), 3, (0, 48), 16, 2, {}, 7),
        ("fresh: epochs x steps per epoch", EPOCHS2, 0, (0, 0), 16, 2, {}, 50),
        ("resumed at the same world: the saved total", EPOCHS2, 20, (0, 320), 16, 2,
         {"world_size": 2, "total": 50}, 50),
        ("the world shrank: the rest of the data at the new step size", EPOCHS2, 20, (0, 320), 8, 1,
         {"world_size": 2, "total": 50}, 20 + 60),
        ("resumed again at the shrunk world: the total it ran with", EPOCHS2, 70, (1, 400 - 80), 8, 1,
         {"world_size": 1, "total": 80}, 80),
        ("the world grew in the last epoch", EPOCHS2, 45, (1, 200), 16, 2, {"world_size": 1, "total": 90}, 45 + 13),
        ("past the end already", EPOCHS2, 50, (2, 0), 8, 1, {"world_size": 2, "total": 50}, 50),
    ],
)  # fmt: skip
def test_total_steps(name: str, hp: Hyperparameters, step: int, at: tuple[int, int], per_step: int, world: int,
                     saved: dict[str, Any], total: int) -> None:  # fmt: skip
    assert total_steps(hp, step=step, at=at, rows=ROWS, per_step=per_step, world=world, saved=saved) == total, name
