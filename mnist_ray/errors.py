"""The errors every layer may raise, and the messages they carry. Imports nothing of the
package, so config, store, cluster, jobs and cli all import it downward.

    from mnist_ray.errors import ClusterError, token_error
    raise ClusterError("nothing answers there; ...", about="address", value="10.0.0.1:6379")

A lower layer names what an error is about as the code names it (`address`, `store`); only
the command line spells it as its option: `ui.friendly` prints `--address 10.0.0.1:6379: ...`,
while str() (a Ray task's failure, a log) reads `address 10.0.0.1:6379: ...`.
"""

from __future__ import annotations


class NamedError(RuntimeError):
    """A failure about one thing the user gave: `about` is its parameter name (`store`),
    `value` what was given (a path), `message` what is wrong. Both may be None."""

    def __init__(self, message: str, about: str | None = None, value: object = None):
        self.message, self.about, self.value = message, about, value
        super().__init__(self.line())

    def line(self, spelled: str | None = None) -> str:
        """One whole line, `about` written as `spelled` (the CLI's `--store`) when given."""
        head = " ".join(str(p) for p in (spelled or self.about, self.value) if p is not None)
        return f"{head}: {self.message}" if head else self.message

    def __reduce__(self):  # raised in a Ray task, it arrives with its parts, not one string
        return type(self), (self.message, self.about, self.value)


class RefusedError(NamedError):
    """Bad input that shows only against the store (an option that contradicts the run it
    resumes): one line and exit 2, as a bad option is."""


class ClusterError(NamedError):
    """Ray could not be reached or cannot run the job; the message says what to do."""


def token_error(address: str, wanted: bool) -> ClusterError:
    """The one line for a token problem, whether the Jobs API or the GCS said it: none was
    sent (`wanted`) or the one sent was wrong."""
    if wanted:
        return ClusterError(
            "the cluster wants a Ray token; set RAY_AUTH_TOKEN to it, "
            "or RAY_AUTH_MODE=token to send the one in ~/.ray/auth_token "
            "(or in the file RAY_AUTH_TOKEN_PATH names); `ray get-auth-token` on the head prints it",
            about="address",
            value=address,
        )
    return ClusterError("the cluster refused the Ray token given", about="address", value=address)
