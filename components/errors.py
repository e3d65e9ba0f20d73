"""The one exception type for mistakes a user can fix.

A `UserError` carries a one-line message that names the file, field or value and what is
allowed. The command line prints it without a traceback and exits with code 2; Serve answers it
with a 4xx. Every other exception is a bug and keeps its traceback (a 500 in Serve, logged with
its stack). It subclasses ValueError only so that code written against the standard library's
convention ("a bad argument is a ValueError") still catches it; nothing in genray catches
ValueError wholesale to mean "the user's fault".
"""


class UserError(ValueError):
    """A mistake in what the user supplied (config, data, request, model reference)."""
