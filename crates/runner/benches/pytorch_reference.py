"""PyTorch eager reference for the criterion benches `step_lenet300_sparse_vd`,
`step_lenet5_sparse_vd` and `step_vgglike_k*_sparse_vd`: the same Sparse VD training step (LRT
forward, N*CE + beta*KL, backward, Adam) at batch 100, timed as the median over repeated steps.
VGG-like also has its binary-dropout pretraining step (`step_vgglike_k*_binary_dropout`).

Only for side-by-side speed comparisons; never needed by the harness or its tests.
Run: python3 crates/runner/benches/pytorch_reference.py --threads 2
     python3 crates/runner/benches/pytorch_reference.py --device cuda --nets vgglike_k1.0
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

K1, K2, K3 = 0.63576, 1.87320, 1.48695


class SvdWeights(torch.nn.Module):
    """theta, log sigma^2 and bias; `linear_map` is matmul or conv2d."""

    def __init__(self, theta, units):
        super().__init__()
        self.theta = torch.nn.Parameter(theta)
        self.log_sigma2 = torch.nn.Parameter(torch.full_like(theta, -10.0))
        self.bias = torch.nn.Parameter(torch.zeros(units))

    def forward(self, x, linear_map, bias_shape, threshold=3.0):
        log_alpha = torch.clamp(self.log_sigma2 - torch.log(self.theta ** 2 + 1e-8), -8.0, 8.0)
        mean_w = self.theta.masked_fill(log_alpha >= threshold, 0.0)
        gamma = linear_map(x, mean_w) + self.bias.view(bias_shape)
        delta = linear_map(x * x, torch.exp(self.log_sigma2))
        out = gamma + torch.sqrt(delta + 1e-8) * torch.randn_like(gamma)
        kl = (K1 - K1 * torch.sigmoid(K2 + K3 * log_alpha) + 0.5 * F.softplus(-log_alpha)).sum()
        return out, kl


def dense(i, o):
    return SvdWeights(torch.randn(i, o) * 0.01, o)


def conv(i, o, k):
    w = torch.empty(o, i, k, k)
    torch.nn.init.xavier_uniform_(w)
    return SvdWeights(w, o)


class LeNet300(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = torch.nn.ModuleList([dense(784, 300), dense(300, 100), dense(100, 10)])

    def forward(self, x):
        kl = 0.0
        for i, layer in enumerate(self.layers):
            x, k = layer(x, lambda a, w: a @ w, (1, -1))
            kl = kl + k
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x, kl


class LeNet5(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = conv(1, 20, 5), conv(20, 50, 5)
        self.dense1, self.dense2 = dense(800, 500), dense(500, 10)

    def forward(self, x):
        x = x.view(-1, 1, 28, 28)
        c = lambda a, w: F.conv2d(a, w)
        x, k1 = self.conv1(x, c, (1, -1, 1, 1))
        x, k2 = self.conv2(F.max_pool2d(F.relu(x), 2), c, (1, -1, 1, 1))
        x = F.max_pool2d(F.relu(x), 2).flatten(1)
        x, k3 = self.dense1(x, lambda a, w: a @ w, (1, -1))
        x, k4 = self.dense2(F.relu(x), lambda a, w: a @ w, (1, -1))
        return x, k1 + k2 + k3 + k4


VGG_WIDTHS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"]


class VggLike(torch.nn.Module):
    """Zagoruyko's CIFAR VGG with batch norm (eps 1e-3), widths int(c*k); every conv and dense
    layer Sparse VD (`sparse_vd=True`) or plain with binary dropout 0.3 / 0.4 / 0.5 (the
    pretraining net)."""

    def __init__(self, k, sparse_vd):
        super().__init__()
        self.sparse_vd = sparse_vd
        self.convs, self.norms, self.drops, self.plan = (torch.nn.ModuleList(),
                                                         torch.nn.ModuleList(), [], [])
        c_in = 3
        for i, w in enumerate(VGG_WIDTHS):
            if w == "M":
                self.plan.append("M")
                continue
            c_out = int(w * k)
            self.convs.append(conv(c_in, c_out, 3) if sparse_vd else
                              torch.nn.Conv2d(c_in, c_out, 3, padding=1))
            self.norms.append(torch.nn.BatchNorm2d(c_out, eps=1e-3))
            followed_by_conv = i + 1 < len(VGG_WIDTHS) and VGG_WIDTHS[i + 1] != "M"
            self.drops.append(0.3 if i == 0 else 0.4 if followed_by_conv else 0.0)
            self.plan.append(len(self.convs) - 1)
            c_in = c_out
        hidden = int(512 * k)
        self.dense1 = dense(hidden, hidden) if sparse_vd else torch.nn.Linear(hidden, hidden)
        self.norm_dense = torch.nn.BatchNorm1d(hidden, eps=1e-3)
        self.dense2 = dense(hidden, 10) if sparse_vd else torch.nn.Linear(hidden, 10)

    def layer(self, module, x, linear_map, bias_shape):
        if self.sparse_vd:
            return module(x, linear_map, bias_shape)
        return module(x), 0.0

    def forward(self, x):
        x, kl = x.view(-1, 3, 32, 32), 0.0
        c = lambda a, w: F.conv2d(a, w, padding=1)
        for step in self.plan:
            if step == "M":
                x = F.max_pool2d(x, 2)
                continue
            x, k = self.layer(self.convs[step], x, c, (1, -1, 1, 1))
            x, kl = F.relu(self.norms[step](x)), kl + k
            if not self.sparse_vd and self.drops[step] > 0:
                x = F.dropout(x, self.drops[step])
        x, k1 = self.layer(self.dense1, x.flatten(1), lambda a, w: a @ w, (1, -1))
        x = F.relu(self.norm_dense(x))
        if not self.sparse_vd:
            x = F.dropout(x, 0.5)
        x, k2 = self.layer(self.dense2, x, lambda a, w: a @ w, (1, -1))
        return x, kl + k1 + k2


def median_step_ms(model, inputs, train_size, steps, warmup, device):
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for i in range(warmup + steps):
        x = torch.randn(100, inputs, device=device) * 0.3
        y = torch.randint(0, 10, (100,), device=device)
        sync()
        start = time.perf_counter()
        logits, kl = model(x)
        loss = train_size * F.cross_entropy(logits, y) + kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def nets(k):
    """Bench name → (model, input size, training-set size)."""
    return {
        "step_lenet300_sparse_vd": (LeNet300, 784, 60000),
        "step_lenet5_sparse_vd": (LeNet5, 784, 60000),
        f"step_vgglike_k{k}_sparse_vd": (lambda: VggLike(k, True), 3072, 50000),
        f"step_vgglike_k{k}_binary_dropout": (lambda: VggLike(k, False), 3072, 50000),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--nets", default="lenet300,lenet5",
                        help="comma-separated: lenet300, lenet5, vgglike_k<k> (e.g. vgglike_k1.0)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for net in args.nets.split(","):
        k = float(net.removeprefix("vgglike_k")) if net.startswith("vgglike_k") else 1.0
        chosen = {n: v for n, v in nets(k).items() if n.startswith(f"step_{net}_")}
        if not chosen:
            parser.error(f"unknown net {net!r}: expected lenet300, lenet5 or vgglike_k<k> "
                         f"with k written as a decimal (vgglike_k1.0)")
        for name, (make, inputs, train_size) in chosen.items():
            ms = median_step_ms(make(), inputs, train_size, args.steps, 10, args.device)
            device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
            print(json.dumps({"bench": name, "median_ms": round(ms, 2), "threads": args.threads,
                              "device": device, "torch": torch.__version__}), flush=True)


if __name__ == "__main__":
    main()
