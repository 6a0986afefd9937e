"""The course's labs as each one is written: its model, built in its order with its
initialisation, and its training loop (torchvision's MNIST with ToTensor, a
DataLoader(shuffle=True, drop_last=True), CrossEntropyLoss, the lab's optimizer, and
`zero_grad`, forward, loss, `backward`, `step`, `avg_cost += cost / total_batch`).
tests/test_labs.py holds mnist-ray to them bit for bit; bench/bench.py times them.

    from labs import LABS, lab_setup, lab_epoch, run_lab    # tests/ on sys.path
    model, avg_cost, costs = run_lab(data_dir, LABS["cnn"], flatten=False, steps=50)

    setup = lab_setup(data_dir, "mlp")                      # seeded; the lab's optimizer
    avg_cost, costs = lab_epoch(setup, flatten=True)         # one epoch, timed by the caller
"""

from __future__ import annotations

import random
from typing import NamedTuple

import torch

CPU = torch.device("cpu")
# float32 sums (and so the costs) depend on the thread count. One, as in a Ray task that
# holds one CPU; it also keeps a comparison quick on a busy machine.
THREADS = 1


# ---- the labs' models, as each lab builds them -------------------------------------------------


def lab_07_4():
    return torch.nn.Linear(784, 10, bias=True)


def lab_10_2():
    linear1 = torch.nn.Linear(784, 256, bias=True)
    linear2 = torch.nn.Linear(256, 256, bias=True)
    linear3 = torch.nn.Linear(256, 10, bias=True)
    relu = torch.nn.ReLU()
    return torch.nn.Sequential(linear1, relu, linear2, relu, linear3)


def lab_10_3():
    linear1 = torch.nn.Linear(784, 256, bias=True)
    linear2 = torch.nn.Linear(256, 256, bias=True)
    linear3 = torch.nn.Linear(256, 10, bias=True)
    relu = torch.nn.ReLU()
    torch.nn.init.xavier_uniform_(linear1.weight)
    torch.nn.init.xavier_uniform_(linear2.weight)
    torch.nn.init.xavier_uniform_(linear3.weight)
    return torch.nn.Sequential(linear1, relu, linear2, relu, linear3)


def lab_10_4():
    linear1 = torch.nn.Linear(784, 512, bias=True)
    linear2 = torch.nn.Linear(512, 512, bias=True)
    linear3 = torch.nn.Linear(512, 512, bias=True)
    linear4 = torch.nn.Linear(512, 512, bias=True)
    linear5 = torch.nn.Linear(512, 10, bias=True)
    relu = torch.nn.ReLU()
    torch.nn.init.xavier_uniform_(linear1.weight)
    torch.nn.init.xavier_uniform_(linear2.weight)
    torch.nn.init.xavier_uniform_(linear3.weight)
    torch.nn.init.xavier_uniform_(linear4.weight)
    torch.nn.init.xavier_uniform_(linear5.weight)
    # The lab's file stops its Sequential at linear3 (512 outputs, a slip); the model it
    # builds, initialises and describes has all five layers, as lab 10-5 uses them.
    return torch.nn.Sequential(linear1, relu, linear2, relu, linear3, relu, linear4, relu, linear5)


def lab_10_5():
    keep_prob = 0.7
    linear1 = torch.nn.Linear(784, 512, bias=True)
    linear2 = torch.nn.Linear(512, 512, bias=True)
    linear3 = torch.nn.Linear(512, 512, bias=True)
    linear4 = torch.nn.Linear(512, 512, bias=True)
    linear5 = torch.nn.Linear(512, 10, bias=True)
    relu = torch.nn.ReLU()
    dropout = torch.nn.Dropout(p=1 - keep_prob)
    torch.nn.init.xavier_uniform_(linear1.weight)
    torch.nn.init.xavier_uniform_(linear2.weight)
    torch.nn.init.xavier_uniform_(linear3.weight)
    torch.nn.init.xavier_uniform_(linear4.weight)
    torch.nn.init.xavier_uniform_(linear5.weight)
    return torch.nn.Sequential(
        linear1, relu, dropout,
        linear2, relu, dropout,
        linear3, relu, dropout,
        linear4, relu, dropout,
        linear5,
    )  # fmt: skip


class Lab11CNN(torch.nn.Module):  # lab-11-1-mnist_cnn.py
    def __init__(self):
        super().__init__()
        self.layer1 = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.layer2 = torch.nn.Sequential(
            torch.nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.fc = torch.nn.Linear(7 * 7 * 64, 10, bias=True)
        torch.nn.init.xavier_uniform_(self.fc.weight)

    def forward(self, x):
        out = self.layer1(x)
        out = self.layer2(out)
        out = out.view(out.size(0), -1)
        out = self.fc(out)
        return out


class Lab11DeepCNN(torch.nn.Module):  # lab-11-2-mnist_deep_cnn.py
    def __init__(self):
        super().__init__()
        self.keep_prob = 0.5
        self.layer1 = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, kernel_size=3, stride=1, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.layer2 = torch.nn.Sequential(
            torch.nn.Conv2d(32, 64, kernel_size=3, stride=1, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(kernel_size=2, stride=2),
        )
        self.layer3 = torch.nn.Sequential(
            torch.nn.Conv2d(64, 128, kernel_size=3, stride=1, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(kernel_size=2, stride=2, padding=1),
        )
        self.fc1 = torch.nn.Linear(4 * 4 * 128, 625, bias=True)
        torch.nn.init.xavier_uniform_(self.fc1.weight)
        self.layer4 = torch.nn.Sequential(
            self.fc1, torch.nn.ReLU(), torch.nn.Dropout(p=1 - self.keep_prob)
        )
        self.fc2 = torch.nn.Linear(625, 10, bias=True)
        torch.nn.init.xavier_uniform_(self.fc2.weight)

    def forward(self, x):
        out = self.layer1(x)
        out = self.layer2(out)
        out = self.layer3(out)
        out = out.view(out.size(0), -1)
        out = self.layer4(out)
        out = self.fc2(out)
        return out


LABS = {
    "softmax": lab_07_4,
    "mlp": lab_10_2,
    "mlp-xavier": lab_10_3,
    "mlp-deep": lab_10_4,
    "mlp-dropout": lab_10_5,
    "cnn": Lab11CNN,
    "cnn-deep": Lab11DeepCNN,
}


class Setup(NamedTuple):
    model: torch.nn.Module
    loader: torch.utils.data.DataLoader
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer


def lab_setup(
    data_dir, name: str, optimizer: str | None = None, lr: float | None = None, device=CPU
) -> Setup:
    """The lab's program up to its loop: both seeds, torchvision's MNIST with ToTensor, the
    DataLoader, the lab's model (built after the seed, then moved, as the labs do), the
    loss and the optimizer (the lab's own unless given: SGD lr 0.1 for the tutorial,
    Adam lr 0.001 from lab 10 on)."""
    import torchvision.datasets as dsets
    import torchvision.transforms as transforms

    from mnist_ray.config import MODEL_DEFAULTS

    default_optimizer, default_lr = MODEL_DEFAULTS[name]
    optimizer, lr = optimizer or default_optimizer, lr or default_lr
    random.seed(777)
    torch.manual_seed(777)
    mnist_train = dsets.MNIST(
        root=str(data_dir), train=True, transform=transforms.ToTensor(), download=True
    )
    data_loader = torch.utils.data.DataLoader(
        dataset=mnist_train, batch_size=100, shuffle=True, drop_last=True
    )
    model = LABS[name]().to(device)
    criterion = torch.nn.CrossEntropyLoss().to(device)
    make = torch.optim.SGD if optimizer == "sgd" else torch.optim.Adam
    return Setup(model, data_loader, criterion, make(model.parameters(), lr=lr))


def lab_epoch(
    setup: Setup, *, flatten: bool, steps: int | None = None, device=CPU
) -> tuple[torch.Tensor, list[float]]:
    """One epoch of the lab's loop, or its first `steps` steps: the epoch's avg_cost (a
    float32 tensor, as the lab prints it) and each step's cost."""
    model, data_loader, criterion, optimizer = setup
    total_batch = len(data_loader)
    model.train()
    avg_cost = 0
    costs = []
    for X, Y in data_loader:
        if flatten:
            X = X.view(-1, 28 * 28)
        X, Y = X.to(device), Y.to(device)
        optimizer.zero_grad()
        hypothesis = model(X)
        cost = criterion(hypothesis, Y)
        cost.backward()
        optimizer.step()
        avg_cost += cost / total_batch
        costs.append(cost.detach())
        if len(costs) == steps:
            break
    return avg_cost, [c.item() for c in costs]


def run_lab(data_dir, build, *, flatten: bool, steps: int | None = None):
    """The labs' program up to its test section, with THREADS threads: one epoch, or its
    first `steps` steps. Returns the model, the epoch's avg_cost (a float32 tensor) and
    each step's cost."""
    torch.set_num_threads(THREADS)
    (name,) = [n for n, b in LABS.items() if b is build]
    setup = lab_setup(data_dir, name)
    avg_cost, costs = lab_epoch(setup, flatten=flatten, steps=steps)
    return setup.model, avg_cost, costs
