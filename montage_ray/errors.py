"""The errors montage-ray raises, each with a message a user can act on.

Every error is a :class:`MontageError`; the CLI prints ``str(err)`` as one line and exits with
``err.exit_code``. Catch the narrow classes when you need to tell a bad input from a broken encoder::

    from montage_ray import encode
    from montage_ray.errors import InputError

    try:
        encode("talk.mp4", "talk-h264.mp4")
    except InputError as err:      # the user's file or arguments
        print("fix your input:", err)
"""

from __future__ import annotations


class MontageError(Exception):
    """Base class of every error montage-ray raises on purpose."""

    exit_code = 1


class InputError(MontageError):
    """The source, the destination or an argument cannot be used as given (a user mistake)."""

    exit_code = 2


class FFmpegNotFound(MontageError):
    """No ffmpeg/ffprobe executable could be found on this machine."""

    exit_code = 3


class FFmpegError(MontageError):
    """An ffmpeg or ffprobe process failed, crashed or timed out.

    ``returncode`` is the exit status (negative for a signal, ``None`` for a timeout); ``stderr`` is the
    tail of what the process printed, kept for diagnosis.
    """

    exit_code = 4

    def __init__(self, message: str, *, returncode: int | None = None, stderr: str = "",
                 timed_out: bool = False) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr
        self.timed_out = timed_out


class EncoderError(MontageError):
    """A segment could not be encoded, or an encoder produced output that failed verification."""

    exit_code = 5


class ClusterError(MontageError):
    """Ray could not be reached, or no encoder in the cluster can serve the job."""

    exit_code = 6


class VerificationError(MontageError):
    """The joined output did not pass verification; it was not written to the destination."""

    exit_code = 7


class LedgerError(MontageError):
    """The spending ledger's file cannot be read or written (damaged, not a ledger, no permission). A job goes
    on without its paid labels; ``montage-ray budget`` says so and exits."""

    exit_code = 8


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM): unwinds and cleans up exactly as Ctrl-C does.

    Not a :class:`MontageError` (nothing went wrong with the job); the CLI exits with 143 (128 + 15).
    """

    exit_code = 143


def first_line(err: BaseException) -> str:
    """The first line of an error's message (its class name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
