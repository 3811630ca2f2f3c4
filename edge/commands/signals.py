"""Ctrl-C, SIGTERM and a closed stdout, as a technician expects them: no traceback, nothing lost.

Standard library only.
"""
import os
import signal
import sys
import threading

_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


class Interrupted(BaseException):
    """A signal before screening began. A BaseException, like KeyboardInterrupt, so that code
    catching Exception (a model loader wrapping its errors) lets it through."""

    def __init__(self, signum):
        super(Interrupted, self).__init__(signum)
        self.signum = signum


class SignalStop(object):
    """SIGINT/SIGTERM handlers for one verb's run, restored by ``restore()``.

    Before ``attach(pipeline)`` a signal raises Interrupted (nothing is running
    yet). After it, the first signal asks the pipeline to stop after the frames
    in flight and a second Ctrl-C aborts it at once (``Pipeline.abort()``: an
    event its threads poll; an exception raised from here could land in the
    clean-up after the run, before ``finishing()``, and escape it). After
    ``finishing()`` signals only say that the summary is being written, so the
    ledger's last transaction is never cut.
    """

    def __init__(self, stream=None):
        self.signum = None
        self.aborted = False
        self.pipeline = None
        self.stream = stream or sys.stderr
        self._finishing = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def attach(self, pipeline):
        self.pipeline = pipeline

    def finishing(self):
        self._finishing = True

    def restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    @property
    def name(self):
        return signal.Signals(self.signum).name if self.signum is not None else None

    def _handle(self, signum, _frame):
        if self._finishing:
            self._say("\nfinishing the summary and the ledger; one moment\n")
            return
        if self.signum is None:
            self.signum = signum
        elif signum == signal.SIGINT and self.pipeline is not None:
            if not self.aborted:
                self.aborted = True
                self.pipeline.abort()
                self._say("\nCtrl-C again: aborting now, without the image(s) in flight\n")
            return
        else:
            return  # a repeated SIGTERM: already stopping
        if self.pipeline is None:
            raise Interrupted(signum)
        self.pipeline.stop()
        self._say("\n{}: stopping after the image(s) in flight{}\n".format(
            _NAMES.get(signum, self.name), "; Ctrl-C again to abort at once" if signum == signal.SIGINT else ""))

    def _say(self, text):
        try:
            self.stream.write(text)
            self.stream.flush()
        except (IOError, OSError, ValueError):
            pass


def silence_stdout():
    """After a broken pipe (``| head``): point stdout at /dev/null so no later write or the
    interpreter's last flush raises BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class PipeGuard(object):
    """Wraps the console output: a closed stdout stops the run quietly (``on_closed``) instead of
    failing it, and the frames in flight still reach every other output."""

    def __init__(self, console, on_closed):
        self.console = console
        self.on_closed = on_closed
        self.closed = False

    def write(self, frame, result):
        if self.closed:
            return
        try:
            self.console.write(frame, result)
        except BrokenPipeError:
            self.closed = True
            silence_stdout()
            self.on_closed()

    def close(self):
        self.console.close()

    def describe(self):
        return "console"
