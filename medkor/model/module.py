"""`MedGemmaModule`: the LightningModule over the plain functions of `medkor.model`."""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator, Optional, Union, get_args

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info

from medkor.model.build import BASE_VOCAB_KEY, BuiltModel, build_model
from medkor.model.embeddings import NewTokenInit, OutputInit
from medkor.callbacks.logging_steps import is_logging_step
from medkor.model.inputs import BatchFacts, attention_masks, batch_facts, facts_of, mask_padding_labels
from medkor.model.loading import DTYPES, text_config
from medkor.model.loss import LossImpl, cce_installed, next_token_loss
from medkor.model.optim import build_optimizer, build_scheduler, param_groups, warmup_steps_for
from medkor.model.policies import LoraOptions, Trainable, trainable_summary
from medkor.model.schedule import TrainablePhase, parse_phases, phase_at, phase_dicts
from medkor.model.throughput import ThroughputMeter, flops_per_token, peak_tflops_for

TRAINABLE_ONLY_KEY = "medkor_trainable_only"


class MedGemmaModule(LightningModule):
    """MedGemma / Gemma 3 with extended Korean embeddings, trained on text.

    Construction checks the options and loads nothing; `configure_model` (Lightning
    calls it on every rank) or the first use of `model` or `tokenizer` builds it.

    Args:
        model_name_or_path: hub id or local folder of a Gemma 3 checkpoint (text-only
            `Gemma3ForCausalLM` or multimodal `Gemma3ForConditionalGeneration`, e.g.
            `google/medgemma-4b-it`); its own tokenizer must be saved with it.
        tokenizer_path: tokenizer to train with, usually an extended-tokenizer folder
            from `medkor extend-vocab`; default: the checkpoint's own.
        new_token_init: how rows of tokens the checkpoint does not know start:
            `subword_mean` (mean of the rows of the pieces the checkpoint's tokenizer
            splits the token's text into), `mean` (mean of all old rows) or `random`
            (normal with the old rows' mean and spread).
        untied_output_init: for an untied output head with `subword_mean`: the same
            mean, or `first_piece` (the row of the token's first piece, as EEVE does).
        pad_vocab_to_multiple_of: when the embedding grows, round its rows up to this
            multiple (64 suits tensor cores); null for no rounding.
        trainable: what trains: `new_embeddings` (only rows of new tokens),
            `embeddings` (whole embedding and untied head), `embeddings+lora`,
            `lora`, or `full`. A vision tower never trains. FSDP refuses `new_embeddings`.
            Or a list of phases switched inside the run, e.g. `[{policy: new_embeddings,
            until_step: 500}, {policy: embeddings+lora}]` (`medkor/model/schedule.py`):
            one optimizer and one learning-rate schedule over every phase; FSDP refuses it,
            DDP needs `find_unused_parameters: true` for it.
        lora: LoRA options for the LoRA policies (rank, alpha, dropout, target modules).
        learning_rate: peak learning rate of the non-embedding parameters.
        embedding_learning_rate: peak learning rate of the embedding (and untied head);
            default: `learning_rate`.
        weight_decay: AdamW decoupled weight decay of matrices and embeddings (norms,
            biases and masked embedding rows are never decayed).
        warmup_steps: optimizer steps of linear warmup.
        warmup_ratio: warmup as a fraction of all optimizer steps; overrides `warmup_steps`.
        min_learning_rate: the cosine schedule ends here (groups scale alike).
        adam_betas: AdamW betas.
        gradient_checkpointing: recompute decoder activations in backward (saves memory).
        attn_implementation: `sdpa`, `eager`, `flash_attention_2` or `flex_attention`.
        torch_dtype: weight dtype: `float32`, `bfloat16`, `float16` or `auto`. With a half
            dtype the trainable parameters stay float32; train with `bf16-mixed` precision.
            Under FSDP only `float32` (FSDP itself computes in bfloat16 under `bf16-mixed`).
        trust_remote_code: allow model/tokenizer code from the checkpoint's repository.
        loss_chunk_size: positions per chunk of the cross-entropy; peak logits memory is
            this many rows of the vocabulary instead of all tokens.
        loss_impl: the fused head + cross-entropy: `torch` (any device), `torch_recompute`
            (recomputes logits in backward; with gradient accumulation the head gradient
            goes straight into `.grad`, one head-sized buffer less, one matmul more), `cce`
            (Cut Cross-Entropy `cce_kahan_full_c`: CUDA and the `cut-cross-entropy` package
            only, an error elsewhere) or `auto` (`cce` where it can run, else `torch`).
        save_trainable_only: checkpoints hold only trainable parameters (and their
            optimizer state); resuming rebuilds the frozen part from the checkpoint.
        peak_tflops: the accelerator's peak TFLOP/s for `train/mfu`; default: looked up
            for known GPUs, MFU is not logged otherwise.
    """

    def __init__(
        self,
        model_name_or_path: str,
        tokenizer_path: Optional[str] = None,
        new_token_init: NewTokenInit = "subword_mean",
        untied_output_init: OutputInit = "subword_mean",
        pad_vocab_to_multiple_of: Optional[int] = 64,
        trainable: Union[Trainable, list[TrainablePhase]] = "embeddings+lora",
        lora: Optional[LoraOptions] = None,
        learning_rate: float = 2e-4,
        embedding_learning_rate: Optional[float] = None,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        warmup_ratio: Optional[float] = None,
        min_learning_rate: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        gradient_checkpointing: bool = False,
        attn_implementation: str = "sdpa",
        torch_dtype: str = "float32",
        trust_remote_code: bool = False,
        loss_chunk_size: int = 512,
        loss_impl: LossImpl = "torch",
        save_trainable_only: bool = False,
        peak_tflops: Optional[float] = None,
    ) -> None:
        super().__init__()
        if isinstance(lora, dict):
            lora = LoraOptions(**lora)
        check_options(
            model_name_or_path=model_name_or_path, tokenizer_path=tokenizer_path, new_token_init=new_token_init,
            untied_output_init=untied_output_init, pad_vocab_to_multiple_of=pad_vocab_to_multiple_of,
            trainable=trainable, lora=lora, learning_rate=learning_rate,
            embedding_learning_rate=embedding_learning_rate, weight_decay=weight_decay, warmup_steps=warmup_steps,
            warmup_ratio=warmup_ratio, min_learning_rate=min_learning_rate, adam_betas=adam_betas,
            torch_dtype=torch_dtype, loss_chunk_size=loss_chunk_size, loss_impl=loss_impl, peak_tflops=peak_tflops,
        )
        self.save_hyperparameters()
        if not isinstance(trainable, str):  # plain dicts: checkpoints load them with weights_only=True
            self.hparams["trainable"] = phase_dicts(parse_phases(trainable))
        self._lora = lora  # hparams keep the value as given (a dict from a config file)
        self._built: Optional[BuiltModel] = None
        self._throughput = ThroughputMeter()
        self._last_loss: Optional[torch.Tensor] = None  # the latest step's loss, read at logging steps

    # ---- building -----------------------------------------------------------
    def configure_model(self) -> None:
        """Load, grow and set up the model, once.

        Lightning calls this on every rank under the strategy's init context, before
        restoring a checkpoint and before wrapping (DDP, FSDP). Later calls (fit, then
        validate) return at once. Used without a Trainer (scripts, `medkor export`), the
        first use of `model`, `tokenizer`, `embedding_plan` or `trainable_summary`
        builds it.
        """
        if self._built is not None:
            return
        hp = self.hparams
        built = build_model(
            hp.model_name_or_path,
            hp.tokenizer_path,
            new_token_init=hp.new_token_init,
            untied_output_init=hp.untied_output_init,
            pad_vocab_to_multiple_of=hp.pad_vocab_to_multiple_of,
            trainable=hp.trainable,
            lora=self._lora,
            gradient_checkpointing=hp.gradient_checkpointing,
            attn_implementation=hp.attn_implementation,
            torch_dtype=hp.torch_dtype,
            trust_remote_code=hp.trust_remote_code,
        )
        built.model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as found
        self._modules["model"] = built.model  # a submodule, as `self.model = ...` would make it; read by `model`
        # Taken now, before a strategy wraps the model: FSDP turns every parameter into a
        # 1-D shard of a flat buffer, so shapes (decay or not) and counts must be read first.
        self._param_groups = param_groups(
            built.model,
            learning_rate=hp.learning_rate,
            weight_decay=hp.weight_decay,
            embedding_params=built.policy.embedding_params,
            embedding_learning_rate=hp.embedding_learning_rate,
            decay_exempt=built.policy.decay_exempt,
        )
        self._summary = trainable_summary(built.model)
        # Every parameter any phase trains: what a trainable-only checkpoint holds.
        self._trainable_ids = {id(p) for p in built.model.parameters() if p.requires_grad}
        self._mfu_params = _matmul_parameters(_unwrapped(built.model))
        self._built = built
        rank_zero_info(self._summary)

    def setup(self, stage: str) -> None:
        if isinstance(self.trainer.strategy, FSDPStrategy):
            problem = fsdp_problem(self.hparams, training=stage == "fit")
            if problem:
                raise ValueError(problem)
        if stage == "fit" and isinstance(self.trainer.strategy, DDPStrategy):
            kwargs = getattr(self.trainer.strategy, "_ddp_kwargs", {})
            if len(parse_phases(self.hparams.trainable)) > 1 and not kwargs.get("find_unused_parameters"):
                raise ValueError(
                    "model.trainable: a phase list under DDP needs trainer.strategy.init_args."
                    "find_unused_parameters: true (parameters of a later phase take no gradient before it)"
                )

    def _parts(self) -> BuiltModel:
        if self._built is None:
            try:
                self.configure_model()
            except AttributeError as err:  # would read as "no attribute 'model'" from a property
                raise RuntimeError(f"building the model failed: {err}") from err
        return self._built

    # ---- model access -------------------------------------------------------
    @property
    def model(self) -> torch.nn.Module:
        """The model being trained: a transformers causal LM, peft-wrapped for LoRA policies."""
        self._parts()
        return self._modules["model"]

    @property
    def tokenizer(self) -> Any:
        """The tokenizer the model trains with (extended or the checkpoint's own)."""
        return self._parts().tokenizer

    @property
    def embedding_plan(self) -> Any:
        """Which embedding rows are old, new and padding (`medkor.model.embeddings.EmbeddingPlan`)."""
        return self._parts().plan

    @property
    def _policy(self) -> Any:
        return self._parts().policy

    @property
    def trainable_summary(self) -> str:
        """`Trainable params: 1,528,110,080 (26.10%)`, counted before any sharding."""
        self._parts()
        return self._summary

    @property
    def hf_model(self) -> torch.nn.Module:
        """The transformers model (inside the peft wrapper, if any)."""
        return _unwrapped(self.model)

    @contextmanager
    def unsharded(self) -> Iterator[torch.nn.Module]:
        """`model` with whole parameters on this rank, for calls outside the training steps.

        Under FSDP the parameters outside a step are flat 1-D shards, so calling `model`
        directly (evaluation, generation) fails; inside this block each rank holds the
        full weights (read-only; memory of the whole model). Elsewhere it is just `model`.
        """
        root = self._trainer.model if self._trainer is not None else None
        if not _is_fsdp_module(root):
            yield self.model
            return
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(root, writeback=False):
            yield self.model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        facts: Optional[BatchFacts] = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, H) of the decoder, before the output head.

        `facts` (packing, left padding) come from the collate; without them they are read
        back from the tensors. The model gets finished attention masks (`medkor.model.inputs`).
        """
        if facts is None:
            facts = facts_of(input_ids, attention_mask, position_ids)
        config = text_config(self.hf_model)
        embeds_like = torch.empty(
            (*input_ids.shape, 0), dtype=self.hf_model.get_input_embeddings().weight.dtype, device=input_ids.device
        )
        masks = attention_masks(config, embeds_like, attention_mask, position_ids, facts)
        out = self.hf_model.base_model(
            input_ids=input_ids, attention_mask=masks, position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state

    def loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """(mean next-token loss, predicted tokens) of a batch; logits never fully materialised.

        A batch from the collate reads nothing back from the device: its facts and the
        positions that count (`loss_positions`) were computed on the host.
        """
        attention_mask = batch.get("attention_mask")
        hidden = self(batch["input_ids"], attention_mask, batch.get("position_ids"), batch_facts(batch))
        positions = batch.get("loss_positions")
        labels = batch["labels"] if positions is not None else mask_padding_labels(batch["labels"], attention_mask)
        head = self.hf_model.get_output_embeddings().weight
        softcap = getattr(text_config(self.hf_model), "final_logit_softcapping", None)
        return next_token_loss(hidden, head, labels, self.hparams.loss_chunk_size, softcap, self.hparams.loss_impl,
                               positions)

    # ---- steps --------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        schedule = self._parts().schedule
        if schedule is None:
            return
        step = self.trainer.global_step
        index = phase_at(schedule.phases, step)
        optimizer = self.optimizers().optimizer if self._has_optimizer() else None
        if schedule.apply(index, optimizer, weight_decay=self.hparams.weight_decay):
            rank_zero_info(f"trainable phase {index + 1}/{len(schedule.phases)} ({schedule.phases[index].policy}) "
                           f"from step {step}: {trainable_summary(self.model)}")
        if is_logging_step(self.trainer):  # a number logged is a tensor made on the device: only when it is read
            self.log("train/trainable_phase", float(index + 1), on_step=True, on_epoch=False)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, count = self.loss(batch)
        # a tensor, read by the logger at logging steps only; not in the progress bar, which
        # Lightning reads after every batch (on_train_batch_end shows it there at logging steps)
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=max(count, 1))
        self._last_loss = loss.detach()
        self._throughput.add(batch_facts(batch).num_tokens)
        return loss

    def on_train_start(self) -> None:
        self._throughput.tick()  # the first logging step's rate counts from here

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not is_logging_step(self.trainer):
            return  # nothing read, nothing logged: the device runs ahead
        loss = self._last_loss
        if loss is not None:
            # waits for the step once (the logger reads the same value next); the bar shows it until the next one
            self.trainer.progress_bar_metrics["train/loss"] = float(loss)
        rate = self._throughput.tick()
        for i, group in enumerate(self.optimizers().optimizer.param_groups if self._has_optimizer() else []):
            name = "train/lr" if i == 0 else f"train/lr_{group.get('name', i)}"
            self.log(name, group["lr"], on_step=True, on_epoch=False)
        if rate is None:
            return
        rate *= self.trainer.world_size  # every rank counts its own tokens
        self.log("train/tokens_per_sec", rate, on_step=True, on_epoch=False)
        mfu = self._mfu(rate, batch["input_ids"].shape[1])
        if mfu is not None:
            self.log("train/mfu", mfu, on_step=True, on_epoch=False)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, count = self.loss(batch)
        self.log(self._eval_key("val", dataloader_idx), loss, on_epoch=True, sync_dist=True,
                 batch_size=max(count, 1), add_dataloader_idx=False)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, count = self.loss(batch)
        self.log(self._eval_key("test", dataloader_idx), loss, on_epoch=True, sync_dist=True,
                 batch_size=max(count, 1), add_dataloader_idx=False)

    def _eval_key(self, stage: str, dataloader_idx: int) -> str:
        """The datamodule's name for the loader (`val/<name>/loss`); else `val/loss`, `val/<index>/loss`."""
        names_of = getattr(getattr(self._trainer, "datamodule", None), "metric_names", None)
        names = names_of(stage) if callable(names_of) else []
        if dataloader_idx < len(names):
            return names[dataloader_idx]
        return f"{stage}/loss" if dataloader_idx == 0 else f"{stage}/{dataloader_idx}/loss"

    # ---- optimisation -------------------------------------------------------
    def configure_optimizers(self) -> dict:
        hp = self.hparams
        self._parts()
        # Fresh dicts each time: an optimizer keeps (and its scheduler edits) the dicts it gets.
        groups = [dict(group, params=list(group["params"])) for group in self._param_groups]
        # A loss scaler (16-mixed) needs gradients unscaled before clipping, which a fused
        # AdamW would do only inside its step: keep the unfused one there.
        scaled = getattr(self.trainer.precision_plugin, "scaler", None) is not None
        optimizer = build_optimizer(groups, betas=tuple(hp.adam_betas), fused=not scaled)
        total = self.trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) else 10**12  # no end known: cosine never decays
        warmup = warmup_steps_for(total, hp.warmup_steps, hp.warmup_ratio)
        scheduler = build_scheduler(
            optimizer,
            total_steps=total,
            warmup=warmup,
            learning_rate=hp.learning_rate,
            min_learning_rate=hp.min_learning_rate,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _has_optimizer(self) -> bool:
        return self._trainer is not None and bool(self.trainer.optimizers)

    def _mfu(self, tokens_per_sec: float, seq_len: int) -> Optional[float]:
        if self.device.type != "cuda":
            return None
        peak = self.hparams.peak_tflops or peak_tflops_for(self.device)
        if not peak:
            return None
        achieved = tokens_per_sec * flops_per_token(text_config(self.hf_model), self._mfu_params, seq_len)
        return achieved / (peak * 1e12 * self.trainer.world_size)

    # ---- checkpoints --------------------------------------------------------
    def trainable_state_keys(self) -> set[str]:
        """State-dict keys of parameters that train in any phase (tied names included)."""
        self.configure_model()
        return {
            key
            for key, value in self.state_dict(keep_vars=True).items()
            if isinstance(value, torch.nn.Parameter) and id(value) in self._trainable_ids
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self.hparams.save_trainable_only:
            return
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint[TRAINABLE_ONLY_KEY] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.configure_model()  # a Trainer has built it already; `medkor export` and scripts may not have
        if not checkpoint.get(TRAINABLE_ONLY_KEY):
            self.strict_loading = True
            return
        saved = set(checkpoint["state_dict"])
        expected = self.trainable_state_keys()
        if saved != expected:
            extra, lacking = sorted(saved - expected), sorted(expected - saved)
            raise RuntimeError(
                "checkpoint holds trainable parameters only, but they do not match this module's trainable set "
                f"(policy or model changed?): {len(extra)} unexpected {extra[:5]}, {len(lacking)} missing "
                f"{lacking[:5]}. Resume with the same model and trainable options."
            )
        # What is missing is exactly the frozen part, rebuilt from model_name_or_path by configure_model.
        self.strict_loading = False

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: Optional[float] = None,
        gradient_clip_algorithm: Optional[str] = None,
    ) -> None:
        root = self.trainer.model
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm") and _is_fsdp_module(root):
            # Each rank holds a shard of every gradient: only the root FSDP module computes the
            # norm over all of them (Lightning's precision plugin refuses norm clipping here).
            root.clip_grad_norm_(gradient_clip_val)
            return
        if gradient_clip_val and getattr(self.trainer.precision_plugin, "scaler", None) is None:
            # No loss scaler (32, bf16-mixed, bf16-true): the gradients are final, so clip them
            # here. Lightning's mixed-precision plugin refuses any clipping beside a fused
            # optimizer, which NonFiniteGuard needs to skip a step without a host read.
            # clip_grad_norm_ scales by a device tensor: no host read either.
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val, foreach=True)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


# ---- argument checks (no loading) -----------------------------------------------
def check_options(**options: Any) -> None:
    """Refuse impossible `MedGemmaModule` arguments before anything is loaded.

    Each problem is one line naming the option as a config writes it (`model.KEY`).
    A local checkpoint or tokenizer path that does not exist is a `FileNotFoundError`.
    """
    o = options

    def need(ok: bool, key: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"model.{key} must be {rule}, got {o[key]!r}")

    def one_of(key: str, allowed: Any) -> None:
        if o[key] not in allowed:
            raise ValueError(f"model.{key} {o[key]!r} is not one of {', '.join(map(str, allowed))}")

    phases = parse_phases(o["trainable"])
    one_of("torch_dtype", tuple(DTYPES))
    one_of("new_token_init", get_args(NewTokenInit))
    one_of("untied_output_init", get_args(OutputInit))
    need(o["learning_rate"] > 0, "learning_rate", "> 0")
    need(o["embedding_learning_rate"] is None or o["embedding_learning_rate"] > 0, "embedding_learning_rate",
         "> 0 or null")
    need(0 <= o["min_learning_rate"] <= o["learning_rate"], "min_learning_rate", "in [0, learning_rate]")
    need(o["weight_decay"] >= 0, "weight_decay", ">= 0")
    need(o["warmup_steps"] >= 0, "warmup_steps", ">= 0")
    need(o["warmup_ratio"] is None or 0 <= o["warmup_ratio"] < 1, "warmup_ratio", "in [0, 1) or null")
    need(len(o["adam_betas"]) == 2 and all(0 <= b < 1 for b in o["adam_betas"]), "adam_betas",
         "two values in [0, 1)")
    need(o["loss_chunk_size"] >= 1, "loss_chunk_size", ">= 1")
    one_of("loss_impl", get_args(LossImpl))
    if o["loss_impl"] == "cce" and not cce_installed():
        raise ValueError("model.loss_impl: cce needs the cut-cross-entropy package, which is not installed "
                         "(pip install cut-cross-entropy, CUDA only); use loss_impl: torch or auto")
    need(o["pad_vocab_to_multiple_of"] is None or o["pad_vocab_to_multiple_of"] >= 1, "pad_vocab_to_multiple_of",
         ">= 1 or null")
    need(o["peak_tflops"] is None or o["peak_tflops"] > 0, "peak_tflops", "> 0 or null")
    lora = o["lora"]
    if lora is not None:
        values = {f.name: getattr(lora, f.name) for f in fields(lora)}
        for key, ok, rule in (("r", values["r"] >= 1, ">= 1"), ("alpha", values["alpha"] > 0, "> 0"),
                              ("dropout", 0 <= values["dropout"] < 1, "in [0, 1)"),
                              ("target_modules", len(values["target_modules"]) > 0, "a non-empty list")):
            if not ok:
                raise ValueError(f"model.lora.{key} must be {rule}, got {values[key]!r}")
    model_path, tokenizer_path = o["model_name_or_path"], o["tokenizer_path"]
    if _missing_local_path(model_path):
        raise FileNotFoundError(f"model.model_name_or_path {model_path!r}: no such folder")
    if tokenizer_path is not None and _missing_local_path(tokenizer_path):
        raise FileNotFoundError(f"cannot load a tokenizer from {tokenizer_path!r}: no such folder "
                                "(model.tokenizer_path)")
    if any(p.policy == "new_embeddings" for p in phases) and tokenizer_path in (None, model_path):
        config = _local_text_config(model_path)
        if config is not None and BASE_VOCAB_KEY not in config:
            raise ValueError(
                "trainable: new_embeddings needs new rows, but the tokenizer adds no token to the checkpoint "
                f"{model_path!r}; set model.tokenizer_path to an extended tokenizer or use another policy"
            )


def _missing_local_path(path: str) -> bool:
    """True for a path that can only be local (absolute, ./, ../, ~, or deeper than a hub id) and is absent."""
    local = os.path.isabs(path) or path.startswith(("./", "../", "~")) or path.count("/") > 1
    return local and not Path(path).expanduser().exists()


def _local_text_config(path: str) -> Optional[dict]:
    """The text part of a local checkpoint's config.json (no transformers, no network); None elsewhere."""
    file = Path(path) / "config.json"
    if not file.is_file():
        return None
    config = json.loads(file.read_text(encoding="utf-8"))
    return config.get("text_config", config)


# ---- FSDP -----------------------------------------------------------------------
def fsdp_problem(hparams: Any, *, training: bool) -> Optional[str]:
    """Why these `MedGemmaModule` options cannot run under FSDP (one line), or None.

    - `new_embeddings`: the old rows' gradient mask is a hook on the embedding
      parameter; FSDP computes gradients on its flat, sharded buffer, so the hook
      never runs and old rows would train.
    - a half `torch_dtype` (or `auto`, which is bfloat16 for MedGemma): the trainable
      parameters are float32 over half-precision frozen ones, and FSDP flattens one
      dtype per unit only. FSDP keeps float32 weights itself and computes in bfloat16
      under `precision: bf16-mixed`.
    - `save_trainable_only`: FSDP saves and loads every parameter itself, before the
      module could allow a partial checkpoint.
    - a list of several `trainable` phases: FSDP fixes which parameters train when it
      flattens them, so the trainable set cannot change inside the run.
    """
    phases = parse_phases(hparams.trainable)
    if training and len(phases) > 1:
        return ("model.trainable: a list of phases cannot train under FSDP (FSDP fixes the trainable set when it "
                "wraps the model); run the phases with DDP or one GPU, or one policy per run under FSDP")
    if training and phases[0].policy == "new_embeddings":
        return ("model.trainable: new_embeddings cannot train under FSDP (its old-row gradient mask needs the "
                "unsharded embedding, FSDP trains a flat sharded copy); use trainable: embeddings under FSDP, "
                "or new_embeddings with DDP or one GPU (configs/strategies/ddp.yaml)")
    if hparams.torch_dtype != "float32":
        return (f"model.torch_dtype: {hparams.torch_dtype} cannot be used under FSDP (float32 trainable and "
                "half-precision frozen weights cannot share a flat shard); use model.torch_dtype: float32 "
                "with trainer.precision: bf16-mixed, which FSDP computes in bfloat16")
    if hparams.save_trainable_only:
        return ("model.save_trainable_only: true is not supported under FSDP (the strategy saves and loads every "
                "parameter itself); set it to false")
    return None


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _is_fsdp_module(module: Any) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel

    return isinstance(module, FullyShardedDataParallel)


def _matmul_parameters(hf_model: torch.nn.Module) -> int:
    """Weights a token passes through for MFU: decoder layers and output head, not the embedding lookup."""
    decoder = hf_model.base_model
    language = getattr(decoder, "language_model", decoder)
    n = sum(p.numel() for p in language.parameters()) - hf_model.get_input_embeddings().weight.numel()
    return n + hf_model.get_output_embeddings().weight.numel()
