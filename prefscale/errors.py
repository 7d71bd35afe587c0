"""One exception type for mistakes a user can fix; the CLI prints it as a single line."""


class PrefscaleError(Exception):
    """A problem with input, config or environment, phrased as 'what is wrong; what to do'."""
