"""Stop signals: a signal arriving while a log line is being written still says so once."""

import logging
import signal

from torchexp.signals import catching_stop_signals


class InterruptedStream:
    """A stream that, like a buffered writer, refuses a write from inside a write; the first
    write is interrupted by SIGINT, as a terminal's Ctrl-C can land in the middle of one."""

    def __init__(self, on_first_write):
        self.on_first_write = on_first_write
        self.writing = False
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        if self.writing:
            raise RuntimeError("reentrant call inside the stream's write")
        self.writing = True
        try:
            self.lines.append(text)
            if self.on_first_write is not None:
                handle, self.on_first_write = self.on_first_write, None
                handle()
        finally:
            self.writing = False

    def flush(self) -> None:
        pass


def test_a_signal_during_a_log_write_is_reported_once_without_a_logging_error(capsys):
    logger = logging.getLogger("torchexp.test_signals")
    logger.propagate = False
    with catching_stop_signals(logger) as signals:
        stream = InterruptedStream(lambda: signals.handle(signal.SIGINT, None))
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.warning("epoch 2, iteration 10")
    logger.removeHandler(handler)
    assert signals.received == signal.SIGINT
    written = "".join(stream.lines)
    assert written.count("SIGINT received: finishing the current step, then saving") == 1, written
    assert "Logging error" not in capsys.readouterr().err


def test_a_second_signal_while_saving_says_to_wait():
    logger = logging.getLogger("torchexp.test_signals.second")
    with catching_stop_signals(logger) as signals:
        records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: records.append(record.getMessage())
        logger.addHandler(handler)
        signals.handle(signal.SIGTERM, None)
        signals.saving = True
        signals.handle(signal.SIGINT, None)
    logger.removeHandler(handler)
    assert signals.name == "SIGTERM"
    assert records == ["SIGTERM received: finishing the current step, then saving", "already stopping: the checkpoint is being saved, please wait"]
