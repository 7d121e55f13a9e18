"""Predicted peak memory per device of a training run, from the model's facts and the run's set-up.

Plain arithmetic over `medkor.model.plan.ModelFacts`; every term is named, so a
prediction can be read and checked. Bytes throughout (GB = 10^9 bytes in reports).

Where the terms come from:
- Weights, gradients and AdamW moments: the parameters in the dtypes training gives
  them (float32 trainable parameters over `torch_dtype` frozen ones), gradients in the
  parameter's dtype, two moments per trainable parameter. DDP adds its gradient
  buckets (one more copy of the trainable gradients); FSDP (FULL_SHARD) divides
  parameters, gradients and moments by the devices and adds the gathered units (the
  root unit stays gathered through forward and backward, plus two decoder units,
  the working one and the prefetched one) in the compute dtype.
- Activations saved for backward, per token and decoder layer, counted tensor by
  tensor from what Gemma 3's layer keeps under autocast (checked against
  `saved_tensors_hooks` in `tests/model/test_plan.py`): the float32 inputs of the six
  RMS norms (`4 x 4 H + 4 q + 4 kv`), SDPA's q, k, v and output in the compute dtype
  (no T x T matrix is kept), three MLP intermediates; trainable linear layers keep
  their input (`full`), LoRA adapters their dropout mask, dropped input and rank-wide
  middle. With gradient checkpointing each layer keeps only its input (the residual
  stream: float32 when the embedding trains in float32), and one layer is recomputed
  at a time.
- The loss step (`loss_impl: torch`, `medkor.model.fused_loss`): one chunk of logits
  (float32 plus the compute-dtype copy: 6 B per logit under bf16), the head cast to
  the compute dtype while the loss runs, the hidden-state gradient; the head
  gradient is a head-sized float32 buffer formed in the forward pass (it becomes
  `.grad`; a second one during accumulation micro-batches after the first). Lightning
  zeroes gradients between a step's forward and its backward, so the previous step's
  gradients are still held while the loss runs.
- The optimizer step: torch's fused AdamW kernel (what `build_optimizer` picks where
  torch has one) makes no temporaries; the per-tensor step makes two the size of the
  largest trainable tensor.
- KorMedMCQA evaluation (no gradients, after `zero_grad`): one layer's intermediates
  for `eval_batch x eval_tokens` and the last-position logits.
- The runtime: the CUDA context and allocator slack on a GPU (a fixed allowance); on
  CPU the tokenizers and what checking the growth leaves, as loading them grew the
  planning process (compare with a process's resident memory above its imports).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from medkor.model.plan import ModelFacts

GB = 10**9
GIB = 2**30
CUDA_RUNTIME_BYTES = int(2.5 * GB)  # CUDA context (~0.5-1 GB) plus the caching allocator's slack
HEAD_BLOCK_ROWS = 16384  # medkor.model.fused_loss._HEAD_BLOCK_ROWS


@dataclass(frozen=True)
class RunSetup:
    """What the config asks of each device.

    Attributes:
        device: `cuda` or `cpu`.
        devices: processes (GPUs) in the run, all nodes together.
        strategy: `single`, `ddp` or `fsdp`.
        compute_bytes: element size the matmuls run in (2 under bf16/16-mixed or a half
            `torch_dtype`, 4 in float32).
        micro_batch / seq_len: rows per micro-batch and tokens per row.
        gradient_checkpointing: decoder layers recomputed in backward (the module's
            option or the FSDP strategy's activation checkpointing).
        accumulate: micro-batches per optimizer step.
        loss_impl / loss_chunk: `medkor.model.loss` implementation and its chunk size.
        eval_batch / eval_tokens: KorMedMCQA questions per forward pass and their length.
        device_memory: bytes one device has.
        fused_optimizer: `medkor.model.optim.build_optimizer` picks torch's fused AdamW
            kernel on this device (no temporaries); otherwise the per-tensor step.
    """

    device: str = "cuda"
    devices: int = 1
    strategy: str = "single"
    compute_bytes: int = 2
    micro_batch: int = 1
    seq_len: int = 512
    gradient_checkpointing: bool = True
    accumulate: int = 1
    loss_impl: str = "torch"
    loss_chunk: int = 512
    eval_batch: int = 16
    eval_tokens: int = 512
    device_memory: int = 80 * GIB
    fused_optimizer: bool = True


@dataclass
class MemoryPlan:
    """Predicted bytes per device, by term, and the peak over the moments of a step."""

    weights: int
    gradients: int
    optimizer_states: int
    activations: int
    activations_other: int  # the same with gradient checkpointing the other way round
    loss_step: int
    optimizer_step: int
    evaluation: int
    runtime: int
    moments: dict[str, int]
    peak: int
    peak_at: str
    device_memory: int
    notes: list[str] = field(default_factory=list)
    terms: dict[str, dict[str, int]] = field(default_factory=dict)  # per moment: every term it adds up

    @property
    def fits(self) -> bool:
        return self.peak <= self.device_memory

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fits": self.fits}


def activation_bytes_per_token(f: ModelFacts, s: RunSetup) -> tuple[int, int]:
    """(bytes per token, fixed bytes) one decoder layer keeps for backward without checkpointing."""
    c, h = s.compute_bytes, f.hidden
    q, kv, inter = f.heads * f.head_dim, f.kv_heads * f.head_dim, f.intermediate
    per_token = (4 * 4 * h + 4 * q + 4 * kv      # float32 inputs of the four layer norms and q/k norms
                 + c * (q + 2 * kv) + c * q      # SDPA's q, k, v and output
                 + 4 * f.heads                   # SDPA's log-sum-exp
                 + 4 * (4 + f.heads + f.kv_heads)  # the norms' reciprocal RMS (per head for q and k)
                 + 3 * c * inter)                # MLP: gate and up outputs, activation
    fixed = 4 * (4 * h + 2 * f.head_dim)  # the norms' float32 (1 + weight)
    if _layer_trains(f):  # trainable norms keep their normalised input, trainable linears their input
        per_token += 4 * 4 * h + 4 * q + c * (5 * h + q + inter)
        if c < 4 and s.strategy != "fsdp":  # FSDP gathers them in the compute dtype already
            fixed += c * f.layer_params  # autocast's compute-dtype copies of the float32 weights
    if f.lora_per_layer:
        mask = 0 if f.lora_dropout == 0 else (1 if s.device == "cuda" else 4)
        per_token += (mask + c) * f.lora_in_features + c * f.lora_rank * f.lora_per_layer
        fixed += c * f.lora_layer_params if c < 4 else 0
    return per_token, fixed


def _layer_trains(f: ModelFacts) -> bool:
    return any(p.policy == "full" for p in f.phases)


def stream_bytes(f: ModelFacts, s: RunSetup) -> int:
    """Element size of the residual stream between layers: the embedding's output dtype."""
    return f.embedding_dtype_bytes if s.strategy != "fsdp" else s.compute_bytes


def activations(f: ModelFacts, s: RunSetup, checkpointing: bool) -> int:
    """Bytes saved for backward at the peak of a micro-batch (the loss's own buffers apart)."""
    tokens = s.micro_batch * s.seq_len
    per_token, fixed = activation_bytes_per_token(f, s)
    stream = stream_bytes(f, s) * f.hidden
    masks = 2 * s.micro_batch * s.seq_len * s.seq_len  # boolean full and sliding-window masks, shared by layers
    top = tokens * (stream + 4 * f.hidden)  # the final norm's input and output
    if checkpointing:
        # each layer's input, one layer recomputed, and the gradient flowing through it
        return f.layers * tokens * stream + tokens * per_token + fixed + 2 * tokens * stream + masks + top
    return f.layers * (tokens * per_token + fixed) + masks + top


def loss_step(f: ModelFacts, s: RunSetup) -> int:
    """Bytes the loss holds beyond activations and gradients while it runs (forward of the fused loss)."""
    tokens = s.micro_batch * s.seq_len
    c, h, v = s.compute_bytes, f.hidden, f.head_rows
    head_bytes = 4 if f.head_trainable else f.frozen_dtype_bytes
    if s.strategy == "fsdp":
        head_bytes = c  # gathered in the compute dtype
    head_copy = c * v * h if c < head_bytes else 0
    hidden = tokens * h * (stream_bytes(f, s) + c + stream_bytes(f, s))  # shifted input, its cast, its gradient
    if s.loss_impl == "cce":
        return head_copy + hidden
    chunk = min(s.loss_chunk, tokens)
    logits = chunk * v * (4 + c if c < 4 else 4)
    # the head gradient's half-precision product goes through a block of head rows where the device
    # cannot add it into the float32 buffer directly (CPU); CUDA's addmm takes a float32 output
    block = HEAD_BLOCK_ROWS * h * c if (f.head_trainable and c < 4 and s.device != "cuda") else 0
    return head_copy + logits + hidden + block


def optimizer_step(f: ModelFacts, s: RunSetup) -> int:
    """Temporaries of AdamW's step: none with the fused kernel; per tensor (CPU), the square root of the
    second moment and its quotient, two buffers the size of the largest trainable tensor."""
    if s.fused_optimizer or not f.trainable_params:
        return 0
    largest = f.largest_trainable // (s.devices if s.strategy == "fsdp" else 1)
    return 2 * 4 * largest


def evaluation(f: ModelFacts, s: RunSetup) -> int:
    """One layer's intermediates (no gradients) for a KorMedMCQA batch, and its last-position logits."""
    tokens = s.eval_batch * s.eval_tokens
    c = s.compute_bytes
    layer = tokens * (c * 3 * f.intermediate + 4 * 2 * f.hidden + c * (f.heads + 2 * f.kv_heads) * f.head_dim)
    return layer + 2 * tokens * f.hidden * stream_bytes(f, s) + s.eval_batch * f.head_rows * 4


def plan_memory(f: ModelFacts, s: RunSetup) -> MemoryPlan:
    """The predicted peak per device and the terms it is made of."""
    n = s.devices if s.strategy == "fsdp" else 1
    trainable_grad = f.trainable_bytes  # gradients in the parameters' dtype
    notes: list[str] = []
    if s.strategy == "fsdp":
        flat = 4 * f.total_params  # FSDP trains with model.torch_dtype float32 (one dtype per flat unit)
        gathered = 0
        if f.fsdp is not None:
            gathered = s.compute_bytes * (f.fsdp.root_params + 2 * f.fsdp.largest_params)
            notes.append(f"FSDP: {f.fsdp.count} units of {', '.join(f.fsdp.classes)} "
                         f"({f.fsdp.largest_params / 1e6:,.1f} M parameters each) and the root "
                         f"({f.fsdp.root_params / 1e6:,.1f} M), sharded over {n} devices")
        weights = flat // n + gathered
        gradients = 4 * f.trainable_params // n + (s.compute_bytes * f.fsdp.largest_params if f.fsdp else 0)
    else:
        weights = f.weight_bytes
        gradients = trainable_grad * (2 if s.strategy == "ddp" else 1)  # DDP's buckets hold a copy
    # AdamW's two moments take their parameter's dtype (float32 but for `torch_dtype: auto` on a half checkpoint)
    moments = (8 * f.trainable_params if s.strategy == "fsdp" else 2 * f.trainable_bytes) // n
    act = activations(f, s, s.gradient_checkpointing)
    act_other = activations(f, s, not s.gradient_checkpointing)
    loss = loss_step(f, s)
    head_grad = 4 * f.head_rows * f.hidden if f.head_trainable else 0
    dense_grad = head_grad  # the embedding lookup's own gradient of a trainable tied embedding
    if s.strategy == "fsdp" and head_grad:
        # the loss forms the whole head's gradient on every rank (float32, then cast to the gathered
        # compute dtype) before FSDP reduce-scatters it; the lookup's gradient is in that dtype too
        head_grad += s.compute_bytes * f.head_rows * f.hidden
        dense_grad = s.compute_bytes * f.head_rows * f.hidden
    second_head = head_grad if (s.accumulate > 1 and s.loss_impl == "torch") else 0
    opt = optimizer_step(f, s)
    ev = evaluation(f, s)
    # GPU: the CUDA context and allocator slack; CPU: the tokenizers a training process holds in RAM
    runtime = CUDA_RUNTIME_BYTES if s.device == "cuda" else f.host_bytes
    static = weights + moments + runtime
    # tied trainable embedding: its own dense gradient arrives at the end of backward, beside the head's;
    # `new_embeddings` masks old rows in a hook that clones the gradient it is given
    tied_grad = dense_grad if (f.head_tied and f.embedding_trainable) else 0
    if any(p.policy == "new_embeddings" for p in f.phases):
        tied_grad += dense_grad
    # Lightning zeroes gradients after the training step's forward, just before backward: the
    # previous step's gradients are still there while the next forward and loss run, and
    # through an evaluation that follows an optimizer step.
    held = {"weights": weights, "optimizer states": moments, "runtime": runtime, "gradients": gradients}
    terms = {
        # loss forward: earlier gradients, every activation saved, the new head gradient, the loss's buffers
        "loss": {**held, "activations": act, "head gradient": head_grad,
                 "second head gradient (accumulation)": second_head, "loss step": loss},
        # end of backward: all gradients, the embedding's dense gradient beside them
        "backward": {**held, "embedding's dense gradient": tied_grad},
        "optimizer step": {**held, "optimizer step": opt},
        "evaluation": {**held, "evaluation": ev},
    }
    terms = {moment: {k: v for k, v in parts.items() if v} for moment, parts in terms.items()}
    points = {moment: sum(parts.values()) for moment, parts in terms.items()}
    peak_at = max(points, key=points.get)
    return MemoryPlan(weights, gradients, moments, act, act_other, loss, opt, ev, runtime, points,
                      points[peak_at], peak_at, s.device_memory, notes, terms)

