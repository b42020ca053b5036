"""Debian's prometheus-node-exporter (textfile collector only), prometheus and prometheus-alertmanager on 127.0.0.1,
for the metrics tests.

Each runs in the foreground from its own directory on a free loopback port and is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import requests

from .registry import OnLoopback, free_port, stop_process

NODE_EXPORTER = os.environ.get("NODE_EXPORTER_BINARY", "/usr/bin/prometheus-node-exporter")
PROMETHEUS = os.environ.get("PROMETHEUS_BINARY", "/usr/bin/prometheus")
ALERTMANAGER = os.environ.get("ALERTMANAGER_BINARY", "/usr/bin/prometheus-alertmanager")


class _Daemon(OnLoopback):
    """A loopback daemon: started with `argv()`, ready when `ready_path` answers 200, stopped by its PID."""

    name = "daemon"
    ready_path = "/"

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.workdir / f"{self.name}.log"
        self.process: Optional[subprocess.Popen] = None

    def argv(self) -> List[str]:
        raise NotImplementedError

    def start(self, wait: float = 15.0):
        log = open(self.log_path, "ab")  # noqa: SIM115 (handed to the child process, closed right after)
        self.process = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=self.workdir)
        log.close()
        until = time.monotonic() + wait
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log()[-2000:]}")
            try:
                if requests.get(self.url + self.ready_path, timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on {self.url} within {wait}s: {self.log()[-2000:]}")

    def stop(self) -> None:
        stop_process(self.process, grace=10)
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class NodeExporter(_Daemon):
    """node_exporter with only the textfile collector, reading `textfile_dir`."""

    name = "node-exporter"
    ready_path = "/metrics"

    def __init__(self, workdir: Path, textfile_dir: Path):
        super().__init__(workdir)
        self.textfile_dir = Path(textfile_dir)

    def argv(self) -> List[str]:
        return [NODE_EXPORTER, f"--web.listen-address={self.host}", "--collector.disable-defaults",
                "--collector.textfile", f"--collector.textfile.directory={self.textfile_dir}"]

    def scrape(self) -> str:
        response = requests.get(f"{self.url}/metrics", timeout=10)
        response.raise_for_status()
        return response.text


class LocalPrometheus(_Daemon):
    """prometheus scraping `targets` every second and evaluating `rule_files` every second."""

    name = "prometheus"
    ready_path = "/-/ready"

    def __init__(self, workdir: Path, targets: Sequence[str], rule_files: Sequence[Path] = (),
                 alertmanagers: Sequence[str] = ()):
        super().__init__(workdir)
        self.targets = list(targets)
        self.rule_files = [str(Path(p).resolve()) for p in rule_files]
        self.alertmanagers = list(alertmanagers)  # HOST:PORT each, sent every firing alert

    def argv(self) -> List[str]:
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": self.rule_files,
                  "scrape_configs": [{"job_name": "node", "static_configs": [{"targets": self.targets}]}],
                  "alerting": {"alertmanagers": [{"static_configs": [{"targets": self.alertmanagers}]}]}}
        path = self.workdir / "prometheus.yml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        return [PROMETHEUS, f"--config.file={path}", f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.host}"]

    def api(self, path: str, **params: str) -> dict:
        response = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        response.raise_for_status()
        return response.json()["data"]

    def wait_for_sample(self, query: str, wait: float = 30.0) -> List[Dict]:
        """The result of `query` once it has one (the first scrape comes some seconds after the start)."""
        until = time.monotonic() + wait
        while True:
            result = self.api("query", query=query)["result"]
            if result:
                return result
            if time.monotonic() > until:
                raise AssertionError(f"no result for {query} within {wait}s")
            time.sleep(0.25)

    def alerts(self) -> List[Dict]:
        return self.api("alerts")["alerts"]

    def wait_for_alert(self, name: str, state: str = "firing", wait: float = 30.0,
                       **labels: str) -> Dict:
        """The first alert `name` in `state` whose labels include `labels`."""
        until = time.monotonic() + wait
        while True:
            for alert in self.alerts():
                if alert["labels"].get("alertname") == name and alert["state"] == state and \
                        labels.items() <= alert["labels"].items():
                    return alert
            if time.monotonic() > until:
                raise AssertionError(f"no {state} alert {name} {labels} within {wait}s: {self.alerts()}")
            time.sleep(0.25)


class LocalAlertmanager(_Daemon):
    """prometheus-alertmanager with the configuration text `config` (e.g. the shipped example, its receiver's URL
    pointed at a loopback webhook), alone: no cluster listener."""

    name = "alertmanager"
    ready_path = "/-/ready"

    def __init__(self, workdir: Path, config: str):
        super().__init__(workdir)
        self.config = config

    def argv(self) -> List[str]:
        path = self.workdir / "alertmanager.yml"
        path.write_text(self.config)
        return [ALERTMANAGER, f"--config.file={path}", f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address={self.host}", "--cluster.listen-address="]
