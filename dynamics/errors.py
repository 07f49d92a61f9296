"""The one exception type users see: a problem with their input, and how to fix it.

The CLI turns an `OntogenyError` into a single line on stderr and exit status 2, with no
traceback. Library code raises it only for bad input (config, corpus, checkpoints, resume),
never for internal bugs, which should keep their tracebacks.
"""


class OntogenyError(Exception):
    """Bad input. The message names the problem and the fix in one sentence."""
