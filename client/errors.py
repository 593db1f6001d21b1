"""What ``ptt-client`` tells a user when something is wrong: one line on stderr and a documented exit code.

Every mistake a user can make (a wrong passphrase, a missing file, an identity the keystore does not hold, a group
the server does not know) becomes a ``UserError`` with the exit code of its family; ``explain`` turns the errors of
the layers below (the control channel's refusals, connection failures) into one. No traceback reaches the user.
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """``ptt-client``'s exit codes (the table in ``EXIT_CODES_HELP`` and the README)."""

    OK = 0
    FAILED = 1  # while running: the connection lost for good, a script step that failed
    USAGE = 2  # a bad option or client.toml (argparse's own code for usage errors)
    KEYSTORE = 3  # no keystore, wrong passphrase, not enrolled, no keys for the identity or the current period
    SERVER_INFO = 4  # the --server-info file is missing or malformed
    UNREACHABLE = 5  # the server or the KMS cannot be reached
    REFUSED = 6  # refused by the server or the KMS: no such group, not a member, login refused
    INTERRUPTED = 130  # Ctrl-C


EXIT_CODES_HELP = """exit codes:
  0    done
  1    failed while running (connection lost for good, a script step failed)
  2    usage: a bad option or a bad line in client.toml
  3    keystore: missing, wrong passphrase, not enrolled, or no keys for the identity
  4    the --server-info file is missing or malformed
  5    the server or the KMS cannot be reached
  6    refused by the server or the KMS (no such group, not a member, login refused)
  130  interrupted (Ctrl-C)"""


class UserError(Exception):
    """A mistake or a refusal the user can act on: printed as ``ptt-client: MESSAGE``, exit ``code``."""

    def __init__(self, message: str, code: Exit = Exit.FAILED) -> None:
        super().__init__(message)
        self.code = code


def explain(exc: BaseException) -> UserError:
    """The one-line message and exit code for an error raised while a client runs."""
    from twisted.internet.defer import TimeoutError as DeferredTimeout
    from twisted.internet.error import ConnectError

    from client.control import ControlError

    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, ControlError):
        if exc.code == 0:  # the channel closed before an answer: a refused login closes it too
            return UserError(f"the server closed the connection: {exc.reason}", Exit.UNREACHABLE)
        return UserError(exc.reason, Exit.REFUSED if exc.code in (401, 403, 404, 409) else Exit.FAILED)
    if isinstance(exc, ConnectError | DeferredTimeout):
        return UserError(f"cannot reach the server: {exc}", Exit.UNREACHABLE)
    return UserError(str(exc) or type(exc).__name__, Exit.FAILED)
