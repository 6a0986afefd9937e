"""A user's code to the cluster: a local folder (or .py file) uploaded to the connected
Ray's GCS as a `gcs://` package, for a task's `runtime_env={"py_modules": [uri]}`.

    from mnist_ray.shipping import upload_package
    uri = upload_package(Path("/tmp/mnist-ray-models-x/mnist_ray_user_0123abcd4567"))

Why a private call: Ray takes local folders only in a job's runtime_env (`ray.init`, a
Jobs API submission), and a task's or actor's runtime_env only as URIs. mnist-ray's tasks
need the code per task: the driver may be connected to a Ray it did not start (a notebook,
a test session), whose job-level environment is fixed. So the folder is packaged and
uploaded here with the functions `ray.init` itself uses for `py_modules`, checked on Ray
2.52.0 and 2.60.0 (internals.py lists them; tests/test_internals.py fails by name when an
upgrade removes one). Through Ray Client, Ray 2.60's proxy answers PinRuntimeEnvURI (the
first step of `upload_py_modules_if_needed`) with UNIMPLEMENTED and its client retries that
forever; there the package is made and put in the GCS by the same packaging functions,
without the pin (a temporary reference that only guards a package between its upload and
a job's start).
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def upload_package(path: Path) -> str:
    """The gcs:// URI of `path` packaged, uploaded once per content (the URI is its hash)."""
    import ray

    if ray.util.client.ray.is_connected():
        return _upload_through_client(path)
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    with tempfile.TemporaryDirectory() as scratch:
        env = upload_py_modules_if_needed(
            {"py_modules": [str(path)]}, include_gitignore=True, scratch_dir=scratch
        )
    return env["py_modules"][0]


def _upload_through_client(path: Path) -> str:
    from ray._private.runtime_env import packaging

    folder = path.is_dir()
    uri = (
        packaging.get_uri_for_directory(str(path), include_gitignore=True)
        if folder
        else packaging.get_uri_for_file(str(path))
    )
    if not packaging.package_exists(uri):
        with tempfile.TemporaryDirectory() as scratch:
            target = Path(scratch) / "package.zip"
            packaging.create_package(
                str(path), target, include_gitignore=True, include_parent_dir=folder
            )
            packaging.upload_package_to_gcs(uri, target.read_bytes())
    return uri
