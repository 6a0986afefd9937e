#!/usr/bin/env bash
# The main job and the Jobs API path on another Ray: a venv that has that Ray (and reaches
# torch and the rest, e.g. a .pth naming this project's venv's site-packages), this repo.
#   python3 -m venv /tmp/ray252 && /tmp/ray252/bin/pip install 'ray[default,tune]==2.52.0'
#   echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/ray252/lib/python3.11/site-packages/zz.pth
#   bash tests/ray_versions.sh /tmp/ray252
# Prints each step's exit code and the numbers; a head on loopback ports 26379/28265.
set -u
venv=$1; repo=$(cd "$(dirname "$0")/.." && pwd)
cat > "$venv/bin/mnist-ray" <<PY
#!$venv/bin/python
import sys
from mnist_ray.cli import app
sys.exit(app())
PY
chmod +x "$venv/bin/mnist-ray"
export PATH=$venv/bin:$PATH PYTHONPATH=$repo RAY_USAGE_STATS_ENABLED=0
export MNIST_RAY_DATA=${MNIST_RAY_DATA:-$repo/../shared/datasets}
t=$(mktemp -d /tmp/ray-versions-XXXX); cd "$t" || exit 1
trap 'HOME=$t ray stop --force >/dev/null 2>&1; rm -rf "$t"' EXIT
echo "ray $(python -c 'import ray; print(ray.__version__)')"
mnist-ray submit train --epochs 2 --store "$t/emb" --json >"$t/a" 2>"$t/a.err"; echo "embedded submit train: exit $?"
mnist-ray evaluate --shards 2 --store "$t/emb" >"$t/b" 2>"$t/b.err"; echo "embedded evaluate: exit $?"; cat "$t/b"
grep -i "warning" "$t/a.err" "$t/b.err" | head -3
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(python -c "import secrets; print(secrets.token_hex(16))")
HOME=$t ray start --head --node-ip-address=127.0.0.1 --port=26379 --dashboard-host=127.0.0.1 \
  --dashboard-port=28265 --num-cpus=2 --temp-dir="$t/ray" --include-dashboard=true \
  --disable-usage-stats >"$t/head.log" 2>&1; echo "ray start --head: exit $?"
for _ in $(seq 60); do
  curl -sf -H "Authorization: Bearer $RAY_AUTH_TOKEN" http://127.0.0.1:28265/api/version >/dev/null && break
  sleep 1
done
api=http://127.0.0.1:28265
mnist-ray submit train --epochs 2 --address $api --store "$t/jobs" --json >"$t/c" 2>"$t/c.err"; echo "Jobs API submit train: exit $?"
python -c "import json; d = json.load(open('$t/c')); print('  costs', d['epoch_costs'], 'on Ray', d['ray_version'])"
mnist-ray evaluate --shards 2 --address $api --store "$t/jobs" --json >"$t/d" 2>"$t/d.err"; echo "Jobs API evaluate: exit $?"
python -c "import json; print('  accuracy', json.load(open('$t/d'))['accuracy'])"
