"""What a run and an evaluation are made of: frozen dataclasses whose defaults are the
classic tutorial's, so that `TrainConfig()` reproduces its printed costs.

    >>> from mnist_ray.config import TrainConfig
    >>> TrainConfig(epochs=1).validate()
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, fields

from mnist_ray.optim import OPTIMIZERS

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
# --lr-schedule: constant (the courses'), cosine (CosineAnnealingLR, T_max = the epochs
# after warm-up, stepped after each epoch), step (StepLR: --lr-step epochs, --lr-gamma),
# onecycle (OneCycleLR, max_lr = --lr, stepped after each batch). See train.make_schedule.
SCHEDULES = ("constant", "cosine", "step", "onecycle")
KEEPS = ("last", "best")  # --keep: the last epoch's weights, or the best by validation accuracy
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
    optimizer: str | None = None  # a name in OPTIMIZERS; None: the model's lab's
    # What follows is opt-in: left as it is, a run trains exactly as the course's does.
    model_args: str | None = None  # a user's model's constructor arguments, a JSON object
    weight_decay: float | None = None  # the optimizer's weight_decay; None: its default
    momentum: float | None = None  # the optimizer's momentum (sgd, rmsprop); None: its default
    optimizer_args: str | None = None  # more of the optimizer's arguments, a JSON object
    lr_schedule: str = "constant"  # a name in SCHEDULES
    lr_step: int | None = None  # step: epochs between decays (default 1)
    lr_gamma: float | None = None  # step: the decay factor (default 0.1)
    warmup_epochs: int = 0  # linear from lr/10 to lr over these first epochs (LinearLR)
    val_split: float = 0.0  # the fraction of the training set held out (data.split_validation)
    keep: str = "last"  # a name in KEEPS
    patience: int | None = None  # stop when validation accuracy has not improved for K epochs

    def __post_init__(self):
        # A run stored before a setting existed reads it back as null: its default.
        for name, default in _OPT_IN.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
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
        args = json_object("model_args", self.model_args)
        if args and ":" not in self.model:
            raise ConfigError("model_args", f"built-in model {self.model} takes no arguments")
        check_model(self.model, args)
        if self.optimizer is None or self.lr is None:
            option = "optimizer" if self.optimizer is None else "lr"
            raise ConfigError(option, f"model {self.model} has no lab default: give one")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                "optimizer",
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}",
            )
        self._validate_opt_in()
        if not 1 <= self.epochs <= 10_000:
            raise ConfigError("epochs", f"{self.epochs} is not in 1..10000")
        if not 1 <= self.batch_size <= 60_000:
            raise ConfigError("batch_size", f"{self.batch_size} is not in 1..60000")
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("lr", f"{self.lr} must be a finite number above 0")
        if not 0 <= self.seed < 2**63:
            raise ConfigError("seed", f"{self.seed} is not in 0..2**63-1")
        return self

    def _validate_opt_in(self) -> None:
        for name in ("weight_decay", "momentum", "lr_gamma"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(name, f"{value} must be a finite number, 0 or more")
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(
                "lr_schedule",
                f"unknown schedule {self.lr_schedule!r}; choose one of {', '.join(SCHEDULES)}",
            )
        if self.lr_step is not None and not 1 <= self.lr_step <= 10_000:
            raise ConfigError("lr_step", f"{self.lr_step} is not in 1..10000")
        if (self.lr_step is not None or self.lr_gamma is not None) and self.lr_schedule != "step":
            option = "lr_step" if self.lr_step is not None else "lr_gamma"
            raise ConfigError(option, "is for --lr-schedule step only")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ConfigError(
                "warmup_epochs", f"{self.warmup_epochs} is not in 0..{self.epochs - 1} (epochs - 1)"
            )
        if not (math.isfinite(self.val_split) and 0 <= self.val_split <= 0.5):
            raise ConfigError("val_split", f"{self.val_split} is not in 0..0.5")
        if self.keep not in KEEPS:
            raise ConfigError("keep", f"unknown {self.keep!r}; choose one of {', '.join(KEEPS)}")
        if self.patience is not None and not 1 <= self.patience <= 10_000:
            raise ConfigError("patience", f"{self.patience} is not in 1..10000")
        if (self.keep == "best" or self.patience is not None) and not self.val_split:
            option = "keep" if self.keep == "best" else "patience"
            raise ConfigError(option, "needs a validation split: give --val-split (e.g. 0.1)")
        json_object("optimizer_args", self.optimizer_args)
        if self.optimizer_kwargs() or self.optimizer not in ("sgd", "adam"):
            from mnist_ray.optim import OptimizerError, check

            try:
                check(self.optimizer, self.optimizer_kwargs())
            except OptimizerError as exc:
                raise ConfigError(exc.param, exc.message) from None

    def optimizer_kwargs(self) -> dict:
        """What the optimizer is made with besides params and lr: --weight-decay,
        --momentum and --optimizer-arg, as given (empty: the optimizer's defaults)."""
        kwargs = json_object("optimizer_args", self.optimizer_args)
        for name in ("weight_decay", "momentum"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        return kwargs

    def model_kwargs(self) -> dict:
        """A user's model's constructor arguments (--model-arg), as given."""
        return json_object("model_args", self.model_args)

    @property
    def tutorial_steps(self) -> bool:
        """Whether the run takes the course's steps: the lab's optimizer with its defaults,
        a constant rate, the whole training set (what the CUDA graph and plain SGD need)."""
        plain = not self.optimizer_kwargs() and self.optimizer in ("sgd", "adam")
        return plain and self.lr_schedule == "constant" and not self.warmup_epochs

    def to_dict(self) -> dict:
        """The fields by name, the lab defaults filled in (TrainConfig(**d) gives it back)."""
        return asdict(self)


_OPT_IN = {"lr_schedule": "constant", "warmup_epochs": 0, "val_split": 0.0, "keep": "last"}
# The opt-in settings, by name (the fields after `optimizer`): the same options on
# `submit train` and `sweep`, listed only where a run has them (compare.py).
_NAMES = [f.name for f in fields(TrainConfig)]
OPT_IN = tuple(_NAMES[_NAMES.index("model_args") :])


def json_object(param: str, text: str | None) -> dict:
    """A JSON object option's value (`{"width": 64}`) as a dict; None: empty."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(param, f"{text!r} is not JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(param, f"{text!r} is not a JSON object")
    return value


def name_values(param: str, pairs: list[str]) -> str | None:
    """NAME=VALUE options (values JSON literals: `width=64`, `dropout=0.2`, `kind="wide"`)
    as one canonical JSON object, names sorted; None when there are none."""
    if not pairs:
        return None
    values: dict = {}
    for pair in pairs:
        name, eq, text = pair.partition("=")
        name = name.strip()
        if not eq or not name.isidentifier():
            raise ConfigError(param, f"{pair!r} is not NAME=VALUE (e.g. width=64)")
        if name in values:
            raise ConfigError(param, f"{name} is given twice")
        try:
            values[name] = json.loads(text)
        except json.JSONDecodeError:
            raise ConfigError(
                param,
                f"{pair}: {text!r} is not a JSON value (a string is quoted: {name}='\"{text}\"')",
            ) from None
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class EvalConfig:
    shards: int = 4  # contiguous slices of the 10,000 test images, one CPU task each

    def validate(self) -> EvalConfig:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigError("shards", f"{self.shards} is not in 1..{MAX_SHARDS}")
        return self


def check_model(spec: str, args: dict | None = None) -> str:
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
        check(spec, args)
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
