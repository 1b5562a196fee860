"""The one exception type users see: its message names the problem and what to do about it."""


class SparseImplantError(Exception):
    """A problem the user can act on (bad input, missing weights, ...).

    The CLI prints ``str(error)`` as a single line and exits non-zero; the Slicer module shows it in a
    message box. Programming errors stay ordinary Python exceptions.
    """
