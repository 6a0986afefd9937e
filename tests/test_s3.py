"""The store on object storage: `--store s3://bucket/prefix` through pyarrow's S3 filesystem,
against moto's S3 server on 127.0.0.1 (the s3_server fixture in conftest.py).

The endpoint and credentials come the standard way, AWS_ENDPOINT_URL and AWS_* in the
environment (or `?endpoint_override=host:port&scheme=http` on the URI); a multi-node Ray
cluster writes into the bucket and pyarrow reads the results back.
"""

from __future__ import annotations

import re

import boto3
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from conftest import client_env, mnist_ray

from mnist_ray.jobs import check_shared_store
from mnist_ray.store import Store, StoreError

pytestmark = pytest.mark.cluster  # the lane: Ray, a cluster or the CLI as a process


def bucket(url: str, name: str) -> str:
    client = boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=name)
    return name


def s3fs(url: str) -> pafs.S3FileSystem:
    """A reader that knows nothing of mnist-ray: plain pyarrow."""
    return pafs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        endpoint_override=url.removeprefix("http://"),
        scheme="http",
    )


@pytest.fixture
def aws_env(s3_server, monkeypatch):
    url, env = s3_server
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return url


def test_store_round_trip_on_s3(aws_env):
    bucket(aws_env, "store-unit")
    store = Store("s3://store-unit/mnist")
    store.check_writable()
    assert store.write_bytes("weights/w.bin", b"abc") == "s3://store-unit/mnist/weights/w.bin"
    assert store.read_bytes("weights/w.bin") == b"abc"
    assert store.list("weights") == ["weights/w.bin"]  # the temporary name is gone


def test_endpoint_in_the_uri_stays_at_the_end(aws_env, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    bucket(aws_env, "store-query")
    hostport = aws_env.removeprefix("http://")
    store = Store(f"s3://store-query/p?endpoint_override={hostport}&scheme=http")
    store.check_writable()
    uri = store.write_bytes("runs/x.bin", b"1")
    assert uri == f"s3://store-query/p/runs/x.bin?endpoint_override={hostport}&scheme=http"
    assert Store(uri).fs.get_file_info("store-query/p/runs/x.bin").size == 1


def test_missing_bucket_is_one_line(aws_env):
    with pytest.raises(StoreError) as err:
        Store("s3://no-such-bucket/mnist").check_writable()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("store s3://no-such-bucket/mnist: not writable")


def test_secrets_in_the_store_uri_never_reach_a_job():
    with pytest.raises(Exception, match="holds a secret"):
        check_shared_store("s3://AKIAXXXX:secret@bucket/prefix")
    check_shared_store("s3://bucket/prefix")  # no secret, fine


def test_multi_node_cluster_writes_to_s3(ray_cli_cluster, s3_server, tmp_path):
    """Training on the GPU node and four evaluation shards, all through the Jobs API; the
    nodes find the bucket through AWS_ENDPOINT_URL in their environment."""
    cluster, gpu_node_id = ray_cli_cluster
    url, aws = s3_server
    bucket(url, "results")
    store = "s3://results/mnist-ray"
    env = client_env(tmp_path, RAY_AUTH_TOKEN=cluster.token)  # the client needs no AWS_*
    base = ["--address", cluster.dashboard, "--store", store]

    train = mnist_ray(["submit", "train", "--epochs", "1", *base], env)
    assert train.returncode == 0, train.stderr[-3000:]
    evaluate = mnist_ray(["evaluate", "--shards", "4", *base], env)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]

    fs = s3fs(url)
    runs = ds.dataset("results/mnist-ray/runs", filesystem=fs, format="parquet").to_table()
    evals = ds.dataset("results/mnist-ray/evaluations", filesystem=fs, format="parquet")
    (run,) = runs.to_pylist()
    (row,) = evals.to_table().to_pylist()
    assert run["node_id"] == gpu_node_id and run["gpu_ids"] == [0]
    assert run["weights_uri"] == f"{store}/weights/{run['run_id']}.safetensors"
    assert row["run_id"] == run["run_id"]
    assert 0.85 < row["accuracy"] < 0.95 and row["total"] == 10_000
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector("results", recursive=True))]
    assert f"{run['run_id']}.safetensors" in names
    assert not [n for n in names if re.match(r"\..*\.tmp$", n)]  # no half-written leftovers
    assert not [n for n in names if n.startswith("epoch-")]  # checkpoints cleared after the run
