"""A private Ray for one run that ends with the run's driver, even a SIGKILLed one.

Ray started inside the driver (``ray.init()`` without an address) binds its GCS and raylet to
the driver's life (the kernel's parent-death signal) and the actors' workers exit with their
raylet, but not Ray's agents (dashboard and runtime-env agents, children of the raylet): those of
a killed driver go on for a minute or more, trying to report the raylet's death. So a ``local``
run starts Ray in a keeper process instead:

* :class:`PrivateRay` (in the driver) starts ``python -m p2pgan.run.ray_keeper`` in a session of
  its own, with a pipe on its stdin that only the driver holds, reads the address it prints and
  connects to it like to any cluster;
* the keeper (:func:`keep`) starts Ray and then reads its stdin until it closes: the driver closed
  it at the end of the run, or the driver is gone (killed, crashed). Either way it ends every
  process of its session (Ray's GCS, raylet, agents, workers: they all stay in it) and exits.

The keeper imports only the standard library and Ray, so it starts in about the time Ray does.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

NAMESPACE = "p2pgan"
END_WAIT_S = 1.0
"""How long the keeper waits for its session's processes after SIGTERM, before SIGKILL."""


class KeeperError(RuntimeError):
    """The private Ray did not start (the keeper's one line says why)."""


class PrivateRay:
    """The driver's side of the keeper: start it, learn Ray's address, end it."""

    def __init__(self, num_cpus: int, object_store_bytes: int) -> None:
        self.num_cpus = num_cpus
        self.object_store_bytes = object_store_bytes
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float) -> str:
        """Start the keeper and return the address of its Ray (``host:port`` of the GCS)."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # it starts one, it joins none
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "p2pgan.run.ray_keeper", str(self.num_cpus), str(self.object_store_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
            start_new_session=True)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        line = self._proc.stdout.readline() if ready else b""
        try:
            answer = json.loads(line)
        except ValueError:
            answer = {"error": f"no answer within {timeout_s:g} s" if not ready else "it exited while starting"}
        if not isinstance(answer, dict) or "address" not in answer:
            self.stop()
            raise KeeperError(str(answer.get("error") if isinstance(answer, dict) else answer))
        return str(answer["address"])

    def stop(self, timeout_s: float = 15.0) -> None:
        """Close the keeper's stdin (it ends its Ray) and wait for it; kill it if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def keep(argv: Sequence[str]) -> None:
    """The keeper: start Ray with ``argv`` = (CPUs, object store bytes), print its address, wait
    for stdin to close, then end every process of this session and exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # its own session: only the driver's pipe ends it
    import ray

    try:
        num_cpus, store = int(argv[0]), int(argv[1])
        # "local": a new Ray. Without an address ray.init joins any Ray it finds on this machine.
        ray.init(address="local", num_cpus=num_cpus, object_store_memory=store, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR, namespace=NAMESPACE)
        address = ray.get_runtime_context().gcs_address
    except Exception as exc:  # one line for the driver's error
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
        _answer({"error": text})
        end_session()
        os._exit(1)
    _answer({"address": address})
    try:
        while os.read(sys.stdin.fileno(), 65536):  # until the driver closes it or is gone
            pass
    except OSError:
        pass
    end_session()
    os._exit(0)  # not Ray's exit hooks: they would talk to the GCS just ended


def _answer(value: dict) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def session_members(session: int) -> list[int]:
    """Live (not zombie) processes of ``session``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == session:
            found.append(int(entry))
    return found


def end_session() -> None:
    """SIGTERM every other process of this keeper's session, then SIGKILL what is left."""
    me = os.getpid()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        others = [pid for pid in session_members(os.getsid(0)) if pid != me]
        if not others:
            return
        for pid in others:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + END_WAIT_S
        while time.monotonic() < deadline:
            _reap()
            if not [pid for pid in session_members(os.getsid(0)) if pid != me]:
                return
            time.sleep(0.05)


def _reap() -> None:
    """Collect this process's exited children (Ray's GCS and raylet are), so they leave /proc."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


if __name__ == "__main__":
    keep(sys.argv[1:])
