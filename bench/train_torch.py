"""airbench94 in PyTorch: the same network and recipe as ``train.cifar10``.

The reference point for the JAX/jspatial training job: float32, channels_last, eager
PyTorch, by default on the CPU with ``torch.set_num_threads(2)`` (the cores of the machine
this project is benchmarked on); ``--device cuda`` puts the data and the network on a GPU
(``bench.device --recipe``). The network, initialisation, optimiser, schedule, augmentation
(alternating flips, reflect-padded translate by 2), lookahead and TTA follow Keller
Jordan's airbench94 (github.com/KellerJordan/cifar10-airbench), minus its float16 compute.

    python -m bench.train_torch --steps 5          # throughput of 5 train steps at batch 1024
    python -m bench.train_torch --full             # a whole 9.9-epoch run with test accuracy
    python -m bench.train_torch --full --train-limit 10000 --epochs 1
    python -m bench.train_torch --full --device cuda --json out.json   # on a GPU

Output: images/s of the train step (after one warm-up step) and, with ``--full``, the test
accuracy with and without TTA and the wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HYP = dict(
    epochs=9.9, batch_size=1024, lr=11.5, momentum=0.85, weight_decay=0.0153, bias_scaler=64.0,
    label_smoothing=0.2, whiten_bias_epochs=3, ema_start_epochs=3, ema_decay_base=0.95,
    ema_decay_pow=3.0, ema_every_n_steps=5, translate=2, widths=(64, 256, 256),
    bn_momentum=0.6, scaling_factor=1 / 9,
)  # fmt: skip
CIFAR_MEAN = torch.tensor((0.4914, 0.4822, 0.4465))
CIFAR_STD = torch.tensor((0.2470, 0.2435, 0.2616))


def torch_sync(device: str):
    """A function that waits until ``device`` has finished its queued work: PyTorch's
    CUDA calls return before their kernels do (``torch.cuda.synchronize``); CPU ones don't."""
    return torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)


# ---------------------------------------------------------------------------- network


class BatchNorm(nn.BatchNorm2d):
    """airbench's BatchNorm: eps 1e-12, scale frozen at 1; ``momentum`` in airbench's sense
    (``1 - momentum`` goes to PyTorch, so 0.6 keeps 0.6 of the old running statistic)."""

    def __init__(self, num_features, momentum=HYP["bn_momentum"], eps=1e-12):
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False


class Conv(nn.Conv2d):
    """3x3 'same' conv without bias; PyTorch's init, then identity on the first filters."""

    def __init__(self, c_in, c_out, kernel_size=3, padding="same", bias=False):
        super().__init__(c_in, c_out, kernel_size=kernel_size, padding=padding, bias=bias)

    def reset_parameters(self):
        super().reset_parameters()
        if self.bias is not None:
            self.bias.data.zero_()
        w = self.weight.data
        torch.nn.init.dirac_(w[: w.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1, self.pool, self.norm1 = Conv(c_in, c_out), nn.MaxPool2d(2), BatchNorm(c_out)
        self.conv2, self.norm2, self.activ = Conv(c_out, c_out), BatchNorm(c_out), nn.GELU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class Mul(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


def make_net(widths=HYP["widths"]):
    """airbench94: whiten(2x2, frozen) - GELU - 3 ConvGroups - maxpool3 - linear - x1/9."""
    whiten_width = 2 * 3 * 2**2
    net = nn.Sequential(
        Conv(3, whiten_width, kernel_size=2, padding=0, bias=True),
        nn.GELU(),
        ConvGroup(whiten_width, widths[0]),
        ConvGroup(widths[0], widths[1]),
        ConvGroup(widths[1], widths[2]),
        nn.MaxPool2d(3),
        nn.Flatten(),
        nn.Linear(widths[2], 10, bias=False),
        Mul(HYP["scaling_factor"]),
    )
    net[0].weight.requires_grad = False
    return net.to(memory_format=torch.channels_last)


def init_whitening(layer, images, eps=5e-4):
    """Eigenvectors of the 2x2-patch covariance, scaled by 1/sqrt(eigenvalue + eps), +-."""
    c, (h, w) = images.shape[1], layer.weight.shape[2:]
    patches = images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w).float()
    flat = patches.view(len(patches), -1)
    eigenvalues, eigenvectors = torch.linalg.eigh(flat.T @ flat / len(flat), UPLO="U")
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.reshape(-1, c, h, w).flip(0)
    scaled = eigenvectors / torch.sqrt(eigenvalues + eps).view(-1, 1, 1, 1)
    layer.weight.data[:] = torch.cat((scaled, -scaled))


# ---------------------------------------------------------------------------- data


def batch_crop(images, crop_size, generator):
    """Random crop of reflect-padded images: masked copies per vertical then horizontal shift."""
    r = (images.size(-1) - crop_size) // 2
    # Drawn by the CPU generator wherever the images are: the same crops on every device.
    shifts = torch.randint(-r, r + 1, size=(len(images), 2), generator=generator)
    shifts = shifts.to(images.device)
    like = dict(dtype=images.dtype, device=images.device)
    tmp = torch.empty((len(images), 3, crop_size, crop_size + 2 * r), **like)
    out = torch.empty((len(images), 3, crop_size, crop_size), **like)
    for s in range(-r, r + 1):
        mask = shifts[:, 0] == s
        tmp[mask] = images[mask, :, r + s : r + s + crop_size, :]
    for s in range(-r, r + 1):
        mask = shifts[:, 1] == s
        out[mask] = tmp[mask, :, :, r + s : r + s + crop_size]
    return out


class Loader:
    """airbench's CifarLoader: pre-flipped, pre-padded, alternating flips; the whole split
    lives on ``device``, the random draws come from the CPU ``generator``."""

    def __init__(self, images, labels, batch_size, train, generator, device="cpu"):
        images = torch.from_numpy(images).to(device).float() / 255
        mean, std = CIFAR_MEAN.to(device), CIFAR_STD.to(device)
        self.images = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        self.labels = torch.from_numpy(labels).long().to(device)
        self.batch_size, self.train, self.generator, self.epoch = batch_size, train, generator, 0
        if train:
            flip = (torch.rand(len(images), generator=generator) < 0.5).to(device)
            flipped = torch.where(flip.view(-1, 1, 1, 1), self.images.flip(-1), self.images)
            pad = HYP["translate"]
            self.padded = F.pad(flipped, (pad,) * 4, "reflect")

    def __len__(self):
        n = len(self.images)
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def __iter__(self):
        images = self.images
        if self.train:
            images = batch_crop(self.padded, self.images.shape[-1], self.generator)
            if self.epoch % 2 == 1:
                images = images.flip(-1)
            self.epoch += 1
            order = torch.randperm(len(images), generator=self.generator)
        else:
            order = torch.arange(len(images))
        order = order.to(images.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield images[idx].contiguous(memory_format=torch.channels_last), self.labels[idx]


# ---------------------------------------------------------------------------- training


def make_optimizer(net, total_steps, batch_size):
    kilostep_scale = 1024 * (1 + 1 / (1 - HYP["momentum"]))
    lr = HYP["lr"] / kilostep_scale
    wd = HYP["weight_decay"] * batch_size / kilostep_scale
    lr_biases = lr * HYP["bias_scaler"]
    named = [(k, p) for k, p in net.named_parameters() if p.requires_grad]
    norm_biases = [p for k, p in named if "norm" in k]
    others = [p for k, p in named if "norm" not in k]
    groups = [
        dict(params=norm_biases, lr=lr_biases, weight_decay=wd / lr_biases),
        dict(params=others, lr=lr, weight_decay=wd / lr),
    ]
    optimizer = torch.optim.SGD(groups, momentum=HYP["momentum"], nesterov=True)
    xp, fp = [0, int(0.23 * total_steps), total_steps], [0.2, 1.0, 0.07]
    schedule = lambda step: float(np.interp(step, xp, fp))  # noqa: E731
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def evaluate(net, loader, tta):
    def mirror(x):
        return 0.5 * net(x) + 0.5 * net(x.flip(-1))

    def mirror_translate(x):
        padded = F.pad(x, (1,) * 4, "reflect")
        shifted = [padded[:, :, :32, :32], padded[:, :, 2:34, 2:34]]
        return 0.5 * mirror(x) + 0.25 * (mirror(shifted[0]) + mirror(shifted[1]))

    net.eval()
    with torch.no_grad():
        logits = torch.cat([(mirror_translate if tta else net)(x) for x, _ in loader])
    net.train()
    return (logits.argmax(1) == loader.labels).float().mean().item()


def run(args):
    from train.data import load_cifar10

    start = time.perf_counter()
    cifar = load_cifar10(args.data_dir)
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    train_images = cifar.train_images[: args.train_limit]
    train_labels = cifar.train_labels[: args.train_limit]
    batch_size = min(args.batch_size, len(train_images))
    train = Loader(train_images, train_labels, batch_size, True, generator, args.device)
    test = Loader(cifar.test_images, cifar.test_labels, 2000, False, generator, args.device)
    total_steps = math.ceil(len(train) * args.epochs)
    if args.steps:
        total_steps = args.steps + 1  # one warm-up step, then the timed ones

    net = make_net().to(args.device, memory_format=torch.channels_last)
    init_whitening(net[0], train.images[:5000])
    optimizer, scheduler = make_optimizer(net, total_steps, batch_size)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=HYP["label_smoothing"], reduction="none")
    sync = torch_sync(args.device)  # wherever a clock is read
    ema, step, timed_start = None, 0, None
    for epoch in range(math.ceil(total_steps / len(train))):
        net[0].bias.requires_grad = epoch < HYP["whiten_bias_epochs"]
        t0 = time.perf_counter()
        for x, y in train:
            if step == 1:
                sync()
                timed_start = time.perf_counter()
            loss = loss_fn(net(x), y).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            every = HYP["ema_every_n_steps"]
            if args.full and epoch >= HYP["ema_start_epochs"] and step % every == 0:
                params = net.state_dict()
                if ema is None:
                    ema = {k: v.clone() for k, v in params.items()}
                else:
                    rho = (
                        HYP["ema_decay_base"] ** every
                        * (step / total_steps) ** HYP["ema_decay_pow"]
                    )
                    for k, v in params.items():
                        if v.dtype == torch.float:
                            ema[k].lerp_(v, 1 - rho)
                            v.copy_(ema[k])
            if step >= total_steps:
                break
        if ema is not None:
            for k, v in net.state_dict().items():
                if v.dtype == torch.float:
                    v.copy_(ema[k])
        if args.full:
            acc = evaluate(net, test, tta=False)
            print(f"epoch {epoch + 1}: loss {loss.item() / batch_size:.4f}  test_acc {acc:.4f}  "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
    sync()
    steps_timed = step - 1
    train_s = time.perf_counter() - timed_start if timed_start else float("nan")
    print(f"torch {torch.__version__} on {args.device}, {torch.get_num_threads()} threads, "
          f"batch {batch_size}: {steps_timed * batch_size / train_s:.1f} images/s over "
          f"{steps_timed} steps ({train_s / max(steps_timed, 1):.2f} s/step)")  # fmt: skip
    result = dict(torch=torch.__version__, device=args.device, batch_size=batch_size,
                  steps=step, images_per_second=steps_timed * batch_size / train_s)  # fmt: skip
    if args.full:
        tta_acc = evaluate(net, test, tta=True)
        result.update(test_accuracy=tta_acc, test_accuracy_no_tta=acc, epochs=args.epochs)
        print(f"test accuracy {100 * tta_acc:.2f}% (no TTA {100 * acc:.2f}%) in "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    result["wall_time_s"] = time.perf_counter() - start
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--steps", type=int, default=5, help="time N steps after a warm-up step")
    mode.add_argument("--full", action="store_true", help="a whole training run + accuracy")
    p.add_argument("--epochs", type=float, default=HYP["epochs"])
    p.add_argument("--batch-size", type=int, default=HYP["batch_size"])
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where the data and the network live: "
                   "cpu, cuda, cuda:1, ...")  # fmt: skip
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.full:
        args.steps = 0
    torch.set_num_threads(args.threads)
    result = run(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
