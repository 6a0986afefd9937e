"""The errors every layer may raise, and the messages they carry. Imports nothing of the
package above config, so cluster.py, jobs.py and cli.py all import it downward.

    from mnist_ray.errors import ClusterError, token_error
    raise ClusterError("--address 10.0.0.1:6379: nothing answers there; ...")
"""

from __future__ import annotations


class ClusterError(RuntimeError):
    """Ray could not be reached or cannot run the job; the message says what to do."""


def token_error(address: str, wanted: bool) -> ClusterError:
    """The one line for a token problem, whether the Jobs API or the GCS said it: none was
    sent (`wanted`) or the one sent was wrong."""
    if wanted:
        return ClusterError(
            f"--address {address}: the cluster wants a Ray token; set RAY_AUTH_TOKEN to it, "
            "or RAY_AUTH_MODE=token to send the one in ~/.ray/auth_token "
            "(or in the file RAY_AUTH_TOKEN_PATH names); `ray get-auth-token` on the head prints it"
        )
    return ClusterError(f"--address {address}: the cluster refused the Ray token given")
