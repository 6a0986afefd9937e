"""The classic MNIST tutorial program, and the numbers it printed: the reference the tests
and docs/reference.md hold mnist-ray to.

    python tests/reference.py                  # MNIST from $MNIST_RAY_DATA, else downloaded
    python tests/reference.py --data-dir DIR   # a folder holding MNIST/raw/

The program is the tutorial's softmax regression as it was written (nn.Linear(784, 10),
SGD lr 0.1, batch 100, DataLoader(shuffle=True, drop_last=True), 15 epochs,
CrossEntropyLoss, `random.seed(777)` and `torch.manual_seed(777)` first, on the CPU),
with two lines added after its own output and marked as added: the accuracy with the
test pixels scaled to 0..1 as training scaled them (the tutorial fed them as 0..255),
and the softmax of its random sample. It takes about 25 s on a 2-core CPU.

The constants below are what it printed on the project's build machine (2-core x86-64
CPU, torch 2.14.1, torchvision's reading of the MNIST files whose md5 sums
mnist_ray/data.py checks). A rerun on another machine can differ in the last printed
digit of a few costs: each is a float32 sum of 600 terms whose rounding follows the
host's BLAS code path (docs/reference.md says more). The steps themselves do not differ:
tests/test_train.py runs `classic_training` beside mnist-ray's loop and compares the
weights bit for bit.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path

# ---- what the program printed -----------------------------------------------------------------

# "Epoch: 0001 cost = 0.535150588" ... "Epoch: 0015 cost = 0.274422765"
TUTORIAL_COSTS = [
    0.535150588, 0.359577745, 0.331264257, 0.316404700, 0.307106972,
    0.300456554, 0.294933408, 0.290956199, 0.287074089, 0.284515619,
    0.281914055, 0.279526860, 0.277636588, 0.275874794, 0.274422765,
]  # fmt: skip
# How far another machine's costs may be from these: each epoch's cost is a float32 sum of
# 600 terms, whose last bits follow the host's vector path (AVX2, AVX-512) and torch's
# thread count. Measured on 2-core hosts (AVX2, and AVX-512 with 1 and 2 threads): at most
# 2 float32 ulps off (5.9e-8 at 0.31); allowed: 3 ulps of a cost in 0.25..0.5. The steps
# themselves are exact: tests/test_train.py compares them with the classic loop run on
# the same host, bit for bit.
COST_TOLERANCE = 9e-8
TUTORIAL_ACCURACY = 0.8883  # "Accuracy: 0.8883000016212463": test pixels fed as 0..255
SCALED_ACCURACY = 0.9226  # added line: test pixels scaled like training's; 9226 of 10000
SCALED_CORRECT = 9226
SAMPLE_INDEX = 3757  # random.randint(0, 9999), the first draw of Python's RNG after seed 777
SAMPLE_LABEL = 8
SAMPLE_PREDICTION = 3
SAMPLE_SOFTMAX = {3: 0.673, 8: 0.116}  # added line, pixels scaled: p(3) and p(8)


# ---- the program --------------------------------------------------------------------------------


def classic_training(root: str, epochs: int = 15, log=print):
    """The tutorial's training loop, as written; returns (the nn.Linear, the float costs)."""
    import torch
    import torchvision.datasets as dsets
    import torchvision.transforms as transforms

    random.seed(777)
    torch.manual_seed(777)
    mnist_train = dsets.MNIST(root=root, train=True, transform=transforms.ToTensor(), download=True)
    data_loader = torch.utils.data.DataLoader(
        dataset=mnist_train, batch_size=100, shuffle=True, drop_last=True
    )
    linear = torch.nn.Linear(784, 10, bias=True)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(linear.parameters(), lr=0.1)
    costs = []
    for epoch in range(epochs):
        avg_cost = 0
        total_batch = len(data_loader)
        for X, Y in data_loader:
            X = X.view(-1, 28 * 28)
            optimizer.zero_grad()
            hypothesis = linear(X)
            cost = criterion(hypothesis, Y)
            cost.backward()
            optimizer.step()
            avg_cost += cost / total_batch
        log(f"Epoch: {epoch + 1:04d} cost = {avg_cost.item():.9f}")
        costs.append(avg_cost.item())
    log("Learning finished")
    return linear, costs


def classic_evaluation(root: str, linear, log=print) -> dict:
    """The tutorial's test: accuracy on unscaled pixels and one random sample; then the two
    added lines. Call right after classic_training: the sample is the next random draw."""
    import torch
    import torchvision.datasets as dsets
    import torchvision.transforms as transforms

    mnist_test = dsets.MNIST(root=root, train=False, transform=transforms.ToTensor(), download=True)
    with torch.no_grad():
        # the tutorial's `test_data` / `test_labels`: the raw uint8 tensors, here as float
        X_test = mnist_test.data.view(-1, 28 * 28).float()
        Y_test = mnist_test.targets
        prediction = linear(X_test)
        correct_prediction = torch.argmax(prediction, 1) == Y_test
        accuracy = correct_prediction.float().mean()
        log(f"Accuracy: {accuracy.item()}")

        r = random.randint(0, len(mnist_test) - 1)
        X_single_data = mnist_test.data[r : r + 1].view(-1, 28 * 28).float()
        Y_single_data = mnist_test.targets[r : r + 1]
        log(f"Label:  {Y_single_data.item()}")
        single_prediction = linear(X_single_data)
        log(f"Prediction:  {torch.argmax(single_prediction, 1).item()}")

        # added: the test pixels scaled as training's ToTensor scaled them
        scaled = linear(X_test / 255)
        scaled_correct = int((torch.argmax(scaled, 1) == Y_test).sum())
        scaled_accuracy = (torch.argmax(scaled, 1) == Y_test).float().mean().item()
        probabilities = torch.softmax(scaled[r].double(), 0)
        label = int(Y_single_data.item())
        predicted = int(torch.argmax(scaled[r]).item())
        log(f"(added) accuracy with test pixels scaled to 0..1 like training: {scaled_accuracy}")
        log(
            f"(added) random sample {r}: label {label}, predicted {predicted} "
            f"(softmax {probabilities[predicted]:.3f} for {predicted}, "
            f"{probabilities[label]:.3f} for {label})"
        )
    return {
        "accuracy": accuracy.item(),
        "scaled_accuracy": scaled_accuracy,
        "scaled_correct": scaled_correct,
        "sample": r,
        "label": label,
        "prediction": predicted,
        "probabilities": probabilities.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("MNIST_RAY_DATA") or str(Path.home() / ".cache" / "mnist-ray"),
        help="the folder holding MNIST/raw/ (default: $MNIST_RAY_DATA, else ~/.cache/mnist-ray)",
    )
    args = parser.parse_args()
    linear, _ = classic_training(args.data_dir)
    classic_evaluation(args.data_dir, linear)


if __name__ == "__main__":
    main()
