"""Exceptions that carry a message meant for the user."""


class UserError(Exception):
    """Bad input from the user (a file, a config, an argument).

    The CLI prints the message without a traceback; the message names the file and the problem.
    """
