"""Every private Ray, Typer or Rich name the package leans on, in one place: where, why,
and the versions it was checked on. tests/test_internals.py looks each one up and fails
naming it when an upgrade removes it (then see the module named, and its reason).

A name is (module, attribute path): `("ray._raylet", "Config.initialize")`.
"""

from __future__ import annotations

# (module, attribute path, used in, why no public API does it)
PRIVATE: list[tuple[str, str, str, str]] = [
    (
        "ray._private.ray_constants",
        "ENABLE_RAY_CLUSTER",
        "session.py",
        "keeps every process of an embedded Ray (and a connection to a loopback head) on "
        "127.0.0.1; read at import, so set on Ray's own copy",
    ),
    (
        "ray._raylet",
        "Config.initialize",
        "session.py",
        "re-reads Ray's cached config from the environment after the token (or token "
        "mode, for a token given alone) is set, as Ray's own switch to token mode does",
    ),
    (
        "ray._private.worker",
        "global_worker",
        "taskinfo.py",
        "the core worker's get_current_task_attempt_number: which attempt Ray is running; "
        "the runtime context names the task, not the attempt",
    ),
    (
        "ray._private.runtime_env.py_modules",
        "upload_py_modules_if_needed",
        "shipping.py",
        "a task's runtime_env takes URIs only: a user's code is uploaded as ray.init does",
    ),
    (
        "ray._private.runtime_env.packaging",
        "get_uri_for_directory",
        "shipping.py",
        "the same upload through Ray Client, whose proxy lacks PinRuntimeEnvURI",
    ),
    ("ray._private.runtime_env.packaging", "get_uri_for_file", "shipping.py", "as above"),
    ("ray._private.runtime_env.packaging", "package_exists", "shipping.py", "as above"),
    ("ray._private.runtime_env.packaging", "create_package", "shipping.py", "as above"),
    ("ray._private.runtime_env.packaging", "upload_package_to_gcs", "shipping.py", "as above"),
    (
        "typer.core",
        "TyperOption._get_number_range_help_str",
        "helptext.py",
        "ranges in --help as 1..10000, not [0<=x<=9223372036854775807]; Typer has no setting",
    ),
    (
        "typer.core",
        "TyperOption.display_type_rich",
        "helptext.py",
        "no type column for a flag in --help; Typer has no setting",
    ),
    (
        "typer.utils",
        "get_params_from_function",
        "ui.py",
        "a parameter's option as the command spells it (`batch_size` is `--batch-size`)",
    ),
    (
        "rich.console",
        "Console._write_buffer",
        "ui.py",
        "a line Ctrl-C interrupts is written once: the buffer is emptied when a write raises",
    ),
]
