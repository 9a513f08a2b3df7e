"""PyTorch eager reference for the criterion benches `step_lenet300_sparse_vd` and
`step_lenet5_sparse_vd`: the same Sparse VD training step (LRT forward, N*CE + beta*KL,
backward, Adam) at batch 100, timed as the median over repeated steps.

Only for side-by-side speed comparisons; never needed by the harness or its tests.
Run: python3 crates/runner/benches/pytorch_reference.py --threads 2
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


def median_step_ms(model, steps, warmup):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
    times = []
    for i in range(warmup + steps):
        x = torch.randn(100, 784) * 0.3
        y = torch.randint(0, 10, (100,))
        start = time.perf_counter()
        logits, kl = model(x)
        loss = 60000 * F.cross_entropy(logits, y) + kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name, model in [("step_lenet300_sparse_vd", LeNet300()), ("step_lenet5_sparse_vd", LeNet5())]:
        ms = median_step_ms(model, args.steps, warmup=10)
        print(json.dumps({"bench": name, "median_ms": round(ms, 2), "threads": args.threads,
                          "torch": torch.__version__}))


if __name__ == "__main__":
    main()
