"""Atomic writes: a file is whole or absent, whatever moment a writer dies at."""

import stat

import pytest
import torch

from rlprune_core.export import save_weights
from rlprune_core.files import write_atomically
from rlprune_core.training import save_atomic


def test_two_writers_of_one_file_never_share_a_temporary_file(tmp_path):
    """A writer that lost its lease may still be writing while its successor writes the same file."""
    path = tmp_path / "state.json"
    temps = []

    def inner(tmp):
        temps.append(tmp)
        tmp.write_text("second")

    def outer(tmp):
        temps.append(tmp)
        tmp.write_text("first, half")
        write_atomically(path, inner)  # the other writer starts and finishes meanwhile
        tmp.write_text("first, whole")

    write_atomically(path, outer)
    assert temps[0] != temps[1]
    assert path.read_text() == "first, whole"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_text("complete")

    def fails(tmp):
        tmp.write_text("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, fails)
    assert path.read_text() == "complete" and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_weights_and_training_checkpoints_are_readable_and_leave_no_temporaries(tmp_path):
    save_weights(torch.nn.Linear(2, 2), tmp_path / "model.safetensors")
    save_atomic({"epoch": 1}, tmp_path / "pretrain-model.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "pretrain-model.pt"]
    assert stat.S_IMODE((tmp_path / "model.safetensors").stat().st_mode) == 0o644
    assert torch.load(tmp_path / "pretrain-model.pt", weights_only=True) == {"epoch": 1}
