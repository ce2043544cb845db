"""The one way tests run bodies in spawned processes. A body is a module-level function (a
spawned process imports it by name) that takes a queue as its last argument and puts one
report on it; ``report`` turns a body's outcome into "ok" or its error."""

import multiprocessing as mp
import queue as queue_module
import time


def run_spawned(targets, timeout: float = 240) -> tuple[list, list]:
    """Starts each ``(function, args)`` of ``targets`` as ``function(*args, queue)`` in a
    spawned process. Returns ``(reports, exit codes)``: what the processes put on the queue
    within ``timeout`` seconds, in the order it came (fewer reports when a process died
    first), and each process's exit code, in the order of ``targets``. Every process is
    stopped by the return."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=fn, args=(*args, queue)) for fn, args in targets]
    for p in procs:
        p.start()
    reports, deadline = [], time.monotonic() + timeout
    try:
        while len(reports) < len(procs) and time.monotonic() < deadline:
            # A process flushes what it put before it exits: once all had exited before
            # this wait, an empty queue means nothing more will come.
            all_exited = all(p.exitcode is not None for p in procs)
            try:
                reports.append(queue.get(timeout=1))
            except queue_module.Empty:
                if all_exited:
                    break
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    return reports, [p.exitcode for p in procs]


def report(queue, body, *args):
    """Runs ``body(*args)`` and puts "ok" or its error on ``queue``."""
    try:
        body(*args)
        queue.put("ok")
    except BaseException as e:  # report, never leave the parent waiting
        queue.put(f"{type(e).__name__}: {e}")


def kill_when(code: str, started) -> None:
    """Runs Python ``code`` in a child process and kills it (SIGKILL) once ``started()`` is
    true: a load cut mid-stream. Fails the test if the child ends first, with its stderr."""
    import signal
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    try:
        while not started():
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
