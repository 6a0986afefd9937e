"""torch.optim's optimizers and learning-rate schedulers, by the names the options take.

    from mnist_ray.optim import check, optimizer_class
    optimizer_class("adamw")                  # torch.optim.AdamW
    check("sgd", {"momentum": 0.9})           # OptimizerError naming what is wrong, else None
    check("adam", {"momentum": 0.9})          # OptimizerError: adam takes no momentum; ...

An optimizer is made as anyone makes it, `torch.optim.AdamW(params, lr=lr, **kwargs)`, its
keyword arguments checked against the class's own signature first, so that a misspelt
one is one line naming the ones it takes (train.make_optimizer builds it). torch is
imported only when one of these is called; config.py imports this module for OPTIMIZERS,
and it imports nothing of the package.
"""

from __future__ import annotations

import inspect

# torch.optim's optimizers by their lower-case class names (a test holds the list
# within torch's). Left out: LBFGS (its step takes a closure) and
# SparseAdam (sparse gradients only). "sgd" with no other option is the tutorial's plain
# SGD, "adam" torch.optim.Adam's defaults.
OPTIMIZERS = (
    "sgd", "adam", "adamw", "adamax", "adadelta", "adagrad", "asgd", "nadam", "radam",
    "rmsprop", "rprop",
)  # fmt: skip

# What every optimizer takes that is not an option of ours: the tensors, and the
# implementation switches (train.py picks `capturable` for a CUDA graph itself).
_NOT_OPTIONS = {"params", "lr", "foreach", "fused", "capturable", "differentiable"}


class OptimizerError(ValueError):
    """`param` (optimizer, optimizer_args, weight_decay, momentum) and what is wrong."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param
        self.message = message


def optimizer_class(name: str):
    """The torch.optim class whose lower-case name is `name` (one of config.OPTIMIZERS)."""
    import torch

    classes = {n.lower(): c for n, c in vars(torch.optim).items() if _is_optimizer(c)}
    if name not in OPTIMIZERS or name not in classes:
        raise OptimizerError(
            "optimizer", f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    return classes[name]


def _is_optimizer(value) -> bool:
    import torch

    return isinstance(value, type) and issubclass(value, torch.optim.Optimizer)


def arguments(name: str) -> list[str]:
    """The keyword arguments optimizer `name` takes as options, in its signature's order."""
    params = inspect.signature(optimizer_class(name)).parameters
    return [p for p in params if p not in _NOT_OPTIONS]


def check(name: str, kwargs: dict) -> None:
    """Refuse an argument `name`'s optimizer does not take, or a value it refuses, before
    any training: the class is made once on a dummy parameter (no RNG is drawn)."""
    import torch

    takes = arguments(name)
    for key in kwargs:
        if key not in takes:
            param = key if key in ("weight_decay", "momentum") else "optimizer_args"
            raise OptimizerError(
                param, f"{name} takes no {key}; it takes {', '.join(takes) or 'nothing more'}"
            )
    try:
        optimizer_class(name)([torch.zeros(1, requires_grad=True)], lr=0.1, **kwargs)
    except (TypeError, ValueError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OptimizerError("optimizer_args", f"{name} refuses {kwargs}: {text}") from None
