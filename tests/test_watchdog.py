"""The worker's watchdog (streams/watchdog.py): a main loop that stops coming round ends the
process with code 70, so its supervisor starts a fresh one; a beating loop is left alone."""

from __future__ import annotations

import signal
import socket
import threading
import time

from stafet.observability import Health
from stafet.streams.watchdog import EXIT_STALLED, Watchdog, main_thread_stack
from tests.worker_process import start_worker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_watchdog(clock: Clock, health: Health, advance: float, *, beat: bool) -> bool:
    """Advance the fake clock in steps (beating or not) and say whether the watchdog fired."""
    fired = threading.Event()
    dog = Watchdog(10.0, health, every_s=0.01, exit_process=fired.set)
    dog.start()
    try:
        for _ in range(int(advance)):
            clock.now += 1.0
            if beat:
                health.beat()
            time.sleep(0.02)
        return fired.wait(0.5)
    finally:
        dog.stop()
        dog.join(2)


def test_a_beating_main_loop_is_left_alone():
    clock = Clock()
    health = Health(clock=clock)
    assert not run_watchdog(clock, health, 30, beat=True)


def test_a_silent_main_loop_ends_the_process_after_the_limit():
    clock = Clock()
    health = Health(clock=clock)
    assert not run_watchdog(clock, health, 9, beat=False), "not before the limit"
    assert run_watchdog(clock, health, 3, beat=False), "past the limit: exit"


def test_the_stack_names_functions_not_data():
    stack = main_thread_stack()
    assert stack and all(":" in line and " " in line for line in stack)
    assert any("test_the_stack_names_functions_not_data" in line for line in stack)


def test_a_worker_blocked_in_a_kafka_call_exits_with_70_and_says_where(tmp_path):
    """A real worker whose broker accepts connections and never answers: its main thread sits
    in a Kafka admin call (10 s) longer than the stall limit (2 s)."""
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(64)  # the kernel completes the handshake; nothing ever reads or writes
    port = black_hole.getsockname()[1]
    log_path = tmp_path / "worker.log"
    try:
        worker = start_worker(tmp_path, port, STAFET_WORKER_STALL_EXIT_S="2")
        try:
            code = worker.wait(40)
        finally:
            worker.kill()
        log = log_path.read_text(errors="replace")
        assert code == EXIT_STALLED, log[-2000:]
        stalled = [line for line in log.splitlines() if "worker.stalled" in line]
        assert stalled, log[-2000:]
        assert "ensure_topics" in stalled[0] or "list_topics" in stalled[0], stalled[0]
        assert "Traceback" not in log
    finally:
        black_hole.close()


def test_a_worker_that_crashes_leaves_every_threads_frames_in_its_log(tmp_path):
    """A segmentation fault in librdkafka gives the supervisor an exit by signal and nothing
    else; faulthandler (enabled by the CLI) writes the Python threads' frames to stderr first."""
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)
    try:
        worker = start_worker(tmp_path, black_hole.getsockname()[1])
        try:
            time.sleep(3)  # started: it waits on the broker that never answers
            worker.send_signal(signal.SIGSEGV)
            code = worker.wait(20)
        finally:
            worker.kill()
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert code == -signal.SIGSEGV, log[-2000:]
        assert "Fatal Python error: Segmentation fault" in log, log[-2000:]
        assert 'File "' in log and "line " in log, log[-2000:]
    finally:
        black_hole.close()
