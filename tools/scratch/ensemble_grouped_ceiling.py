"""What batching 16 BadNets CNNs (28x28) can buy on one CPU thread: one forward+backward step, three ways.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python tools/scratch/ensemble_grouped_ceiling.py [MODELS] [BATCH]``

- vmap: ``torch.vmap`` over ``functional_call`` with stacked parameters, as ``train_ensemble`` does;
- grouped by hand: the same network written directly as grouped convolutions on a ``(B, N*C, H, W)`` tensor and
  ``baddbmm`` linear layers, no vmap (the fastest layout available without new kernels);
- sequential: one model after the other, as ``train_sequential`` does.

If the hand-written grouped step is not faster than the sequential one, no rewrite of the batched trainer can
reach a multiple of the loop on this CPU for this network: the convolutions are compute-bound per model.
"""
import sys
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state

from art_backdoor_ext.models import build_model

torch.set_num_threads(1)
torch.manual_seed(0)
n, b = (int(sys.argv[1]) if len(sys.argv) > 1 else 16), (int(sys.argv[2]) if len(sys.argv) > 2 else 32)
models = [build_model("badnets-cnn") for _ in range(n)]
stacked, buffers = stack_module_state(models)
p = {k: v.detach().requires_grad_(True) for k, v in stacked.items()}
base = build_model("badnets-cnn").to("meta")
x, y = torch.rand(n, b, 1, 28, 28), torch.randint(0, 10, (n, b))
batched_forward = torch.vmap(lambda params, bufs, xb: functional_call(base, (params, bufs), (xb,)))


def loss_grad(logits: torch.Tensor, params: list) -> None:
    torch.autograd.grad(F.cross_entropy(logits.reshape(n * b, -1), y.reshape(-1)), params)


def vmap_step() -> None:
    loss_grad(batched_forward(p, buffers, x), list(p.values()))


def grouped_step() -> None:
    h = x.transpose(0, 1).reshape(b, n, 28, 28)
    h = F.conv2d(h, p["conv1.weight"].reshape(n * 16, 1, 5, 5), p["conv1.bias"].reshape(-1), groups=n)
    h = F.avg_pool2d(F.relu(h), 2)
    h = F.conv2d(h, p["conv2.weight"].reshape(n * 32, 16, 5, 5), p["conv2.bias"].reshape(-1), groups=n)
    h = F.avg_pool2d(F.relu(h), 2).reshape(b, n, 32 * 16).transpose(0, 1)
    h = F.relu(torch.baddbmm(p["fc1.bias"][:, None, :], h, p["fc1.weight"].transpose(1, 2)))
    loss_grad(torch.baddbmm(p["logits.bias"][:, None, :], h, p["logits.weight"].transpose(1, 2)), list(p.values()))


def sequential_step() -> None:
    for i, model in enumerate(models):
        torch.autograd.grad(F.cross_entropy(model(x[i]), y[i]), list(model.parameters()))


def milliseconds(step, reps: int = 15) -> float:
    step()
    step()
    start = time.perf_counter()
    for _ in range(reps):
        step()
    return (time.perf_counter() - start) / reps * 1e3


for run in (1, 2, 3):
    v, g, s = milliseconds(vmap_step), milliseconds(grouped_step), milliseconds(sequential_step)
    print(f"run {run}: {n} models, batch {b}: vmap {v:.1f} ms, grouped by hand {g:.1f} ms, sequential {s:.1f} ms "
          f"(sequential / grouped {s / g:.2f}x)", flush=True)
