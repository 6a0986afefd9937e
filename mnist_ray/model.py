"""The models: the course's MNIST programs as nn.Modules, each written once, found by name.

    from mnist_ray.model import get_model, list_models, spec, parameter_count
    list_models()                 # ['softmax', 'mlp', 'mlp-xavier', ..., 'cnn-deep']
    model = get_model("cnn")      # images (B, 1, 28, 28) float in 0..1 -> (B, 10) scores
    spec("cnn").lab               # 'lab-11-1-mnist_cnn.py', the program it reproduces
    spec("cnn").optimizer, spec("cnn").lr    # ('adam', 0.001): that program's training
    parameter_count("cnn")        # 50186
    catalogue()                   # one dict per model: what `mnist-ray models` prints
    with_weights("cnn", weights)  # a module holding stored weights, in eval mode
    get_model("nets/net.py:Net")  # a user's model (usermodel.py): the same three work

The programs are the course's (deeplearningzerotoall/PyTorch, folder CNN/). Each builds
its layers one after another from the seeded global RNG, so every class below builds
them in the same order, with the same initialisation after them: the same seed gives
the same initial weights, and the state_dict names are the program's where it has
them. `MODELS` is only the table from a name to a class or builder; the classes are
what a reader opens.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mnist_ray import usermodel
from mnist_ray.config import IN_FEATURES, MODEL_DEFAULTS, NUM_CLASSES


class SoftmaxRegression(nn.Linear):
    """The classic tutorial (lab-07-4): `nn.Linear(784, 10, bias=True)` on the flattened
    image; its parameters, initialisation and state_dict names ('weight', 'bias')."""

    def __init__(self):
        super().__init__(IN_FEATURES, NUM_CLASSES, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))  # a view: the same addmm as on (B, 784)


class MLP(nn.Sequential):
    """Fully connected layers with a ReLU between each two (labs 10-2 to 10-5).

    Like the labs: every nn.Linear is built first, in order, then (xavier=True) each
    weight is re-drawn with `xavier_uniform_`, in order; dropout, if any, follows each
    ReLU. The state_dict names are the labs' `nn.Sequential(linear1, relu, ...)` ones."""

    def __init__(self, widths: tuple[int, ...], xavier: bool = False, dropout: float = 0.0):
        linears = [nn.Linear(a, b, bias=True) for a, b in itertools.pairwise(widths)]
        if xavier:
            for linear in linears:
                nn.init.xavier_uniform_(linear.weight)
        layers = []
        for linear in linears[:-1]:
            layers += [linear, nn.ReLU()] + ([nn.Dropout(p=dropout)] if dropout else [])
        super().__init__(*layers, linears[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))  # the labs' X.view(-1, 28 * 28)


def conv_block(cin: int, cout: int, pool_padding: int = 0) -> nn.Sequential:
    """3x3 convolution (same size), ReLU, 2x2 max-pool: the labs' `layerN`."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=2, stride=2, padding=pool_padding),
    )


class CNN(nn.Module):
    """lab-11-1: two conv blocks (28x28x1 -> 14x14x32 -> 7x7x64), then a linear layer
    with a Xavier-initialised weight."""

    def __init__(self):
        super().__init__()
        self.layer1 = conv_block(1, 32)
        self.layer2 = conv_block(32, 64)
        self.fc = nn.Linear(7 * 7 * 64, NUM_CLASSES, bias=True)
        nn.init.xavier_uniform_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer2(self.layer1(x))
        return self.fc(out.flatten(1))


class DeepCNN(nn.Module):
    """lab-11-2: three conv blocks (the third pools 7x7 to 4x4 with padding), a 625-unit
    layer with ReLU and dropout 0.5, then the output layer; both linear weights Xavier,
    each drawn right after its layer is built, as the lab does. (The lab also names the
    625-unit layer `fc1`, a second name for `layer4.0`; it is kept once here.)"""

    def __init__(self, keep_prob: float = 0.5):
        super().__init__()
        self.layer1 = conv_block(1, 32)
        self.layer2 = conv_block(32, 64)
        self.layer3 = conv_block(64, 128, pool_padding=1)
        fc1 = nn.Linear(4 * 4 * 128, 625, bias=True)
        nn.init.xavier_uniform_(fc1.weight)
        self.layer4 = nn.Sequential(fc1, nn.ReLU(), nn.Dropout(p=1 - keep_prob))
        self.fc2 = nn.Linear(625, NUM_CLASSES, bias=True)
        nn.init.xavier_uniform_(self.fc2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(x)))
        return self.fc2(self.layer4(out.flatten(1)))


def mlp() -> MLP:
    return MLP((IN_FEATURES, 256, 256, NUM_CLASSES))


def mlp_xavier() -> MLP:
    return MLP((IN_FEATURES, 256, 256, NUM_CLASSES), xavier=True)


def mlp_deep() -> MLP:
    # lab-10-4 builds and initialises these five layers, then (a slip in the lab) puts
    # only the first three in its nn.Sequential, which leaves 512 outputs; the five are
    # the model the lab describes and that lab-10-5 trains with dropout.
    return MLP((IN_FEATURES, 512, 512, 512, 512, NUM_CLASSES), xavier=True)


def mlp_dropout() -> MLP:
    keep_prob = 0.7  # the lab's; p = 1 - keep_prob exactly as it computes it
    return MLP((IN_FEATURES, 512, 512, 512, 512, NUM_CLASSES), xavier=True, dropout=1 - keep_prob)


@dataclass(frozen=True)
class Spec:
    name: str
    build: Callable[[], nn.Module]  # a class or builder; called after the seed is set
    lab: str  # the course program it reproduces (deeplearningzerotoall/PyTorch, CNN/)

    @property
    def optimizer(self) -> str:  # the lab's, kept with the other defaults in config.py
        return MODEL_DEFAULTS[self.name][0]

    @property
    def lr(self) -> float:
        return MODEL_DEFAULTS[self.name][1]


MODELS = {  # every built-in model, by name
    s.name: s
    for s in (
        Spec("softmax", SoftmaxRegression, "lab-07-4-mnist_introduction.py"),
        Spec("mlp", mlp, "lab-10-2-mnist_nn.py"),
        Spec("mlp-xavier", mlp_xavier, "lab-10-3-mnist_nn_xavier.py"),
        Spec("mlp-deep", mlp_deep, "lab-10-4-mnist_nn_deep.py"),
        Spec("mlp-dropout", mlp_dropout, "lab-10-5-mnist_nn_dropout.py"),
        Spec("cnn", CNN, "lab-11-1-mnist_cnn.py"),
        Spec("cnn-deep", DeepCNN, "lab-11-2-mnist_deep_cnn.py"),
    )
}


def list_models() -> list[str]:
    return list(MODELS)


def spec(name: str) -> Spec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


def get_model(name: str = "softmax", args: dict | None = None) -> nn.Module:
    """A new module with initial weights drawn from the global RNG, on the CPU, as the
    lab draws them (seed first: `torch.manual_seed`). `name` may be a user's
    FILE.py:NAME or package.module:NAME (usermodel.py), made with `args`."""
    if usermodel.is_user(name):
        return usermodel.build(name, args)
    return spec(name).build()


def _shell(name: str, args: dict | None = None) -> nn.Module:
    """The module's structure without weights (on the meta device: no RNG draw, no memory).
    A user's model is built on the CPU instead (its code may not run on meta tensors),
    the global RNGs left as they were."""
    if usermodel.is_user(name):
        return usermodel.shell(name, args)
    with torch.device("meta"):
        return spec(name).build()


def parameter_count(name: str, args: dict | None = None) -> int:
    return sum(p.numel() for p in _shell(name, args).parameters())


def catalogue() -> list[dict]:
    """Every model: its name, the lab it reproduces, its parameter count, and the
    optimizer and learning rate it trains with unless told otherwise."""
    return [
        {"name": n, "lab": s.lab, "parameters": parameter_count(n), "optimizer": s.optimizer}
        | {"lr": s.lr}
        for n, s in MODELS.items()
    ]


def weight_layout(name: str, args: dict | None = None) -> dict[str, tuple[tuple[int, ...], str]]:
    """What a weights file of this model holds: name -> (shape, numpy dtype as stored),
    every entry of its state_dict (parameters and buffers, such as BatchNorm's)."""
    return {
        k: (tuple(v.shape), stored_dtype(v.dtype))
        for k, v in _shell(name, args).state_dict().items()
    }


def stored_dtype(dtype: torch.dtype) -> str:
    """The numpy dtype a tensor of `dtype` is stored as: its own; bfloat16's bits as uint16."""
    if dtype == torch.bfloat16:
        return "uint16"
    return str(torch.empty(0, dtype=dtype).numpy().dtype)


def weight_shapes(name: str, args: dict | None = None) -> dict[str, tuple[int, ...]]:
    """What a weights file of this model holds, name -> shape (its state_dict)."""
    return {k: shape for k, (shape, _) in weight_layout(name, args).items()}


def numpy_state(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """A state_dict as the arrays a weights file stores: each entry copied to the host in
    its own dtype; bfloat16 (which numpy lacks) as its bits, uint16."""
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if v.dtype == torch.bfloat16:
            v = v.view(torch.int16)
            out[k] = v.numpy().copy().view(np.uint16)
        else:
            out[k] = v.numpy().copy()
    return out


def torch_state(arrays: dict[str, np.ndarray], like: dict[str, torch.Tensor]) -> dict:
    """Stored arrays back as tensors, each in the dtype of `like`'s entry of that name
    where the file kept its bits (bfloat16); names `like` lacks are left for
    load_state_dict to refuse."""
    with warnings.catch_warnings():  # read-only arrays from Ray's object store: only read
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        state = {}
        for k, v in arrays.items():
            t = torch.from_numpy(np.asarray(v))
            if k in like and like[k].dtype == torch.bfloat16 and t.dtype == torch.uint16:
                t = t.view(torch.bfloat16)
            state[k] = t
    return state


def with_weights(
    model: str | nn.Module, weights: dict[str, np.ndarray], args: dict | None = None
) -> nn.Module:
    """The model holding `weights` (arrays as stored), in eval mode, on the CPU. A name is
    built on the meta device and given the arrays themselves (no copy, no RNG draw); a
    user's model (made with `args`) and a module are loaded by copying."""
    if isinstance(model, str) and usermodel.is_user(model):
        module = _shell(model, args)
        state = torch_state(weights, module.state_dict())
        module.load_state_dict(state)  # every name and shape checked; copied
    elif isinstance(model, str):
        state = torch_state(weights, {})
        module = _shell(model)
        module.load_state_dict(state, assign=True)
    else:
        module = model
        module.load_state_dict(torch_state(weights, module.state_dict()))
    return module.eval()
