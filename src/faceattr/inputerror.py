"""The one exception type for bad user input: the CLI prints it as one line and exits 2."""


class InputError(Exception):
    """A problem with something the user handed us (a file, a row, a field, an option).

    The message must name the file, row or field and say what was expected, on one line.
    """
