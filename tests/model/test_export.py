"""Export: the Hugging Face folder reloads as the original class with the module's logits."""

from __future__ import annotations

import re

import pytest
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


def _earlier_export(out, user_file=True):
    """A folder as an earlier export left it, with a file of the user's beside it."""
    out.mkdir()
    (out / "config.json").write_text('{"old": true}')
    (out / "model.safetensors").write_bytes(b"old weights")
    (out / ".medkor-export.json").write_text('{"files": ["config.json", "model.safetensors"]}\n')
    if user_file:
        (out / "README.md").write_text("my notes")
    return {p.name: p.read_bytes() for p in out.iterdir()}


def test_a_full_disk_during_the_export_is_one_line_naming_the_folder_and_the_old_export_stays(
    assets, tmp_path, capsys, monkeypatch
):
    import transformers.modeling_utils as modeling_utils
    from safetensors import SafetensorError

    def full_disk(*args, **kwargs):  # what safetensors raises when the write hits ENOSPC
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(modeling_utils, "safe_save_file", full_disk)
    out = tmp_path / "export"
    before = _earlier_export(out)
    config = _config(tmp_path, assets, trainable="embeddings")
    assert export_command.main(["--config", str(config), "--out", str(out), "--overwrite"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"medkor export: error: --out {out}: no space left on the device while writing the export")
    assert re.search(r"\(\d+(\.\d)? (B|KiB|MiB|GiB|TiB) free on the file system of ", err), err
    assert f"{out} is unchanged" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []


def test_too_little_free_space_is_refused_before_writing_in_readable_units(assets, tmp_path, capsys, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 3000, 3000))
    config = _config(tmp_path, assets, trainable="embeddings")
    assert export_command.main(["--config", str(config), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert re.search(r"--out \S+/x: the export needs about \d+\.\d KiB and only 2\.9 KiB is free on the file system "
                     r"of \S+; free space or choose --out on a larger disk", err), err
    assert "0.00 GiB" not in err and not (tmp_path / "x").exists()


def test_a_symbolic_link_or_the_working_folder_as_out_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  model_name_or_path: nowhere\n")
    monkeypatch.chdir(real)
    for out in (str(tmp_path / "link"), ".", str(tmp_path)):
        assert export_command.main(["--config", str(config), "--out", out, "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("is a symbolic link" in err or "the working folder" in err)
    assert (tmp_path / "link").is_symlink() and list(real.iterdir()) == []


def test_export_overwrite_keeps_the_users_files_and_a_kill_before_the_swap_keeps_the_old_export(
    assets, tmp_path, monkeypatch
):
    from medkor.run import publish

    out = tmp_path / "export"
    before = _earlier_export(out)
    config = _config(tmp_path, assets, trainable="embeddings")

    class Killed(BaseException):
        """Stands for SIGKILL in-process: nothing after the named step runs (the process-level kills of every
        step are in tests/run/test_publish.py)."""

    def die_at(name):
        if name == "staged":
            raise Killed

    monkeypatch.setattr(publish, "kill_point", die_at)
    with pytest.raises(Killed):
        export_command.main(["--config", str(config), "--out", str(out), "--overwrite"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    assert export_command.main(["--config", str(config), "--out", str(out), "--overwrite"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"README.md", "model.safetensors", "config.json", "tokenizer.json", ".medkor-export.json"} <= names
    assert (out / "README.md").read_text() == "my notes" and b"old" not in (out / "config.json").read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export")] == []


def _refused_untouched(config, out, capsys, *names):
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for extra in ([], ["--overwrite"]):
        assert export_command.main(["--config", str(config), "--out", str(out)] + extra) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "which medkor export did not write" in err, err
        assert all(name in err for name in names), err
        assert "choose a new folder, or remove" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_overwrite_never_replaces_a_base_model_or_a_users_config_it_did_not_write(assets, tmp_path, capsys):
    import shutil

    config = _config(tmp_path, assets, trainable="embeddings")
    base = tmp_path / "basecopy"
    shutil.copytree(assets["text"], base)
    _refused_untouched(config, base, capsys, "config.json", "model.safetensors")
    for name in ("config.json", "tokenizer.json"):
        own = tmp_path / f"own-{name}"
        own.mkdir()
        (own / name).write_text('{"mine": 1}')
        _refused_untouched(config, own, capsys, name)


def test_overwrite_never_replaces_an_extend_vocab_folder_or_an_export_made_without_a_marker(
    assets, tmp_path, capsys
):
    config = _config(tmp_path, assets, trainable="embeddings")
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    (vocab / "tokenizer.json").write_text('{"mine": 1}')
    (vocab / ".medkor-extend-vocab.json").write_text('{"files": ["tokenizer.json"]}\n')
    _refused_untouched(config, vocab, capsys, "tokenizer.json")
    legacy = tmp_path / "legacy"
    _earlier_export(legacy)
    (legacy / ".medkor-export.json").unlink()
    _refused_untouched(config, legacy, capsys, "config.json", "model.safetensors")


def test_a_file_the_export_writes_that_its_marker_does_not_list_is_refused_at_publish(assets, tmp_path, capsys):
    from medkor.run.export_folder import ExportFolderError, publish_export

    out = tmp_path / "export"
    _earlier_export(out)  # the marker lists config.json and model.safetensors only
    (out / "chat_template.jinja").write_text("mine")
    staging = tmp_path / ".export.partial-x"
    staging.mkdir()
    for name in ("config.json", "chat_template.jinja"):
        (staging / name).write_text("new")
    with pytest.raises(ExportFolderError, match="holds chat_template.jinja, which medkor export did not write"):
        publish_export(staging, out, overwrite=True)
    assert (out / "chat_template.jinja").read_text() == "mine"
