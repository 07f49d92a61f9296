"""The one exception type users see, and the validation helper that raises it.

It lives at the bottom of the package stack (models <- dynamics <- probes <- experiments) so
every layer can validate its configs without importing upwards. The CLI turns an
`OntogenyError` into a single line on stderr and exit status 2, with no traceback. Library code
raises it only for bad input (config, corpus, checkpoints, resume), never for internal bugs,
which keep their tracebacks.
"""


class OntogenyError(Exception):
    """Bad input. The message names the problem and the fix in one sentence."""


def require(condition: bool, message: str) -> None:
    """Validation helper for `__post_init__`: raise the user-facing error when false."""
    if not condition:
        raise OntogenyError(message)
