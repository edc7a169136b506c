"""The PyTorch reference of jaxbert's multitask training, written from the definitions, not from jaxbert's code.

Hugging Face's `BertModel` under the three course heads, the minBERT course's AdamW, PCGrad, and one training
step in the course's loop style (backward, then an optimizer step; a parameter no loss reaches keeps
`grad = None` and is skipped, as PyTorch's optimizers skip it). `tests/test_training_parity.py` checks jaxbert's
step against it step for step, `benchmarks/parity_ab.py` trains both on the same recipe, and
`benchmarks/bench_step.py` times it. Test-only: torch and transformers are not jaxbert dependencies.

Heads, as the course defines them on pooled sentence embeddings (`[CLS]`, the pooler, or a masked mean or max):
  sst   dropout → linear → 5 logits, cross-entropy;
  para  cross-encoded ([CLS] s1 [SEP] s2 [SEP]): dropout → linear → 1 logit; bi-encoded: (u, v, |u − v|, u·v) →
        dropout → linear → 1 logit; binary cross-entropy;
  sts   bi-encoded: 5·max(cos(u, v), 0) (`cosine`, no parameters) or (u, v, cos) → dropout → linear
        (`cosine_concat`); cross-encoded: dropout → linear (`linear`); mean squared error.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import torch

F = torch.nn.functional
Batch = Mapping[str, np.ndarray]
TASKS = ("sst", "para", "sts")


class Multitask(torch.nn.Module):
    """One `transformers.BertModel` and the three heads. `loss(task, batch)` is that task's float32 loss."""

    def __init__(self, bert, *, sst_pooling: str = "cls", pair_pooling: str = "cls", para_encoding: str = "cross",
                 sts_encoding: str = "bi", sts_head: str = "cosine", dropout: float = 0.1):
        super().__init__()
        self.bert = bert
        self.sst_pooling, self.pair_pooling = sst_pooling, pair_pooling
        self.encoding = {"sst": "single", "para": para_encoding, "sts": sts_encoding}
        self.sts_head = sts_head if sts_encoding == "bi" else "linear"
        self.dropout = torch.nn.Dropout(dropout)
        d = bert.config.hidden_size
        self.heads = torch.nn.ModuleDict({"sst": torch.nn.Linear(d, 5),
                                          "para": torch.nn.Linear(4 * d if para_encoding == "bi" else d, 1)})
        if self.sts_head == "linear":
            self.heads["sts"] = torch.nn.Linear(d, 1)
        elif self.sts_head == "cosine_concat":
            self.heads["sts"] = torch.nn.Linear(2 * d + 1, 1)

    def embed(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor, pooling: str) -> torch.Tensor:
        """`[batch, seq]` ids → pooled `[batch, hidden]`."""
        out = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types)
        hidden = out.last_hidden_state
        if pooling == "cls":
            return hidden[:, 0]
        if pooling == "pooler":
            return out.pooler_output
        real = mask[..., None].to(hidden.dtype)
        if pooling == "mean":
            return (hidden * real).sum(1) / real.sum(1).clamp(min=1)
        if pooling == "max":
            return hidden.masked_fill(real == 0, torch.finfo(hidden.dtype).min).max(1).values
        raise ValueError(f"pooling {pooling!r}")

    def output(self, task: str, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """sst logits `[batch, 5]`, the para logit `[batch]` or the sts score `[batch]`."""
        encoding = self.encoding[task]
        first = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        if encoding != "bi":
            pooled = self.embed(*first, self.sst_pooling if task == "sst" else self.pair_pooling)
            logits = self.heads[task](self.dropout(pooled))
            return logits if task == "sst" else logits[:, 0]
        both = [torch.cat([a, batch[f"{k}_b"]]) for a, k in zip(first, ("input_ids", "attention_mask",
                                                                        "token_type_ids"))]
        u, v = self.embed(*both, self.pair_pooling).chunk(2)  # one encoder call for both sentences
        cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)).clamp(min=1e-8)
        if task == "sts" and self.sts_head == "cosine":
            return 5.0 * torch.relu(cos)
        features = torch.cat([u, v, cos[:, None]] if task == "sts" else [u, v, (u - v).abs(), u * v], -1)
        return self.heads[task](self.dropout(features))[:, 0]

    def loss(self, task: str, batch: Batch) -> torch.Tensor:
        tensors = {k: torch.as_tensor(v) for k, v in batch.items()}  # NumPy arrays, or tensors on a device
        out = self.output(task, {k: v.long() for k, v in tensors.items() if k != "labels"}).float()
        labels = tensors["labels"]
        if task == "sst":
            return F.cross_entropy(out, labels.long())
        if task == "para":
            return F.binary_cross_entropy_with_logits(out, labels.float())
        return F.mse_loss(out, labels.float())


def decays(name: str) -> bool:
    """The BERT fine-tuning convention: weight decay on every parameter but biases and LayerNorm gains."""
    return not (name.endswith("bias") or "LayerNorm" in name)


class CourseAdamW(torch.optim.Optimizer):
    """The minBERT course's AdamW (`optimizer.py` of the assignment), per parameter:

        m ← β₁m + (1 − β₁)g,  v ← β₂v + (1 − β₂)g²,  t ← t + 1 (the parameter's own step count),
        p ← p − lr·√(1 − β₂ᵗ)/(1 − β₁ᵗ) · m/(√v + ε),  then  p ← p − lr·λ·p  (decay after the Adam step).

    A parameter whose `grad` is None is skipped: no moment, count or decay changes.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            (b1, b2), lr = group["betas"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t))
                if group["weight_decay"]:
                    p.add_(p, alpha=-lr * group["weight_decay"])


def course_adamw(model: torch.nn.Module, lr: float, weight_decay: float = 0.0, eps: float = 1e-6) -> CourseAdamW:
    named = list(model.named_parameters())
    return CourseAdamW([{"params": [p for n, p in named if decays(n)], "weight_decay": weight_decay},
                        {"params": [p for n, p in named if not decays(n)], "weight_decay": 0.0}], lr, eps=eps)


def pcgrad(grads: Sequence[torch.Tensor], orders: Sequence[Sequence[int]]) -> torch.Tensor:
    """PCGrad (Yu et al. 2020, Algorithm 1) on flattened task gradients, summed: task i's gradient is projected
    off every other task's original gradient it conflicts with, visiting them in `orders[i]`."""
    projected = []
    for i, g in enumerate(grads):
        g = g.clone()
        for j in orders[i]:
            if j != i and (dot := g @ grads[j]) < 0:
                g -= dot / (grads[j] @ grads[j]) * grads[j]
        projected.append(g)
    return torch.stack(projected).sum(0)


def micro_batches(batches: Mapping[str, Batch], k: int, steps: int) -> dict[str, dict[str, np.ndarray]]:
    """Rows k, k + steps, k + 2·steps, ... of every task's batch."""
    return {task: {name: np.asarray(v)[k::steps] for name, v in batch.items()} for task, batch in batches.items()}


def backward(model: Multitask, batches: Mapping[str, Batch], tasks: Sequence[str], accumulation: int) -> dict:
    """Backpropagates the sum of `tasks`' losses, averaged over `accumulation` micro-batches, into `.grad`
    (set to None first); returns each task's loss, averaged likewise."""
    for p in model.parameters():
        p.grad = None
    losses = dict.fromkeys(tasks, 0.0)
    for k in range(accumulation):
        micro = micro_batches(batches, k, accumulation)
        task_losses = {task: model.loss(task, micro[task]) for task in tasks}
        (sum(task_losses.values()) / accumulation).backward()
        for task, loss in task_losses.items():
            losses[task] += loss.item() / accumulation
    return losses


def train_step(model: Multitask, optimizer: torch.optim.Optimizer, batches: Mapping[str, Batch], *,
               surgery: str = "none", updates: str = "joint", accumulation: int = 1,
               orders: Sequence[Sequence[int]] | None = None) -> dict[str, float]:
    """One step on `{task: batch}` (losses summed); returns each task's loss. `surgery` "pcgrad" takes each
    task's gradient alone and projects the encoder's with `pcgrad` in the visiting `orders` (each head keeps its
    own task's gradient); `updates` "per_task" makes one optimizer update per task, tasks in sorted order."""
    tasks = sorted(batches)
    if updates == "per_task":
        losses = {}
        for task in tasks:
            losses.update(backward(model, batches, [task], accumulation))
            optimizer.step()
        return losses
    if surgery == "none":
        losses = backward(model, batches, tasks, accumulation)
        optimizer.step()
        return losses
    if surgery != "pcgrad":
        raise ValueError(f"surgery {surgery!r}")
    named = list(model.named_parameters())
    losses, task_grads = {}, []
    for task in tasks:
        losses.update(backward(model, batches, [task], accumulation))
        task_grads.append({n: p.grad for n, p in named})
    encoder = [(n, p) for n, p in named if n.startswith("bert.")
               and any(g[n] is not None for g in task_grads)]
    flat = [torch.cat([(g[n] if g[n] is not None else torch.zeros_like(p)).reshape(-1) for n, p in encoder])
            for g in task_grads]
    combined = pcgrad(flat, orders).split([p.numel() for _, p in encoder])
    for (n, p), g in zip(encoder, combined):
        p.grad = g.reshape(p.shape)
    for n, p in named:
        if not n.startswith("bert."):
            reached = [g[n] for g in task_grads if g[n] is not None]
            p.grad = sum(reached) if reached else None
    optimizer.step()
    return losses
