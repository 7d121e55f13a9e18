"""Loading refuses checkpoints whose weights would come back random."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Gemma3ForCausalLM, Gemma3ForConditionalGeneration

from medkor.model.loading import WeightLoadingError, check_loading_info, load_model, resolve_dtype


def test_picks_the_class_that_owns_every_weight(assets):
    assert isinstance(load_model(str(assets["text"])), Gemma3ForCausalLM)
    model = load_model(str(assets["multimodal"]), torch_dtype="bfloat16")
    assert isinstance(model, Gemma3ForConditionalGeneration)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.config.get_text_config().use_cache is False  # a KV cache would disable packed masks


def test_multimodal_checkpoint_in_text_class_is_refused(assets):
    _, info = Gemma3ForCausalLM.from_pretrained(assets["multimodal"], output_loading_info=True)
    with pytest.raises(WeightLoadingError, match=r"missing from the checkpoint \(newly initialised\).*embed_tokens"):
        check_loading_info(info, str(assets["multimodal"]))


def test_checkpoint_missing_a_weight_is_refused(assets, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(assets["text"], folder)
    weights = load_file(folder / "model.safetensors")
    del weights["model.layers.1.mlp.down_proj.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightLoadingError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        load_model(str(folder))


def test_unknown_dtype_is_refused():
    assert resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="torch_dtype 'fp8'"):
        resolve_dtype("fp8")


def test_missing_tokenizer_folder_is_a_clear_error(assets, tmp_path):
    from medkor.model import MedGemmaModule

    with pytest.raises(OSError, match="cannot load a tokenizer"):
        MedGemmaModule(str(assets["text"]), str(tmp_path / "nope"))
