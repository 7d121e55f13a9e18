"""MedGemmaModule builds its model in `configure_model`, once; options are checked before any loading."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from test_module_fit import packed_batches

import medkor.model.module as module_code
from medkor.model import MedGemmaModule
from medkor.model.module import fsdp_problem


@pytest.fixture
def builds(monkeypatch):
    """Calls of build_model, each with whether a Trainer was attached at the time."""
    calls = []
    real = module_code.build_model

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module_code, "build_model", counted)
    return calls


def _module(assets, **kw):
    seed_everything(0)
    return MedGemmaModule(str(assets["text"]), str(assets["ext_tok"]), **{"trainable": "full", **kw})


def test_construction_loads_nothing_and_first_use_builds_once(assets, builds):
    module = _module(assets)
    assert builds == [] and list(module.parameters()) == []
    tokenizer = module.tokenizer  # scripts and `medkor export` use the parts right away
    assert len(builds) == 1 and len(tokenizer) == module.embedding_plan.n_tokenizer
    module.configure_model()
    assert module.model is module.model and module.trainable_summary.startswith("Trainable params:")
    assert len(builds) == 1 and len(list(module.parameters())) > 0


def test_trainer_builds_the_model_once_in_configure_model(assets, builds, tmp_path, monkeypatch):
    tokenizer = _module(assets).tokenizer  # another module's, so the one trained stays unbuilt until fit
    module = _module(assets, learning_rate=1e-2)
    builds.clear()
    attached = []
    real_configure = MedGemmaModule.configure_model

    def watched(self):
        attached.append(self._trainer is not None)
        real_configure(self)

    monkeypatch.setattr(MedGemmaModule, "configure_model", watched)
    data = packed_batches(tokenizer, batches=2)
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      gradient_clip_val=1.0)
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data)
    assert len(builds) == 1 and attached and all(attached)  # built by Lightning's call, Trainer attached
    path = tmp_path / "fit.ckpt"
    trainer.save_checkpoint(path)
    trainer.validate(module, dataloaders=data, verbose=False)
    trainer.test(module, dataloaders=data, verbose=False)
    assert len(builds) == 1  # fit, then validate and test: the same model

    again = _module(assets, learning_rate=1e-2)
    builds.clear()
    result = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False).validate(again, dataloaders=data, ckpt_path=str(path), verbose=False)
    assert len(builds) == 1 and result
    for a, b in zip(module.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)  # built before restoring, then the checkpoint loaded into it


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"learning_rate": -1}, "model.learning_rate must be > 0, got -1"),
        ({"embedding_learning_rate": 0.0}, "model.embedding_learning_rate must be > 0 or null, got 0.0"),
        ({"min_learning_rate": 1.0}, "model.min_learning_rate must be in [0, learning_rate], got 1.0"),
        ({"weight_decay": -0.1}, "model.weight_decay must be >= 0, got -0.1"),
        ({"warmup_steps": -5}, "model.warmup_steps must be >= 0, got -5"),
        ({"warmup_ratio": 1.0}, "model.warmup_ratio must be in [0, 1) or null, got 1.0"),
        ({"adam_betas": (0.9, 1.0)}, "model.adam_betas must be two values in [0, 1), got (0.9, 1.0)"),
        ({"loss_chunk_size": 0}, "model.loss_chunk_size must be >= 1, got 0"),
        ({"pad_vocab_to_multiple_of": 0}, "model.pad_vocab_to_multiple_of must be >= 1 or null, got 0"),
        ({"peak_tflops": 0}, "model.peak_tflops must be > 0 or null, got 0"),
        ({"torch_dtype": "fp8"}, "model.torch_dtype 'fp8' is not one of float32, bfloat16, float16, auto"),
        ({"trainable": "everything"}, "model.trainable 'everything' is not one of new_embeddings, embeddings"),
        ({"new_token_init": "zeros"}, "model.new_token_init 'zeros' is not one of subword_mean, mean, random"),
        ({"lora": {"r": 0}}, "model.lora.r must be >= 1, got 0"),
        ({"lora": {"dropout": 1.0}}, "model.lora.dropout must be in [0, 1), got 1.0"),
    ],
)
def test_bad_options_are_one_line_errors_before_any_loading(assets, builds, kwargs, message):
    with pytest.raises(ValueError) as info:
        _module(assets, **kwargs)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert builds == []


def test_missing_local_folders_are_refused_before_loading(assets, builds, tmp_path):
    with pytest.raises(FileNotFoundError, match="model.model_name_or_path .*: no such folder"):
        MedGemmaModule(str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match=r"cannot load a tokenizer .*\(model.tokenizer_path\)"):
        MedGemmaModule(str(assets["text"]), "./absent/tokenizer")
    with pytest.raises(ValueError, match="adds no token to the checkpoint"):
        MedGemmaModule(str(assets["text"]), trainable="new_embeddings")
    assert builds == []
    MedGemmaModule("google/medgemma-4b-it", "tokenizers/medgemma-ko")  # hub ids, relative folders: not checked


def _attach(module, strategy):
    module._trainer = SimpleNamespace(strategy=strategy)  # what `setup` reads of a Trainer
    return module


def test_fsdp_refuses_what_it_cannot_run_before_loading(assets, builds):
    fsdp = FSDPStrategy()  # constructible without a GPU; a Trainer with it is not
    module = _attach(_module(assets, trainable="new_embeddings"), fsdp)
    with pytest.raises(ValueError) as info:
        module.setup("fit")
    text = str(info.value)
    assert "new_embeddings cannot train under FSDP" in text and "use trainable: embeddings under FSDP" in text
    assert "DDP or one GPU" in text and "\n" not in text
    module.setup("validate")  # nothing trains: the mask does not matter
    _attach(_module(assets, trainable="new_embeddings"), DDPStrategy()).setup("fit")

    half = _attach(_module(assets, torch_dtype="bfloat16"), fsdp)
    with pytest.raises(ValueError, match="model.torch_dtype: bfloat16 cannot be used under FSDP.*float32"):
        half.setup("validate")
    partial = _attach(_module(assets, save_trainable_only=True), fsdp)
    with pytest.raises(ValueError, match="save_trainable_only: true is not supported under FSDP"):
        partial.setup("fit")
    _attach(_module(assets), fsdp).setup("fit")  # full, float32: fine
    assert builds == []
    assert fsdp_problem(_module(assets, trainable="embeddings+lora").hparams, training=True) is None
