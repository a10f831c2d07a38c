"""Work done in rank 0 and shared: results and errors reach every process (no rank left waiting)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from lit_vision.errors import DataError
from lit_vision.ranks import on_rank_zero


class _Strategy:
    """Stands in for the broadcast: what rank 0 sent, as every other rank receives it."""

    def __init__(self, sent: Any = None) -> None:
        self.sent = sent

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        return obj if self.sent is None else self.sent


def _trainer(rank: int, sent: Any = None) -> SimpleNamespace:
    return SimpleNamespace(world_size=2, global_rank=rank, strategy=_Strategy(sent))


def test_single_process_just_runs() -> None:
    assert on_rank_zero(None, lambda: 3) == 3


def test_only_rank_zero_works_and_everyone_gets_its_result() -> None:
    calls: list[int] = []
    assert on_rank_zero(_trainer(0), lambda: calls.append(0) or "scan") == "scan"
    assert on_rank_zero(_trainer(1, sent=("scan", None)), lambda: calls.append(1)) == "scan"
    assert calls == [0]  # rank 1 never scanned


def test_errors_reach_every_rank() -> None:
    def bad() -> None:
        raise DataError("2 problem(s) in /data")

    with pytest.raises(DataError, match="problem"):
        on_rank_zero(_trainer(0), bad)
    with pytest.raises(DataError, match=r"^2 problem\(s\) in /data$"):
        on_rank_zero(_trainer(1, sent=(None, (True, "2 problem(s) in /data"))), bad)
    with pytest.raises(RuntimeError, match="rank 0 failed"):
        on_rank_zero(_trainer(1, sent=(None, (False, "disk on fire"))), bad)
