"""Export: the Hugging Face folder reloads as the original class with the module's logits."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3ForConditionalGeneration

from medkor.commands import export as export_command
from medkor.model import LoraOptions, MedGemmaModule
from medkor.model.export import export_folder


def _ids(tokenizer):
    enc = tokenizer([" 당뇨병성 신경병증 심근경색 <dx> 혈당7", " 항생제는 부작용을"], padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _perturb_lora(module):
    """Non-zero adapters, as after training (peft starts B at zero, a no-op)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in module.model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.05)


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_text_lora_export_reloads_with_same_logits(assets, tmp_path):
    module = MedGemmaModule(str(assets["text"]), str(assets["big_ext_tok"]), trainable="embeddings+lora",
                            lora=LoraOptions(r=4, alpha=8, dropout=0.0)).eval()
    _perturb_lora(module)
    ids, mask = _ids(module.tokenizer)
    expected = _logits(module.model, ids, mask)  # the call the evaluation callback makes
    export_folder(module.model, module.tokenizer, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()
    reloaded = Gemma3ForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.config.vocab_size == module.embedding_plan.rows_after
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    torch.testing.assert_close(_logits(reloaded, ids, mask), expected, rtol=1e-4, atol=1e-5)
    assert len(AutoTokenizer.from_pretrained(tmp_path / "out")) == len(module.tokenizer)


def test_multimodal_export_reloads_as_conditional_generation(assets, tmp_path):
    module = MedGemmaModule(str(assets["multimodal"]), str(assets["big_ext_tok"]), trainable="lora",
                            lora=LoraOptions(r=4, alpha=8, dropout=0.0)).eval()
    _perturb_lora(module)
    ids, mask = _ids(module.tokenizer)
    expected = _logits(module.model, ids, mask)
    export_folder(module.model, module.tokenizer, tmp_path / "mm", dtype=torch.bfloat16)
    reloaded = Gemma3ForConditionalGeneration.from_pretrained(tmp_path / "mm", dtype=torch.float32)
    assert reloaded.config.text_config.vocab_size == module.embedding_plan.rows_after
    assert reloaded.config.get_text_config().use_cache
    torch.testing.assert_close(_logits(reloaded, ids, mask), expected, rtol=0.05, atol=0.05)  # bf16 weights


def _config(tmp_path, assets, **model):
    lines = ["model:", f"  model_name_or_path: {assets['text']}", f"  tokenizer_path: {assets['ext_tok']}"]
    lines += [f"  {k}: {v}" for k, v in model.items()]
    lines += ["data:", f"  data_dir: {tmp_path}"]
    path = tmp_path / "run.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_export_command_without_checkpoint_writes_the_extended_base(assets, tmp_path, capsys):
    config = _config(tmp_path, assets, trainable="embeddings")
    assert export_command.main(["--config", str(config), "--out", str(tmp_path / "base-ext")]) == 0
    assert "wrote" in capsys.readouterr().out
    module = MedGemmaModule(str(assets["text"]), str(assets["ext_tok"]), trainable="embeddings").eval()
    # Loading the export with its own (extended) tokenizer: already sized, nothing re-initialised.
    again = MedGemmaModule(str(tmp_path / "base-ext"), trainable="embeddings").eval()
    assert not again.embedding_plan.extended and len(again.tokenizer) == len(module.tokenizer)
    ids, mask = _ids(module.tokenizer)
    torch.testing.assert_close(_logits(again.model, ids, mask), _logits(module.model, ids, mask), rtol=0, atol=1e-6)
    # The export records which rows are new, so `new_embeddings` can start from it.
    stage1 = MedGemmaModule(str(tmp_path / "base-ext"), trainable="new_embeddings")
    emb = stage1.hf_model.get_input_embeddings().weight
    emb.sum().backward()
    n_base = module.embedding_plan.n_base
    assert (emb.grad[:n_base] == 0).all() and (emb.grad[n_base:] != 0).all()


def test_export_command_loads_a_trainable_only_checkpoint(assets, tmp_path):
    module = MedGemmaModule(str(assets["text"]), str(assets["ext_tok"]), trainable="embeddings+lora",
                            lora=LoraOptions(r=4, alpha=8, dropout=0.0), save_trainable_only=True).eval()
    _perturb_lora(module)
    with torch.no_grad():
        module.hf_model.get_input_embeddings().weight[-40:] += 0.5
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "small.ckpt")
    ids, mask = _ids(module.tokenizer)
    expected = _logits(module.model, ids, mask)
    config = _config(tmp_path, assets, trainable="embeddings+lora", save_trainable_only="true")
    argv = ["--config", str(config), "--model.lora.r", "4", "--model.lora.alpha", "8",
            "--ckpt_path", str(tmp_path / "small.ckpt"), "--out", str(tmp_path / "out")]
    assert export_command.main(argv) == 0
    reloaded = Gemma3ForCausalLM.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(_logits(reloaded, ids, mask), expected, rtol=1e-4, atol=1e-5)


def test_export_command_reports_a_bad_checkpoint(assets, tmp_path, capsys):
    config = _config(tmp_path, assets, trainable="embeddings")
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    code = export_command.main(["--config", str(config), "--ckpt_path", str(tmp_path / "bad.ckpt"),
                                "--out", str(tmp_path / "x")])
    assert code == 1 and "medkor export: error" in capsys.readouterr().err
