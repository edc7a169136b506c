"""Training parity with PyTorch: jaxbert's jitted multitask step against the PyTorch reference loop of
`benchmarks/torch_reference.py` (transformers' `BertModel`, the course heads, the course's AdamW, PCGrad),
step for step.

Both start from the same weights (the encoder from one Hugging Face folder, the heads jaxbert initialized copied
into the torch heads) and take the same round-robin batches, drawn and padded by jaxbert's data pipeline, with
dropout off. At every step each task's loss agrees within 1e-5 relative; at the end every parameter tensor lies
within 1e-4 of its scale (its largest magnitude).
"""

import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import tiny_checkpoint, write_fixture_data
from jaxbert import build
from jaxbert import data as data_lib
from jaxbert.config import load_config
from jaxbert.convert import params_to_hf_state
from jaxbert.tokenization import BertTokenizer
from jaxbert.train_step import data_mesh, replicate, shard_batch, step_keys, updates_per_step
from jaxbert.training import plan_for, step_batches

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_reference  # noqa: E402

STEPS = 20
LOSS_RTOL = 1e-5
PARAM_TOLERANCE = 1e-4  # of each tensor's largest magnitude
NO_DROPOUT = {"model.hidden_dropout": 0.0, "model.attention_dropout": 0.0, "heads.dropout": 0.0}
VARIANTS = {
    "cross_para_cosine_sts": {},
    "bi_para_cross_sts": {"heads.para_encoding": "bi", "heads.sts_encoding": "cross", "heads.sts_head": "linear"},
    "weight_decay": {"train.weight_decay": 0.01},  # the pooler, which no head reads, is left alone
    "pooler_sst_concat_sts": {"heads.sst_pooling": "pooler", "heads.sts_head": "cosine_concat",
                              "train.weight_decay": 0.01},
    "pcgrad": {"train.surgery": "pcgrad"},
    "accumulation": {"train.accumulation_steps": 2},
    "per_task_updates": {"train.updates": "per_task"},
}
# A random tiny BERT gives nearly the same [CLS] vector to every input, and the cosine of two nearly parallel
# vectors has a gradient that cancels in float32 (PCGrad's projections of nearly orthogonal task gradients then
# amplify the difference). Mean pooling keeps its sentence embeddings apart; MiniLM runs the [CLS] default.
TINY_POOLING = {"heads.sst_pooling": "mean", "heads.pair_pooling": "mean"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    return {"tiny": with_random_biases(tiny_checkpoint(root / "tiny")), "data": write_fixture_data(root / "data")}


def with_random_biases(folder):
    """The tiny BERT with every bias and LayerNorm shift drawn at random, as in a trained checkpoint: Hugging
    Face's init sets them to zero, and the attention key bias, whose gradient is zero in exact arithmetic, would
    then hold nothing but rounding noise to compare."""
    model = transformers.BertModel.from_pretrained(folder)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.02 * torch.randn(p.shape, generator=generator))
    model.save_pretrained(folder)
    return folder


def parity_config(checkpoint, data_dir, variant, lr, batch_size, base=None):
    overrides = {"model.checkpoint": str(checkpoint), "data.data_dir": str(data_dir), "data.cache_dir": None,
                 "data.max_length": 32, "data.buckets": [32], "train.batch_size": batch_size, "train.lr": lr,
                 "train.epoch_length": "steps", "train.steps_per_epoch": STEPS, "train.epochs": 1,
                 **NO_DROPOUT, **(base or {}), **VARIANTS[variant]}
    return load_config(None, overrides)


def jax_run(config):
    """jaxbert's jitted step, built as the trainer builds it, over the first epoch's plan: the initial params
    (one seed), the host batches, each step's task losses and PCGrad visiting orders, and the final params."""
    encoder, mesh = build.load_encoder(config, log=lambda _: None), data_mesh()
    model = build.model(config, encoder.config)
    params = build.initial_params(model, encoder.params, [config.train.seed])
    data = data_lib.load_task_data(config, BertTokenizer(encoder.vocab), ["train"], log=lambda _: None)
    train = {task: splits["train"] for task, splits in data.items()}
    plan = plan_for(config, train, 0)
    tx = build.optimizer(config, params, len(plan) * updates_per_step(config.train, len(config.tasks)))
    step = build.train_step(model, tx, config, [config.train.seed], mesh)
    initial = jax.device_get(jax.tree.map(lambda x: x[0], params))
    state = replicate(build.train_state(params, tx, config), mesh)
    batches, losses, orders = [], [], []
    for k, indices in enumerate(plan):
        host = step_batches(train, indices, config.data.buckets)
        state, metrics = step(state, shard_batch(host, mesh))
        batches.append(host)
        losses.append({task: float(metrics[f"loss/{task}"][0]) for task in host})
        orders.append(pcgrad_orders(build.base_keys([config.train.seed])[0], k, len(host)))
    return initial, batches, losses, orders, jax.device_get(jax.tree.map(lambda x: x[0], state.params)), encoder.config


def pcgrad_orders(base_key, step, num_tasks):
    """Task i's PCGrad visiting order at `step`: `permutation(fold_in(surgery_key, i), T)`, as
    `jaxbert.gradients.pcgrad` documents, the surgery key being the step's (`train_step.step_keys`)."""
    _, surgery_key = step_keys(base_key, step, num_tasks)
    return [np.asarray(jax.random.permutation(jax.random.fold_in(surgery_key, i), num_tasks)).tolist()
            for i in range(num_tasks)]


def torch_model(config, initial):
    """The reference model on the same encoder checkpoint, its heads set to jaxbert's initial head params."""
    h = config.heads
    bert = transformers.BertModel.from_pretrained(config.model.checkpoint, attn_implementation="eager",
                                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = torch_reference.Multitask(bert, sst_pooling=h.sst_pooling, pair_pooling=h.pair_pooling,
                                      para_encoding=h.para_encoding, sts_encoding=h.sts_encoding,
                                      sts_head=h.sts_head, dropout=h.dropout)
    with torch.no_grad():
        for task, head in model.heads.items():
            head.weight.copy_(torch.tensor(np.asarray(initial[task]["kernel"]).T))
            head.bias.copy_(torch.tensor(np.asarray(initial[task]["bias"])))
    return model


def as_torch_names(params, bert_config):
    """jaxbert params under the reference model's `named_parameters` names."""
    named = {f"bert.{name}": value for name, value in params_to_hf_state(params["bert"], bert_config).items()}
    for task, head in params.items():
        if task != "bert":
            named[f"heads.{task}.weight"] = np.asarray(head["kernel"]).T
            named[f"heads.{task}.bias"] = np.asarray(head["bias"])
    return named


def check_parity(config, label):
    t = config.train
    initial, batches, jax_losses, orders, final, bert_config = jax_run(config)
    model = torch_model(config, initial)
    optimizer = torch_reference.course_adamw(model, t.lr, t.weight_decay, t.eps)
    worst_loss = 0.0
    for k, host in enumerate(batches):
        torch_losses = torch_reference.train_step(model, optimizer, host, surgery=t.surgery, updates=t.updates,
                                                  accumulation=t.accumulation_steps, orders=orders[k])
        for task, expected in torch_losses.items():
            error = abs(jax_losses[k][task] - expected) / abs(expected)
            worst_loss = max(worst_loss, error)
            assert error < LOSS_RTOL, f"{label}: step {k} {task} loss {jax_losses[k][task]} vs torch {expected}"
    ours, start = as_torch_names(final, bert_config), as_torch_names(initial, bert_config)
    theirs = {name: p.detach().numpy() for name, p in model.named_parameters()}
    assert set(ours) == set(theirs)
    # A tensor that is all zeros in both (an unused pooler's bias) is compared absolutely.
    scale = {name: float(np.max(np.abs(expected))) or 1.0 for name, expected in theirs.items()}
    error = {name: float(np.max(np.abs(ours[name] - expected))) / scale[name] for name, expected in theirs.items()}
    moved = {name: float(np.max(np.abs(expected - start[name]))) / scale[name] for name, expected in theirs.items()}
    # Softmax is shift-invariant over the keys, so an attention key bias has a zero gradient in exact arithmetic:
    # both frameworks move it by rounding noise alone, which is all there is to compare. That it stays noise:
    for name in [name for name in theirs if name.endswith("attention.self.key.bias")]:
        assert moved[name] < 1e-3 and np.max(np.abs(ours[name] - start[name])) / scale[name] < 1e-3, name
        del error[name]
    worst = max(error, key=error.get)
    encoder_moved = np.median([moved[name] for name in error if name.startswith("bert.")])
    print(f"{label}: worst loss error {worst_loss:.1e} (relative), worst parameter error {error[worst]:.1e} of its "
          f"tensor's scale ({worst}); the median encoder tensor moved {encoder_moved:.1e} of its scale")
    assert error[worst] < PARAM_TOLERANCE, f"{label}: {worst} differs by {error[worst]:.2e} of its scale"
    # Training moved the encoder well beyond the tolerance: the comparison is not of two models that barely moved.
    assert encoder_moved > 10 * PARAM_TOLERANCE


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_bert_trains_like_pytorch(folders, variant):
    check_parity(parity_config(folders["tiny"], folders["data"], variant, lr=3e-4, batch_size=8, base=TINY_POOLING),
                 f"tiny {variant}")


def test_minilm_trains_like_pytorch(folders, minilm_dir):
    """The default recipe ([CLS] features, Quora cross-encoded, STS as the cosine of bi-encoded sentences) on real
    weights. (The variants run on the tiny BERT: PCGrad's projections of nearly orthogonal task gradients amplify
    float32 rounding, and at this learning rate they take MiniLM's losses to ~1e-5 apart by step 10.)"""
    check_parity(parity_config(minilm_dir, folders["data"], "cross_para_cosine_sts", lr=1e-4, batch_size=4),
                 "MiniLM")
