"""SaveOnPreemption outside training: `validate`/`test` stop after the current batch on a signal, and a signal
ignored when the process started stays ignored (the fit cases, through the real CLI, are in tests/run/test_signals.py)."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest

from medkor.callbacks import KorMedMCQAEval
from medkor.callbacks.preemption import Preempted, SaveOnPreemption
from tests.callbacks.test_callback_kormedmcqa import TinyModule, loader, trainer


@pytest.fixture
def saved_handlers():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def _stub_trainer():
    return SimpleNamespace(strategy=SimpleNamespace(launcher=None),
                           _accelerator_connector=SimpleNamespace(cluster_environment=None))


def test_a_signal_ignored_at_start_stays_ignored_and_the_others_are_taken_over(saved_handlers):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a shell gives a job started with `&` from a script
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    saver = SaveOnPreemption()
    assert saver._install(_stub_trainer())
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    assert callable(signal.getsignal(signal.SIGTERM))
    saver._restore()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and signal.getsignal(signal.SIGINT) == signal.SIG_IGN


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_a_signal_during_a_standalone_kormedmcqa_evaluation_stops_it_after_the_current_batch(
    tmp_path, tokenizer, sample_dir, saved_handlers, stage
):
    module = TinyModule(tokenizer)
    evaluation = KorMedMCQAEval(source=str(sample_dir), subsets=["doctor", "nurse", "pharm"], batch_size=2)
    forwards = []

    def signal_in_the_evaluation(mod, args, kwargs):
        if not mod.training and len(args[0] if args else kwargs["input_ids"]) <= 2 and evaluation._running:
            forwards.append(1)
            if len(forwards) == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    module.model.register_forward_pre_hook(signal_in_the_evaluation, with_kwargs=True)
    run = trainer(tmp_path, 1, [SaveOnPreemption(), evaluation])
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with pytest.raises(Preempted) as info:
        getattr(run, stage)(module, loader(tokenizer))
    assert forwards == [1]  # 12 questions in batches of 2: stopped after the first of 6 batches
    assert info.value.exit_code == 128 + signal.SIGTERM and info.value.path is None
    assert "received SIGTERM: stopped after the current batch of a KorMedMCQA evaluation" in str(info.value)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # medkor's handler was taken off again
