"""`MedGemmaModule`: the LightningModule over the plain functions of `medkor.model`."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_info

from medkor.model.build import build_model
from medkor.model.embeddings import NewTokenInit, OutputInit
from medkor.model.inputs import attention_inputs, mask_padding_labels
from medkor.model.loading import text_config
from medkor.model.loss import chunked_cross_entropy
from medkor.model.optim import build_optimizer, build_scheduler, param_groups, warmup_steps_for
from medkor.model.policies import LoraOptions, Trainable, trainable_summary
from medkor.model.throughput import ThroughputMeter, flops_per_token, peak_tflops_for

TRAINABLE_ONLY_KEY = "medkor_trainable_only"


class MedGemmaModule(LightningModule):
    """MedGemma / Gemma 3 with extended Korean embeddings, trained on text.

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
            `lora`, or `full`. A vision tower never trains.
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
        trust_remote_code: allow model/tokenizer code from the checkpoint's repository.
        loss_chunk_size: positions per chunk of the cross-entropy; peak logits memory is
            this many rows of the vocabulary instead of all tokens.
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
        trainable: Trainable = "embeddings+lora",
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
        save_trainable_only: bool = False,
        peak_tflops: Optional[float] = None,
    ) -> None:
        super().__init__()
        if isinstance(lora, dict):
            lora = LoraOptions(**lora)
        self.save_hyperparameters()
        built = build_model(
            model_name_or_path,
            tokenizer_path,
            new_token_init=new_token_init,
            untied_output_init=untied_output_init,
            pad_vocab_to_multiple_of=pad_vocab_to_multiple_of,
            trainable=trainable,
            lora=lora,
            gradient_checkpointing=gradient_checkpointing,
            attn_implementation=attn_implementation,
            torch_dtype=torch_dtype,
            trust_remote_code=trust_remote_code,
        )
        self.model = built.model
        self.model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as found
        self.tokenizer = built.tokenizer
        self.embedding_plan = built.plan
        self._policy = built.policy
        self._throughput = ThroughputMeter()
        self.trainable_summary = trainable_summary(self.model)
        rank_zero_info(self.trainable_summary)

    # ---- model access -------------------------------------------------------
    @property
    def hf_model(self) -> torch.nn.Module:
        """The transformers model (inside the peft wrapper, if any)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, H) of the decoder, before the output head."""
        mask, positions = attention_inputs(attention_mask, position_ids)
        out = self.hf_model.base_model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=False
        )
        return out.last_hidden_state

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """(mean next-token loss, predicted tokens) of a batch; logits never fully materialised."""
        attention_mask = batch.get("attention_mask")
        hidden = self(batch["input_ids"], attention_mask, batch.get("position_ids"))
        labels = mask_padding_labels(batch["labels"], attention_mask)
        head = self.hf_model.get_output_embeddings().weight
        softcap = getattr(text_config(self.hf_model), "final_logit_softcapping", None)
        return chunked_cross_entropy(hidden, head, labels, self.hparams.loss_chunk_size, softcap)

    # ---- steps --------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, count = self.loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=max(count, 1))
        mask = batch.get("attention_mask")
        self._throughput.add(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
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

    @staticmethod
    def _eval_key(stage: str, dataloader_idx: int) -> str:
        """`val/loss` for the first set; `val/<index>/loss` for any further ones."""
        return f"{stage}/loss" if dataloader_idx == 0 else f"{stage}/{dataloader_idx}/loss"

    # ---- optimisation -------------------------------------------------------
    def configure_optimizers(self) -> dict:
        hp = self.hparams
        groups = param_groups(
            self.model,
            learning_rate=hp.learning_rate,
            weight_decay=hp.weight_decay,
            embedding_params=self._policy.embedding_params,
            embedding_learning_rate=hp.embedding_learning_rate,
            decay_exempt=self._policy.decay_exempt,
        )
        optimizer = build_optimizer(groups, betas=tuple(hp.adam_betas))
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
        peak = self.hparams.peak_tflops or peak_tflops_for(torch.cuda.get_device_name(self.device))
        if not peak:
            return None
        config = text_config(self.hf_model)
        decoder = self.hf_model.base_model
        embed = self.hf_model.get_input_embeddings().weight
        language = getattr(decoder, "language_model", decoder)
        n = sum(p.numel() for p in language.parameters()) - embed.numel()
        n += self.hf_model.get_output_embeddings().weight.numel()
        achieved = tokens_per_sec * flops_per_token(config, n, seq_len)
        return achieved / (peak * 1e12 * self.trainer.world_size)

    # ---- checkpoints --------------------------------------------------------
    def trainable_state_keys(self) -> set[str]:
        """State-dict keys of trainable parameters (tied names included)."""
        return {
            key
            for key, value in self.state_dict(keep_vars=True).items()
            if isinstance(value, torch.nn.Parameter) and value.requires_grad
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self.hparams.save_trainable_only:
            return
        keep = self.trainable_state_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint[TRAINABLE_ONLY_KEY] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
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
        # What is missing is exactly the frozen part, rebuilt from model_name_or_path at construction.
        self.strict_loading = False
