"""The training shuffle is a function of (seed, epoch): a resumed run replays the right order."""

from __future__ import annotations

from medkor.data import MedKorDataModule
from medkor.data.sampler import EpochShuffleSampler


def _order(sampler: EpochShuffleSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_order_depends_on_epoch_only():
    continuous = EpochShuffleSampler(50, seed=7)
    orders = [_order(continuous, epoch) for epoch in range(3)]
    assert all(sorted(order) == list(range(50)) for order in orders)
    assert orders[0] != orders[1] != orders[2]
    resumed = EpochShuffleSampler(50, seed=7)  # a new process that resumes at epoch 2
    assert _order(resumed, 2) == orders[2]
    assert _order(EpochShuffleSampler(50, seed=8), 0) != orders[0]


def test_train_loader_shuffles_by_epoch_and_validation_keeps_order(data_dir, tokenizer_dir):
    dm = MedKorDataModule(data_dir=str(data_dir), tokenizer_path=str(tokenizer_dir), max_length=16, batch_size=2, seed=3)
    dm.prepare_data()
    dm.setup("fit")
    train = dm.train_dataloader()
    assert isinstance(train.sampler, EpochShuffleSampler)
    train.sampler.set_epoch(1)
    first = [b["input_ids"].tolist() for b in train]
    again = dm.train_dataloader()  # as after a resume
    again.sampler.set_epoch(1)
    assert [b["input_ids"].tolist() for b in again] == first
    val = dm.val_dataloader()
    assert [b["input_ids"].tolist() for b in val] == [b["input_ids"].tolist() for b in dm.val_dataloader()]
    assert not isinstance(val.sampler, EpochShuffleSampler)
