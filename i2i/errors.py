"""The base error of i2i: a message meant for the user, printed by the CLI without a traceback."""


class I2IError(Exception):
    """An error with a message meant for the user; the CLI prints it without a traceback."""
