"""A staged `trainable` schedule: phases of trainable policies switched inside one run.

EEVE trains a grown model in stages: the new embedding rows first, then more. With
`model.trainable` a list of phases, medkor does that in one run:

    trainable:
      - {policy: new_embeddings, until_step: 2000}
      - {policy: embeddings+lora}

How it stays one optimizer:
- Every parameter that any phase trains requires a gradient when the optimizer (and a
  DDP wrapper) is built, so the optimizer holds all of them from the start; LoRA
  adapters are added from the start when any phase uses them (their zero-initialised
  B matrices leave the model unchanged until they train).
- At each step the phase of `global_step` is applied: parameters outside it get
  `requires_grad=False` and no gradient (`None`), and torch's AdamW skips a parameter
  whose gradient is `None` entirely (no step, no decay, no moment update), so a
  waiting parameter keeps its value and a paused one keeps its moments.
- `new_embeddings` phases mask the old rows' gradient and take the embedding group's
  weight decay away; entering one clears the old rows' AdamW moments (left by an
  earlier phase that trained the whole embedding), so old rows then stay exactly put.
- The phase is a function of `global_step` alone, so a resumed run re-applies the
  phase of its checkpoint's step and continues exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from medkor.model.policies import (
    LORA_POLICIES,
    POLICIES,
    LoraOptions,
    PolicyResult,
    add_lora,
    check_new_rows,
    embedding_parameters,
    old_rows_grad_mask,
    policy_parameters,
)


@dataclass
class TrainablePhase:
    """One phase of a staged `trainable` schedule.

    Args:
        policy: what trains in this phase: `new_embeddings`, `embeddings`,
            `embeddings+lora`, `lora` or `full`.
        until_step: the phase ends when this many optimizer steps are done (the next
            phase trains step `until_step` on); null for the last phase, which lasts
            to the end of the run.
    """

    policy: str  # checked by parse_phases, whose errors name the phase
    until_step: Optional[int] = None


def parse_phases(trainable: Union[str, Sequence[Any]], key: str = "model.trainable") -> list[TrainablePhase]:
    """`trainable` as a checked list of phases (a single policy is one phase).

    Raises a one-line `ValueError` naming `key[i]` and what to change.
    """
    if isinstance(trainable, str):
        if trainable not in POLICIES:
            raise ValueError(f"{key} {trainable!r} is not one of {', '.join(POLICIES)}, nor a list of phases")
        items: list[Any] = [{"policy": trainable}]
    elif isinstance(trainable, (list, tuple)) and trainable:
        items = list(trainable)
    else:
        raise ValueError(f"{key} must be a policy ({', '.join(POLICIES)}) or a non-empty list of phases, "
                         f"got {trainable!r}")
    phases = []
    for i, item in enumerate(items):
        if isinstance(item, TrainablePhase):
            item = asdict(item)
        if not isinstance(item, dict) or set(item) - {"policy", "until_step"} or "policy" not in item:
            raise ValueError(f"{key}[{i}] must be a mapping with policy and until_step, got {item!r}")
        policy, until = item["policy"], item.get("until_step")
        if policy not in POLICIES:
            raise ValueError(f"{key}[{i}].policy {policy!r} is not one of {', '.join(POLICIES)}")
        last = i == len(items) - 1
        if last and until is not None:
            raise ValueError(f"{key}[{i}].until_step must be null: the last phase lasts to the end of the run, "
                             f"got {until!r}")
        if not last and (isinstance(until, bool) or not isinstance(until, int) or until < 1):
            raise ValueError(f"{key}[{i}].until_step must be an integer >= 1 (optimizer steps done when the "
                             f"phase ends), got {until!r}")
        if not last and phases and phases[-1].until_step is not None and until <= phases[-1].until_step:
            raise ValueError(f"{key}[{i}].until_step {until} must be greater than the previous phase's "
                             f"{phases[-1].until_step}")
        phases.append(TrainablePhase(policy, until))
    return phases


def phase_dicts(phases: Sequence[TrainablePhase]) -> list[dict]:
    """Plain dicts (for hyper-parameters: checkpoints load them without extra allowed types)."""
    return [asdict(phase) for phase in phases]


def phase_at(phases: Sequence[TrainablePhase], step: int) -> int:
    """Index of the phase that trains optimizer step `step` (0-based count of steps done)."""
    for i, phase in enumerate(phases):
        if phase.until_step is None or step < phase.until_step:
            return i
    return len(phases) - 1


class TrainableSchedule:
    """Switches the trainable set of one model between phases.

    Args:
        model: the model being trained (peft-wrapped when a phase uses LoRA).
        phases: the checked phases (`parse_phases`).
        n_old_rows: embedding rows that `new_embeddings` phases keep frozen.
    """

    def __init__(self, model: nn.Module, phases: Sequence[TrainablePhase], n_old_rows: int) -> None:
        self.phases = list(phases)
        self.n_old_rows = n_old_rows
        self.embeddings = embedding_parameters(model)
        self.sets = [{id(p) for p in policy_parameters(model, phase.policy)} for phase in self.phases]
        every = set().union(*self.sets)
        self.params = [p for p in model.parameters() if id(p) in every]  # parameters() lists tied ones once
        self.current: Optional[int] = None
        self._hooks: list = []

    def everything_on(self) -> None:
        """Every parameter of any phase requires a gradient (for building the optimizer and DDP)."""
        for param in self.params:
            param.requires_grad_(True)

    def apply(self, index: int, optimizer: Optional[torch.optim.Optimizer] = None,
              weight_decay: float = 0.0) -> bool:
        """Make phase `index` the trainable set; True when it changed.

        With `optimizer`, the embedding group's weight decay is 0 in `new_embeddings`
        phases and `weight_decay` in others, and entering `new_embeddings` clears the
        old rows' AdamW moments.
        """
        if index == self.current:
            return False
        phase, members = self.phases[index], self.sets[index]
        for param in self.params:
            param.requires_grad_(id(param) in members)
            if id(param) not in members:
                param.grad = None
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        masked = phase.policy == "new_embeddings"
        if masked:
            self._hooks = [old_rows_grad_mask(p, self.n_old_rows) for p in self.embeddings]
        if optimizer is not None:
            embedding_ids = {id(p) for p in self.embeddings}
            for group in optimizer.param_groups:
                if any(id(p) in embedding_ids for p in group["params"]):
                    group["weight_decay"] = 0.0 if masked else weight_decay
            if masked:
                for param in self.embeddings:
                    for name, value in optimizer.state.get(param, {}).items():
                        if name != "step" and torch.is_tensor(value) and value.shape == param.shape:
                            value[: self.n_old_rows] = 0
        self.current = index
        return True


def apply_schedule(
    model: nn.Module,
    phases: Sequence[TrainablePhase],
    *,
    n_old_rows: int,
    lora: Optional[LoraOptions] = None,
) -> tuple[PolicyResult, TrainableSchedule]:
    """Set up `model` for a multi-phase schedule: adapters if any phase uses them, all phases' parameters on.

    The policy result's `embedding_params` are the embeddings when any phase trains
    them; `decay_exempt` stays empty since the schedule sets that group's decay per phase.
    """
    if any(phase.policy == "new_embeddings" for phase in phases):
        check_new_rows(model, n_old_rows)
    for param in model.parameters():
        param.requires_grad_(False)
    if any(phase.policy in LORA_POLICIES for phase in phases):
        model = add_lora(model, lora or LoraOptions())
    schedule = TrainableSchedule(model, phases, n_old_rows)
    schedule.everything_on()
    embeddings = schedule.embeddings if any(phase.policy != "lora" for phase in phases) else []
    return PolicyResult(model, embeddings, []), schedule
