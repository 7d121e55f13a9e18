"""The model a run config would train, built on the meta device: shapes and parameter counts, no weights.

`plan_model` goes through the same steps as `medkor.model.build.build_model`
(model class chosen from the config, embedding growth to the training tokenizer
checked against the checkpoint's own, trainable policy or phases with LoRA, float32
trainable parameters over half-precision frozen ones) but instantiates the model on
the `meta` device: every parameter has its real shape and dtype and no storage, so
a model folder holding only `config.json` and the tokenizer files is enough, and
MedGemma-4B takes seconds on a CPU. New embedding rows are not initialised (their
values do not exist on `meta`); everything that decides shapes and dtypes runs.

The result (`ModelFacts`) is plain data for `medkor.model.plan_memory`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from medkor.model.build import BASE_VOCAB_KEY, upcast_trainable
from medkor.model.embeddings import EmbeddingPlan, check_extends, plan_growth
from medkor.model.loading import VISION_MODULES, load_tokenizer, model_class_for, resolve_dtype
from medkor.model.policies import LoraOptions, apply_policy, embedding_parameters, policy_parameters
from medkor.model.schedule import apply_schedule, parse_phases


@dataclass(frozen=True)
class PhaseCount:
    """Trainable parameters of one policy or phase."""

    policy: str
    until_step: Optional[int]
    trainable: int


@dataclass(frozen=True)
class FsdpUnits:
    """How an FSDP auto-wrap policy cuts the model: one unit per matching module, the rest in the root."""

    classes: tuple[str, ...]
    count: int
    largest_params: int
    unit_params: int
    root_params: int


@dataclass
class ModelFacts:
    """Shapes and counts of the model a config trains (everything the memory model needs).

    Attributes:
        total_params / trainable_params: tied weights counted once; trainable = every
            parameter of any phase.
        weight_bytes / trainable_bytes: bytes of all parameters / of the trainable ones,
            in the dtypes they have after building (float32 trainable over a half
            `torch_dtype`).
        largest_trainable: elements of the largest trainable tensor.
        parts: parameter counts of named parts (vision tower, projector, embedding,
            untied output head, LoRA adapters, the rest of the language model).
        phases: trainable parameters per policy or phase.
        lora_modules: names of the linear layers that carry adapters, with their counts.
        lora_*: per decoder layer: adapters, summed input features, adapter parameters.
        layer_params: parameters of one decoder layer without adapters.
        head_tied / head_trainable / embedding_trainable: the output head is the input
            embedding; the head (or embedding) takes a gradient.
        embedding_dtype_bytes: element size of the input embedding (the residual stream's
            dtype comes from it).
        frozen_dtype_bytes: element size of frozen weights (`torch_dtype`).
        host_bytes: resident memory the tokenizers and the growth check added to the
            planning process: host memory a training process holds beside its tensors.
    """

    model_class: str
    multimodal: bool
    torch_dtype: str
    total_params: int
    trainable_params: int
    weight_bytes: int
    trainable_bytes: int
    largest_trainable: int
    parts: dict[str, int]
    phases: list[PhaseCount]
    embedding: EmbeddingPlan
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    head_rows: int
    head_tied: bool
    head_trainable: bool
    embedding_trainable: bool
    embedding_dtype_bytes: int
    frozen_dtype_bytes: int
    layer_params: int
    lora_modules: dict[str, int] = field(default_factory=dict)
    lora_rank: int = 0
    lora_dropout: float = 0.0
    lora_per_layer: int = 0
    lora_in_features: int = 0
    lora_layer_params: int = 0
    softcap: Optional[float] = None
    fsdp: Optional[FsdpUnits] = None
    host_bytes: int = 0

    @property
    def lora_total(self) -> int:
        return sum(self.lora_modules.values())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("embedding", "phases", "fsdp")}
        out["embedding"] = {"n_base_tokens": self.embedding.n_base, "n_tokens": self.embedding.n_tokenizer,
                            "rows_before": self.embedding.rows_before, "rows_after": self.embedding.rows_after}
        out["phases"] = [p.__dict__ for p in self.phases]
        out["fsdp"] = None if self.fsdp is None else {**self.fsdp.__dict__, "classes": list(self.fsdp.classes)}
        return out


def meta_model(config: Any, torch_dtype: str, attn_implementation: str = "sdpa") -> nn.Module:
    """The class `load_model` would load for `config`, instantiated on `meta` in `torch_dtype`."""
    dtype = resolve_dtype(torch_dtype)
    if dtype == "auto":  # the checkpoint's own dtype, as from_pretrained reads it
        dtype = getattr(config.get_text_config(), "dtype", None) or getattr(config, "dtype", None) or torch.float32
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    cls = model_class_for(config)
    with torch.device("meta"):
        model = cls._from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.config.get_text_config().use_cache = False
    return model


def grow_on_meta(model: nn.Module, base: Any, tokenizer: Any, pad_to_multiple_of: Optional[int],
                 base_name: str, name: str) -> EmbeddingPlan:
    """The shape side of `extend_embeddings`: the same checks and row count, rows resized, values left alone."""
    if base is not tokenizer:
        check_extends(base, tokenizer, base_name, name)
    rows = model.get_input_embeddings().weight.shape[0]
    plan = plan_growth(len(base), len(tokenizer), rows, pad_to_multiple_of)
    if plan.extended and plan.rows_after != rows:
        model.resize_token_embeddings(plan.rows_after, mean_resizing=False)
    return plan


def _is_part(name: str, parts: Sequence[str]) -> bool:
    return any(p in parts for p in name.split("."))


def _numel(params: Any) -> int:
    seen: dict[int, int] = {}
    for p in params:
        seen[id(p)] = p.numel()
    return sum(seen.values())


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    for module in model.modules():
        layers = getattr(module, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and "DecoderLayer" in type(layers[0]).__name__:
            return list(layers)
    return []


def fsdp_units(model: nn.Module, class_names: Sequence[Any]) -> FsdpUnits:
    """Units an FSDP `auto_wrap_policy` of module classes (classes, names or dotted paths) makes of `model`."""
    short = {c.__name__ if isinstance(c, type) else str(c).rsplit(".", 1)[-1].strip("'<>") for c in class_names}
    units = [m for m in model.modules() if type(m).__name__ in short]
    sizes = [_numel(m.parameters()) for m in units]
    total = _numel(model.parameters())
    return FsdpUnits(tuple(sorted(short)), len(units), max(sizes, default=0), sum(sizes), total - sum(sizes))


def facts_of(model: nn.Module, plan: EmbeddingPlan, phases: list[PhaseCount], torch_dtype: str,
             multimodal: bool, lora: Optional[LoraOptions], fsdp_classes: Sequence[str] = ()) -> ModelFacts:
    """Read the counts and shapes of a built (meta) model."""
    named = dict(model.named_parameters())  # tied parameters appear once
    params = list(named.values())
    trainable = [p for p in params if p.requires_grad]
    embeddings = embedding_parameters(model)
    emb, head = embeddings[0], embeddings[-1]
    parts = {
        "vision_tower": _numel(p for n, p in named.items() if _is_part(n, ("vision_tower",))),
        "multi_modal_projector": _numel(p for n, p in named.items() if _is_part(n, ("multi_modal_projector",))),
        "embedding": emb.numel(),
        "untied_head": head.numel() if head is not emb else 0,
        "lora": _numel(p for n, p in named.items() if "lora_" in n),
    }
    parts["language_model_other"] = _numel(params) - sum(parts.values())
    text = model.config.get_text_config()
    layers = _decoder_layers(model)
    lora_modules: dict[str, int] = {}
    lora_in = lora_per_layer = lora_layer_params = layer_params = 0
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and len(getattr(module, "lora_A", {})) and not _is_part(name, VISION_MODULES):
            leaf = name.rsplit(".", 1)[-1]
            lora_modules[leaf] = lora_modules.get(leaf, 0) + 1
    if layers:
        first = layers[0]
        layer_params = _numel(p for n, p in first.named_parameters() if "lora_" not in n)
        for name, module in first.named_modules():
            if hasattr(module, "lora_A") and len(getattr(module, "lora_A", {})):
                lora_per_layer += 1
                lora_in += module.in_features
        lora_layer_params = _numel(p for n, p in first.named_parameters() if "lora_" in n)
    frozen = [p for p in params if not p.requires_grad and p.is_floating_point()]
    return ModelFacts(
        model_class=type(_unwrapped(model)).__name__,
        multimodal=multimodal,
        torch_dtype=torch_dtype,
        total_params=_numel(params),
        trainable_params=_numel(trainable),
        weight_bytes=sum(p.numel() * p.element_size() for p in params),
        trainable_bytes=sum(p.numel() * p.element_size() for p in trainable),
        largest_trainable=max((p.numel() for p in trainable), default=0),
        parts=parts,
        phases=phases,
        embedding=plan,
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        heads=text.num_attention_heads,
        kv_heads=text.num_key_value_heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads,
        intermediate=text.intermediate_size,
        head_rows=head.shape[0],
        head_tied=head is emb,
        head_trainable=head.requires_grad,
        embedding_trainable=emb.requires_grad,
        embedding_dtype_bytes=emb.element_size(),
        frozen_dtype_bytes=(frozen[0].element_size() if frozen else emb.element_size()),
        layer_params=layer_params,
        lora_modules=lora_modules,
        lora_rank=(lora.r if lora and lora_modules else 0),
        lora_dropout=(lora.dropout if lora and lora_modules else 0.0),
        lora_per_layer=lora_per_layer,
        lora_in_features=lora_in,
        lora_layer_params=lora_layer_params,
        softcap=getattr(text, "final_logit_softcapping", None),
        fsdp=fsdp_units(model, fsdp_classes) if fsdp_classes else None,
    )


def _unwrapped(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def plan_model(
    model_name_or_path: str,
    tokenizer_path: Optional[str] = None,
    *,
    pad_vocab_to_multiple_of: Optional[int] = 64,
    trainable: Union[str, list] = "embeddings+lora",
    lora: Optional[LoraOptions] = None,
    torch_dtype: str = "float32",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    fsdp_classes: Sequence[str] = (),
    base_tokenizer_path: Optional[str] = None,
) -> ModelFacts:
    """Build the model of these `MedGemmaModule` options on `meta` and read its facts.

    `model_name_or_path` must hold `config.json` and the checkpoint's tokenizer (a folder
    or a hub id in the local cache); no weight file is read.
    """
    from transformers import AutoConfig

    if isinstance(lora, dict):
        lora = LoraOptions(**lora)
    phases = parse_phases(trainable)
    config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    model = meta_model(config, torch_dtype, attn_implementation)
    before = resident_bytes()
    base_path = base_tokenizer_path or model_name_or_path
    base = load_tokenizer(base_path, trust_remote_code)
    same = tokenizer_path is None or tokenizer_path == base_path
    tokenizer = base if same else load_tokenizer(tokenizer_path, trust_remote_code)
    plan = grow_on_meta(model, base, tokenizer, pad_vocab_to_multiple_of, base_path,
                        tokenizer_path or model_name_or_path)
    host = max(0, resident_bytes() - before)  # what the tokenizers and the growth check cost a process
    text_cfg = model.config.get_text_config()
    n_old = plan.n_base if plan.extended else (getattr(text_cfg, BASE_VOCAB_KEY, None) or plan.rows_after)
    lora_used = lora or LoraOptions()
    with torch.device("meta"):  # adapters too: created and initialised without memory
        if len(phases) == 1:
            policy = apply_policy(model, phases[0].policy, n_old_rows=n_old, lora=lora_used)
        else:
            policy, _ = apply_schedule(model, phases, n_old_rows=n_old, lora=lora_used)
    built = policy.model
    if torch_dtype in ("bfloat16", "float16"):  # as build_model: "auto" keeps the checkpoint's dtype
        upcast_trainable(built)
    counts = [PhaseCount(p.policy, p.until_step, _numel(policy_parameters(built, p.policy))) for p in phases]
    multimodal = any(hasattr(getattr(_unwrapped(built), "model", None), n) for n in VISION_MODULES)
    facts = facts_of(built, plan, counts, torch_dtype, multimodal, lora_used, fsdp_classes)
    facts.host_bytes = host
    return facts


def resident_bytes() -> int:
    """This process's resident memory (Linux; 0 where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
