"""Models a user brings: `--model path/to/net.py:Net` or `--model package.module:make`.

    from mnist_ray import usermodel
    usermodel.is_user("net.py:Net")         # True; a built-in name ("cnn") is False
    usermodel.check("net.py:Net")           # load it, run a batch of 2; ModelError if wrong
    usermodel.build("net.py:Net")           # a new nn.Module, in the driver or in a Ray task
    usermodel.source_of("net.py:Net")       # the file's text: the run row's model_source
    usermodel.restore("net.py:Net", source) # a stored run's model again, without its file
    usermodel.task_options("net.py:Net")    # {"runtime_env": ...} for .options(); {} built-in

The contract: NAME is an nn.Module class, or a function that takes no argument and returns
an nn.Module, mapping a float batch (B, 1, 28, 28) in 0..1 to (B, 10) class scores, its
state_dict any tensors a weights file holds (float, integer or boolean: docs/models.md).

How the code reaches the Ray tasks: never through a shared filesystem. A file's text
becomes a package named from its hash, `mnist_ray_user_<sha12>/__init__.py`, in a temporary
folder; a `package.module` ships its top-level package's folder (unless it is installed in
site-packages, where the cluster has it too). Ray uploads those folders to the cluster
(its GCS) and each task that gets `runtime_env={"py_modules": [uri]}` imports them from its
own copy. Ray accepts only URIs in a task's runtime_env (local folders only in ray.init's,
which session.py owns), so the folders are uploaded with the function ray.init itself uses
(shipping.py, the one place that calls Ray's packaging). A task learns which module a file spec became from MNIST_RAY_USER_MODELS
(JSON {spec: module}) in the same runtime_env.

Imports only errors.py (config.py imports this module to check a spec) and torch only when
a user model is loaded, so the built-in models' paths never pay for it.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import random
import shutil
import sys
import sysconfig
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

from mnist_ray.errors import ClusterError, NamedError

PREFIX = "mnist_ray_user_"  # the package a file's text becomes, + 12 hex of its sha256
MODULES_VAR = "MNIST_RAY_USER_MODELS"  # in a task's runtime_env: JSON {spec: module}
BATCH = (2, 1, 28, 28)  # the dummy batch a model must map to (2, CLASSES)
CLASSES = 10  # config.NUM_CLASSES (config imports this module, so it is not imported back)


class ModelError(NamedError):
    """A user model that can't be used: `value` is the spec, `message` what is wrong."""

    def __init__(self, message: str, about: str | None = "model", value: object = None):
        super().__init__(message, about, value)


@dataclass
class Loaded:
    spec: str
    module: types.ModuleType
    attr: str
    source: str | None  # the file's text (file form); None for package.module
    ship: Path | None  # what py_modules carries to the tasks; None: nothing to carry
    mapped: bool  # a file: the tasks import it as module.__name__, told by MODULES_VAR
    files: dict[str, str] | None = None  # the .py files beside it, by relative path


# A file model's folder goes with it: every .py file under the file's folder (so `from
# blocks import Block` works on the cluster), but not these folders, nor any virtualenv
# (a folder holding pyvenv.cfg), and no more than MAX_FOLDER bytes of them.
SKIPPED = {".git", "__pycache__", ".venv", "venv", "env", "node_modules", ".tox", ".mypy_cache"}
SKIPPED |= {".pytest_cache", ".ruff_cache", "site-packages", "build", "dist"}
MAX_FOLDER = 8 * 2**20


_LOADED: dict[str, Loaded] = {}
_CHECKED: set[tuple[str, str]] = set()  # (spec, its arguments as JSON)
_root: Path | None = None


def is_user(spec: str) -> bool:
    """A user's FILE.py:NAME or module:NAME, as opposed to a built-in model's name."""
    return ":" in spec


def parse(spec: str) -> tuple[str, str, str]:
    """(kind, target, attr): ("file", "nets/net.py", "Net") or ("package", "pkg.mod", "make")."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise ModelError("give FILE.py:NAME or package.module:NAME", value=spec)
    if target.endswith(".py") or "/" in target or os.sep in target:
        return "file", target, attr
    if all(part.isidentifier() for part in target.split(".")):
        return "package", target, attr
    raise ModelError(f"{target} is neither a .py file nor a package.module name", value=spec)


# ---- loading --------------------------------------------------------------------------------------


def load(spec: str) -> Loaded:
    """The spec's module, imported once per process: in a task, the module its runtime_env
    shipped; in the driver, the file read (or the package imported) now."""
    kind, target, attr = parse(spec)
    if spec in _LOADED:  # read once: a job's working_dir may be gone once it connected
        return _LOADED[spec]
    shipped = json.loads(os.environ.get(MODULES_VAR) or "{}").get(spec)
    if shipped:  # a Ray task: the runtime_env put the module on sys.path
        module = _import(spec, shipped)
        loaded = Loaded(spec, module, attr, source=_read(module), ship=None, mapped=True)
        _LOADED[spec] = loaded
        return loaded
    if kind == "file":
        path = Path(target).expanduser()
        try:
            source = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ModelError(f"no such file {target}", value=spec) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelError(f"can't read {target}: {_line(exc)}", value=spec) from None
        return restore(spec, source, shown=target, files=beside(path, spec))
    with contextlib.suppress(OSError):  # `mnist-ray` is a script: its sys.path lacks the cwd
        if os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
    module = _import(spec, target)
    _LOADED[spec] = Loaded(
        spec, module, attr, source=None, ship=_package_path(target), mapped=False
    )
    return _LOADED[spec]


def beside(path: Path, spec: str) -> dict[str, str] | None:
    """The .py files under `path`'s folder but `path` itself, {relative path: text}; None
    when there are none. Refused (ModelError) over MAX_FOLDER bytes."""
    folder = path.resolve().parent
    found: dict[str, str] = {}
    size = 0
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(
            d for d in dirs if d not in SKIPPED and not (Path(root, d) / "pyvenv.cfg").exists()
        )
        for name in sorted(names):
            file = Path(root, name)
            if not name.endswith(".py") or file == path.resolve():
                continue
            try:
                text = file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ModelError(f"can't read {file}: {_line(exc)}", value=spec) from None
            size += len(text.encode())
            if size > MAX_FOLDER:
                raise ModelError(
                    f"the .py files beside {path.name} in {folder} are over "
                    f"{MAX_FOLDER // 2**20} MiB; give the model a folder of its own",
                    value=spec,
                )
            found[file.relative_to(folder).as_posix()] = text
    return found or None


def _code_name(source: str, files: dict[str, str] | None) -> str:
    """The package a file's text (and the files beside it) becomes: named from its hash."""
    text = source if not files else json.dumps([source, files], sort_keys=True)
    return PREFIX + hashlib.sha256(text.encode()).hexdigest()[:12]


def restore(
    spec: str, source: str, shown: str | None = None, files: dict[str, str] | None = None
) -> Loaded:
    """The file form from its text (a run row's model_source) and the files that were
    beside it (model_files): the module it becomes, `mnist_ray_user_<sha12>`, run here
    under that name, the files written where it can import them; replaces what `spec`
    loaded before."""
    _, target, attr = parse(spec)
    name = _code_name(source, files)
    module = sys.modules.get(name)
    if module is None:
        module = types.ModuleType(name)
        module.__file__ = shown or target
        if files:  # `from blocks import Block`: the folder's files, written, on sys.path
            _on_path(_write_package(name, source, files))
        try:
            code = compile(source, shown or target, "exec")
            sys.modules[name] = module  # as an import does: classes may look it up by name
            exec(code, module.__dict__)
        except SyntaxError as exc:
            sys.modules.pop(name, None)
            raise ModelError(
                f"{target} line {exc.lineno}: SyntaxError: {exc.msg}", value=spec
            ) from None
        except (Exception, SystemExit) as exc:
            sys.modules.pop(name, None)
            raise ModelError(f"importing {target} raised {_named(exc)}", value=spec) from None
    if spec in _LOADED and _LOADED[spec].module is not module:
        for key in [k for k in _CHECKED if k[0] == spec]:  # other code, same spec: check again
            _CHECKED.discard(key)
    loaded = Loaded(spec, module, attr, source=source, ship=None, mapped=True, files=files)
    _LOADED[spec] = loaded
    return loaded


def _on_path(folder: Path) -> None:
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))


def _import(spec: str, name: str) -> types.ModuleType:
    try:
        if name.startswith(PREFIX):  # shipped: the files beside the model sit in its folder
            found = importlib.util.find_spec(name)
            if found is not None and found.submodule_search_locations:
                _on_path(Path(list(found.submodule_search_locations)[0]))
        return importlib.import_module(name)
    except SyntaxError as exc:
        where = f"{exc.filename} line {exc.lineno}"
        raise ModelError(f"{where}: SyntaxError: {exc.msg}", value=spec) from None
    except (Exception, SystemExit) as exc:
        raise ModelError(f"importing {name} raised {_named(exc)}", value=spec) from None


def _read(module: types.ModuleType) -> str | None:
    with contextlib.suppress(OSError, TypeError):
        return Path(module.__file__).read_text(encoding="utf-8")
    return None


def _package_path(target: str) -> Path | None:
    """The top-level package's folder (or single-file module) to ship; None when it is
    installed (site-packages: the cluster's image has it as well) or is mnist_ray itself."""
    top = target.split(".")[0]
    module = sys.modules[top]
    installed = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
    paths = list(getattr(module, "__path__", None) or [module.__file__ or ""])
    if top == "mnist_ray" or len(paths) != 1 or not paths[0]:
        return None
    path = Path(paths[0]).resolve()
    if any(parent in path.parents for parent in map(Path, installed)):
        return None
    return path


# ---- building and checking --------------------------------------------------------------------


@contextlib.contextmanager
def _rng_kept():
    """Building draws initial weights from the global RNGs: a check or a shape lookup
    must leave them as they were, so training's draws stay the seed's."""
    import torch

    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(state)


def build(spec: str, args: dict | None = None):
    """A new nn.Module from the spec's class or factory, called with `args` (--model-arg)
    as keyword arguments (drawing from the global RNG, as a built-in model's build does,
    so the seed decides its initial weights)."""
    from torch import nn

    loaded = load(spec)
    made = getattr(loaded.module, loaded.attr, _MISSING)
    if made is _MISSING:
        raise ModelError(f"{_where(loaded)} has no {loaded.attr}", value=spec)
    if isinstance(made, nn.Module):
        raise ModelError(
            f"{loaded.attr} is an nn.Module instance; give its class or a function making one",
            value=spec,
        )
    if isinstance(made, type) and not issubclass(made, nn.Module):
        raise ModelError(f"{loaded.attr} is a class but not an nn.Module", value=spec)
    if not callable(made):
        kind = type(made).__name__
        kind = f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
        raise ModelError(
            f"{loaded.attr} is {kind}, not an nn.Module class or a function making one",
            value=spec,
        )
    args = args or {}
    called = f"{loaded.attr}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
    try:
        module = made(**args)
    except TypeError as exc:  # an argument it does not take, or one it needs
        raise ModelError(f"{called} raised TypeError: {_line(exc)}", value=spec) from None
    except (Exception, SystemExit) as exc:
        raise ModelError(f"{called} raised {_named(exc)}", value=spec) from None
    if not isinstance(module, nn.Module):
        got = type(module).__name__
        raise ModelError(f"{called} returned a {got}, not an nn.Module", value=spec)
    return module


_MISSING = object()


def _where(loaded: Loaded) -> str:
    return parse(loaded.spec)[1]


def check(spec: str, args: dict | None = None) -> None:
    """Everything a run needs of the model, before any Ray task: it builds (with `args`),
    its state_dict holds only tensors a weights file can store, and a batch of 2 zero
    images gives (2, 10) scores. ModelError otherwise."""
    key = (spec, json.dumps(args or {}, sort_keys=True))
    if key in _CHECKED:
        return
    import torch

    with _rng_kept():
        module = build(spec, args)
        odd = [(k, v.dtype) for k, v in module.state_dict().items() if _unstorable(v.dtype)]
        if odd:
            name, dtype = odd[0]
            raise ModelError(
                f"its state_dict's {name} is {dtype}, which a weights file can't hold", value=spec
            )
        if not any(p.requires_grad for p in module.parameters()):
            raise ModelError("it has no parameters to train", value=spec)
        try:
            with torch.no_grad():
                out = module.eval()(torch.zeros(BATCH))
        except (Exception, SystemExit) as exc:
            raise ModelError(
                f"forward on a batch {BATCH} raised {_named(exc)}", value=spec
            ) from None
    want = (BATCH[0], CLASSES)
    if not isinstance(out, torch.Tensor):
        raise ModelError(f"forward gives a {type(out).__name__}, not a tensor {want}", value=spec)
    if tuple(out.shape) != want:
        raise ModelError(f"forward gives {tuple(out.shape)}, not {want}", value=spec)
    if not out.is_floating_point():
        raise ModelError(f"forward gives {out.dtype} scores, not floating point", value=spec)
    _CHECKED.add(key)


def _unstorable(dtype) -> bool:
    """Whether safetensors' numpy side can't hold it (complex, float8); others are stored."""
    return dtype.is_complex or "float8" in str(dtype)


def run_args(run: dict) -> dict:
    """A stored run's model arguments (its model_args column, a JSON object)."""
    return json.loads(run.get("model_args") or "{}")


def restore_run(run: dict) -> None:
    """A stored run's model, ready to build: from the row's model_source when it has one
    (the file form), else loaded from its spec; checked as at training."""
    if run.get("model_source") is not None:
        restore(run["model"], run["model_source"], files=run_files(run))
    check(run["model"], run_args(run))


def shell(spec: str, args: dict | None = None):
    """The module with its initial weights, the global RNGs left as they were: for its
    state_dict's names and shapes, or to load stored weights into."""
    with _rng_kept():
        return build(spec, args)


def source_of(spec: str) -> str | None:
    """What the run row keeps as model_source: a file's text; None for a built-in model
    or a package.module (the package is imported again when evaluated)."""
    if not is_user(spec):
        return None
    loaded = load(spec)
    return loaded.source if parse(spec)[0] == "file" else None


def files_of(spec: str) -> str | None:
    """What the run row keeps as model_files: the .py files that were beside a model file,
    as a JSON object {relative path: text}; None when there were none."""
    if not is_user(spec) or parse(spec)[0] != "file":
        return None
    files = load(spec).files
    return json.dumps(files, sort_keys=True) if files else None


def run_files(run: dict) -> dict[str, str] | None:
    """A stored run's model_files, as {relative path: text}."""
    return json.loads(run["model_files"]) if run.get("model_files") else None


# ---- shipping to Ray tasks ----------------------------------------------------------------------


def _temp_root() -> Path:
    global _root
    if _root is None:
        _root = Path(tempfile.mkdtemp(prefix="mnist-ray-models-"))
        atexit.register(shutil.rmtree, _root, ignore_errors=True)
    return _root


def package_dir(spec: str) -> Path | None:
    """The folder py_modules carries: the file's `mnist_ray_user_<sha12>/` (written here,
    in a temporary folder, with the files beside it), or the package's own; None: nothing
    to carry."""
    loaded = load(spec)
    if not loaded.mapped:
        return loaded.ship
    return _write_package(loaded.module.__name__, loaded.source, loaded.files)


def _write_package(name: str, source: str, files: dict[str, str] | None) -> Path:
    """`<temp>/<name>/`: `__init__.py` holding the model file's text, the files that were
    beside it under their relative paths. Written once, whole (a .part folder renamed)."""
    folder = _temp_root() / name
    if not folder.exists():
        part = folder.with_name(folder.name + ".part")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir()
        (part / "__init__.py").write_text(source, encoding="utf-8")
        for relpath, text in (files or {}).items():
            (part / relpath).parent.mkdir(parents=True, exist_ok=True)
            (part / relpath).write_text(text, encoding="utf-8")
        part.rename(folder)
    return folder


def task_options(spec: str) -> dict:
    """`.options(**task_options(spec))` for the tasks that build the model: the code in a
    runtime_env, uploaded to the connected cluster (once per content: the URI is its
    hash). Nothing for a built-in model, whose tasks keep the job's own environment."""
    if not is_user(spec):
        return {}
    folder = package_dir(spec)
    if folder is None:
        return {}
    runtime_env: dict = {"py_modules": [upload(folder, spec)]}
    if load(spec).mapped:
        runtime_env["env_vars"] = {MODULES_VAR: json.dumps({spec: load(spec).module.__name__})}
    return {"runtime_env": runtime_env}


def upload(path: Path, spec: str) -> str:
    """A gcs:// URI for the folder (or .py file), uploaded to the connected cluster."""
    from mnist_ray.shipping import upload_package

    try:
        return upload_package(path)
    except Exception as exc:
        raise ClusterError(
            f"shipping {path} to the cluster failed: {_line(exc)}", "model", spec
        ) from None


def job_files(spec: str, folder: Path) -> tuple[str, dict]:
    """For a Jobs API submission: (the spec as the job's driver sees it, what the job's
    runtime_env needs). A file is copied into `folder` (the job's working_dir, where the
    entrypoint runs), so `net.py:Net` there names it; a package goes in py_modules."""
    kind, target, attr = parse(spec)
    loaded = load(spec)
    if kind == "file":
        name = Path(target).name
        (folder / name).write_text(loaded.source, encoding="utf-8")
        for relpath, text in (loaded.files or {}).items():  # the files beside it, beside it
            (folder / relpath).parent.mkdir(parents=True, exist_ok=True)
            (folder / relpath).write_text(text, encoding="utf-8")
        return f"{name}:{attr}", {"working_dir": str(folder)}
    return spec, ({"py_modules": [str(loaded.ship)]} if loaded.ship else {})


# ---- one line ---------------------------------------------------------------------------------


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _named(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_line(exc)}"
