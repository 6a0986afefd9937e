"""What a run and an evaluation are made of: frozen dataclasses whose defaults are the
classic tutorial's, so that `TrainConfig()` reproduces its printed costs.

    >>> from mnist_ray.config import TrainConfig
    >>> TrainConfig(epochs=1).validate()
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

DATASETS = ("mnist", "fashion-mnist")
TEST_SIZE = 10_000  # both datasets have 10,000 test images
MAX_SHARDS = TEST_SIZE  # one image per shard at most
IN_FEATURES = 28 * 28  # one flattened image
NUM_CLASSES = 10  # digits 0..9 (or the ten Fashion-MNIST classes)
IMAGE_SHAPE = (1, 28, 28)  # what every model takes per image: one channel, 28x28, 0..1
MICRO_BATCH = 100  # images per forward call in evaluation, aligned to test-set positions
# What a weights file must hold, name -> shape; checked on every load (no torch needed).
WEIGHT_SHAPES = {"weight": (NUM_CLASSES, IN_FEATURES), "bias": (NUM_CLASSES,)}
# Each built-in model's training defaults, from the course program it reproduces (model.py
# holds the modules): (optimizer, learning rate). Every lab from lab 10 on is Adam lr 0.001.
MODEL_DEFAULTS = {
    "softmax": ("sgd", 0.1),  # the classic tutorial: nn.Linear(784, 10), plain SGD
    "mlp": ("adam", 0.001),  # lab-10-2-mnist_nn.py
    "mlp-xavier": ("adam", 0.001),  # lab-10-3-mnist_nn_xavier.py
    "mlp-deep": ("adam", 0.001),  # lab-10-4-mnist_nn_deep.py
    "mlp-dropout": ("adam", 0.001),  # lab-10-5-mnist_nn_dropout.py
    "cnn": ("adam", 0.001),  # lab-11-1-mnist_cnn.py
    "cnn-deep": ("adam", 0.001),  # lab-11-2-mnist_deep_cnn.py
}
DEFAULT_MODEL = "softmax"
USER_MODEL_DEFAULTS = ("adam", 0.001)  # a user's own model (usermodel.py): the labs' Adam
OPTIMIZERS = ("sgd", "adam")  # torch.optim.SGD without momentum, torch.optim.Adam's defaults
# Seconds between the checkpoints a retried training task (or sweep trial) resumes from;
# 0: after every epoch. Never after the last epoch, whose weights are stored anyway.
CHECKPOINT_EVERY = 60.0
# Ray re-runs a task (Tune restarts a trial) whose worker or node died, this many times.
RETRIES = 3

# Run and evaluation ids become file names in the store: letters, digits, '-', '_' only,
# so a name from the user can never climb out of the store ('../../etc' is refused).
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class ConfigError(ValueError):
    """A bad value for one parameter. `param` is its name in the code (`batch_size`); the
    command line spells it as the option or argument that set it (`--batch-size`)."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "mnist"  # "mnist" or "fashion-mnist": same shapes, same code path
    epochs: int = 15  # the tutorial's training_epochs
    batch_size: int = 100  # the tutorial's batch_size; the last partial batch is dropped
    lr: float | None = None  # None: the model's lab's, 0.1 for softmax, 0.001 for Adam
    seed: int = 777  # random.seed and torch.manual_seed, before anything else
    # A name in MODEL_DEFAULTS (model.py builds it), or a user's FILE.py:NAME or
    # package.module:NAME (usermodel.py; trained with adam 0.001 unless told otherwise).
    model: str = DEFAULT_MODEL
    optimizer: str | None = None  # "sgd" or "adam"; None: the model's lab's

    def __post_init__(self):
        # A field left as None takes the model's lab default here, once, so that every
        # reader (the run row, a sweep's trial, a checkpoint) sees the value trained with.
        optimizer, lr = MODEL_DEFAULTS.get(
            self.model, USER_MODEL_DEFAULTS if ":" in self.model else (None, None)
        )
        if self.optimizer is None:
            object.__setattr__(self, "optimizer", optimizer)
        if self.lr is None:
            object.__setattr__(self, "lr", lr)

    def validate(self) -> TrainConfig:
        check_dataset(self.dataset)
        check_model(self.model)
        if self.optimizer is None or self.lr is None:
            option = "optimizer" if self.optimizer is None else "lr"
            raise ConfigError(option, f"model {self.model} has no lab default: give one")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                "optimizer",
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}",
            )
        if not 1 <= self.epochs <= 10_000:
            raise ConfigError("epochs", f"{self.epochs} is not in 1..10000")
        if not 1 <= self.batch_size <= 60_000:
            raise ConfigError("batch_size", f"{self.batch_size} is not in 1..60000")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("lr", f"{self.lr} must be a finite number above 0")
        if not 0 <= self.seed < 2**63:
            raise ConfigError("seed", f"{self.seed} is not in 0..2**63-1")
        return self

    def to_dict(self) -> dict:
        """The fields by name, the lab defaults filled in (TrainConfig(**d) gives it back)."""
        return asdict(self)


@dataclass(frozen=True)
class EvalConfig:
    shards: int = 4  # contiguous slices of the 10,000 test images, one CPU task each

    def validate(self) -> EvalConfig:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigError("shards", f"{self.shards} is not in 1..{MAX_SHARDS}")
        return self


def check_model(spec: str) -> str:
    """A built-in name, or a user's model that loads and maps a batch (2, 1, 28, 28) to
    (2, 10) (usermodel.check; torch is imported only then). Here, before any Ray task."""
    if spec in MODEL_DEFAULTS:
        return spec
    if ":" not in spec:
        raise ConfigError(
            "model",
            f"unknown model {spec!r}; choose one of {', '.join(MODEL_DEFAULTS)}",
        )
    from mnist_ray.usermodel import ModelError, check

    try:
        check(spec)
    except ModelError as exc:
        raise ConfigError("model", f"{spec}: {exc.message}") from None
    return spec


def check_dataset(name: str) -> str:
    if name not in DATASETS:
        raise ConfigError(
            "dataset", f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}"
        )
    return name


def check_id(value: str, param: str = "run") -> str:
    if not _ID.match(value or ""):
        raise ConfigError(
            param, f"{value!r} is not a valid id (letters, digits, '-' and '_', up to 64)"
        )
    return value


def first_line(exc: BaseException) -> str:
    """An exception as one line for a user-facing message (its type when it says nothing)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
