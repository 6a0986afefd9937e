"""A dozen cases of the kill matrix (tests/killmatrix.py) per run, drawn from a seed.

    PYTHONPATH=. MNIST_RAY_DATA=../shared/datasets python -m pytest tests/test_kill_matrix.py -q
    KILL_MATRIX_SEED=7 python -m pytest tests/test_kill_matrix.py    # the cases of seed 7

The seed is $KILL_MATRIX_SEED, else a fresh random one; it is in every test's id and in
every failure, with the command that reruns that case alone. Twelve cases are two rounds
of the plan, so each `what` (driver SIGKILL, Ctrl-C, training worker, raylet, the head,
`jobs stop`) dies twice, at a drawn moment. Nothing is skipped: a case whose machinery is
missing (the `ray` command for the head) fails.
"""

from __future__ import annotations

import os
import secrets

import pytest
from killmatrix import NOT_A_CASE, WHATS, Matrix, cases

pytestmark = pytest.mark.cluster  # the lane: Ray, a cluster or the CLI as a process

SEED = int(os.environ.get("KILL_MATRIX_SEED") or secrets.randbelow(2**31))
CASES = cases(SEED, 12)


@pytest.fixture(scope="module")
def matrix():
    """One work folder, one uninterrupted run and one head for all the cases."""
    import ray

    if ray.is_initialized():  # another test's Ray in this process: the cases start their own
        ray.shutdown()
    session = Matrix(log=lambda line: print(line))
    try:
        yield session
    finally:
        session.close()


def test_the_plan_is_the_seeds_and_kills_everything():
    assert cases(SEED, 12) == CASES  # the same seed, the same cases: a failure can be rerun
    assert {c.what for c in CASES} == set(WHATS)
    assert [c.index for c in CASES] == list(range(12))
    assert not {(c.what, c.when) for c in CASES} & NOT_A_CASE


@pytest.mark.parametrize(
    "case", CASES, ids=[f"seed{SEED}-{c.index}-{c.what}-at-{c.when}" for c in CASES]
)
def test_a_run_killed_ends_bit_identical_and_stored_once(matrix, case):
    rerun = f"rerun alone: python -m tests.killmatrix --seed {SEED} --case {case.index}"
    print(f"kill matrix seed {SEED}: {case}")
    try:
        matrix.run(case)
    except AssertionError as exc:
        raise AssertionError(f"{case} (seed {SEED}; {rerun}): {exc}") from None
