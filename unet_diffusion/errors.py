"""The errors that mean "what you passed is wrong", as opposed to a bug.

Every check of user input in the project raises one of these, with a one-line message that says
what was expected and what to do; the command line prints that line and exits with status 1, and
lets every other exception keep its traceback. Both subclass the built-in they refine, so
``except ValueError`` / ``except TypeError`` keep working.
"""


class InputError(ValueError):
    """A wrong value: a shape, size, option, file or config entry."""


class InputTypeError(InputError, TypeError):
    """A value of the wrong type."""


def fail_if(*rules: tuple[bool, str]) -> None:
    """Raise ``InputError`` with the message of the first ``(broken, message)`` rule that is broken.

    Light on purpose (no torch), so the command line checks its arguments before anything heavy loads.
    """
    for broken, message in rules:
        if broken:
            raise InputError(message)
