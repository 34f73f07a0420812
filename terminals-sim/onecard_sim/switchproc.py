"""A `python -m switch serve` child process: started on a data dir, killed, restarted."""

import os
import select
import signal
import subprocess
import sys
import time

from onecard_sim import limits


class SwitchStartError(RuntimeError):
    pass


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU process `pid` has used so far (Linux /proc), None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class SwitchProcess:
    def __init__(self, data_dir: str, repo_root: str, log_path: str, config: str | None = None,
                 log_level: str = "WARNING"):
        self.data_dir = data_dir
        self.repo_root = repo_root
        self.log_path = log_path
        self.config = config
        self.log_level = log_level
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.metrics_port = 0
        self.starts = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, port: int = 0) -> tuple[int, int]:
        """Start and wait for `listening on` / `metrics on`; returns (port, metrics port)."""
        assert not self.alive
        env = dict(os.environ)
        env["PYTHONPATH"] = self.repo_root + (os.pathsep + env["PYTHONPATH"]
                                              if env.get("PYTHONPATH") else "")
        command = [sys.executable, "-m", "switch", "serve", "--init", "--data", self.data_dir,
                   "--listen", f"127.0.0.1:{port}", "--metrics", "127.0.0.1:0",
                   "--log-level", self.log_level]
        if self.config:
            command += ["--config", self.config]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log,
                                            cwd=self.repo_root, env=env)
        self.starts += 1
        ports = {}
        deadline = time.monotonic() + limits.switch_ready_timeout_s
        stdout = self.process.stdout
        buffered = b""
        while len(ports) < 2:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([stdout], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(stdout.fileno(), 4096)
            if not chunk:
                break
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                word, _, address = line.decode(errors="replace").strip().partition(" on ")
                if word in ("listening", "metrics") and address:
                    ports[word] = int(address.rpartition(":")[2])
        if len(ports) < 2:
            self.kill()
            raise SwitchStartError(f"the switch did not become ready; its log: {self.log_tail()}")
        self.port, self.metrics_port = ports["listening"], ports["metrics"]
        return self.port, self.metrics_port

    def cpu_seconds(self) -> float | None:
        """User + system CPU the switch has used so far (Linux /proc), None elsewhere."""
        if not self.alive:
            return None
        return process_cpu_seconds(self.process.pid)

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the switch can tell."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self._close_pipe()

    def terminate(self) -> int | None:
        """SIGTERM (drain and commit), bounded; SIGKILL past the bound. The exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=limits.switch_stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._close_pipe()
        return self.process.returncode

    def _close_pipe(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as handle:
                text = handle.read()[-8192:].decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])
