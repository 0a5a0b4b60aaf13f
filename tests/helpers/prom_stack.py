"""A real Prometheus and a real Alertmanager on loopback, and a webhook that receives what
Alertmanager delivers: the monitoring path an admin relies on, for tests.

Everything binds 127.0.0.1 on ports chosen free (Alertmanager's gossip listener, which binds
0.0.0.0:9094 by default, is turned off); every file lives in the given folder. `stop()` ends
the two processes this object started (by their pid: terminate, then kill after a deadline)
and the webhook, and is safe to call more than once; use the object as a context manager so
that happens even when a test fails.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from haagent.localcluster.ports import free_port

STOP_TIMEOUT_S = 10.0


class Webhook:
    """An HTTP receiver for Alertmanager's webhook notifications (JSON bodies, kept in order)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.payloads: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with hook._cond:
                    hook.payloads.append(body)
                    hook._cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass  # keep the test output to what matters

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert delivered so far (status, labels, annotations, startsAt...)."""
        with self._cond:
            return [a for p in self.payloads for a in p.get("alerts", [])]

    def wait_for(self, alertname: str, timeout_s: float) -> dict[str, Any]:
        """The first firing `alertname` delivered; raises TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for alert in (a for p in self.payloads for a in p.get("alerts", [])):
                    if (
                        alert["labels"].get("alertname") == alertname
                        and alert["status"] == "firing"
                    ):
                        return alert
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no firing {alertname} delivered in {timeout_s}s")
                self._cond.wait(left)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(STOP_TIMEOUT_S)


class PromStack:
    """Prometheus scraping `targets` (job "haagent") with `rules`, alerting to Alertmanager,
    which delivers every alert to a `Webhook` at once."""

    def __init__(
        self,
        folder: Path,
        targets: list[str],
        rules: Path,
        scrape_interval: str = "500ms",
        evaluation_interval: str = "500ms",
    ) -> None:
        self.folder = folder
        self.webhook = Webhook()
        self.prom_port = free_port()
        self.am_port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        # Alertmanager and Prometheus read YAML; JSON is YAML, and needs no YAML writer.
        am_config = {
            "route": {
                "receiver": "webhook",
                "group_by": ["alertname", "node"],
                "group_wait": "0s",
                "group_interval": "1s",
                "repeat_interval": "1h",
            },
            "receivers": [
                {"name": "webhook", "webhook_configs": [{"url": self.webhook.url}]},
            ],
        }
        prom_config = {
            "global": {
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "evaluation_interval": evaluation_interval,
            },
            "rule_files": [str(rules)],
            "alerting": {
                "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{self.am_port}"]}]}]
            },
            "scrape_configs": [{"job_name": "haagent", "static_configs": [{"targets": targets}]}],
        }
        (folder / "alertmanager.yml").write_text(json.dumps(am_config, indent=1))
        (folder / "prometheus.yml").write_text(json.dumps(prom_config, indent=1))
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self) -> PromStack:
        f = self.folder
        self._spawn(
            "alertmanager",
            [
                "prometheus-alertmanager",
                f"--config.file={f / 'alertmanager.yml'}",
                f"--storage.path={f / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{self.am_port}",
                "--cluster.listen-address=",
            ],
        )
        self._spawn(
            "prometheus",
            [
                "prometheus",
                f"--config.file={f / 'prometheus.yml'}",
                f"--storage.tsdb.path={f / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{self.prom_port}",
                # A firing alert is sent at once; this only bounds re-sends.
                "--rules.alert.resend-delay=1s",
            ],
        )
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.folder / f"{name}.log").open("wb")
        try:
            self._procs.append((name, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)))
        finally:
            log.close()

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query against Prometheus' HTTP API ([] while it is not ready)."""
        url = f"http://127.0.0.1:{self.prom_port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                doc = json.load(answer)
        except OSError:
            return []
        result: list[dict[str, Any]] = doc["data"]["result"]
        return result

    def rule(self, name: str) -> dict[str, Any] | None:
        """The alerting rule `name` as Prometheus' rules API reports it (its `state`:
        inactive/pending/firing, `health`, `lastEvaluation`), None while not loaded."""
        url = f"http://127.0.0.1:{self.prom_port}/api/v1/rules?type=alert"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                doc = json.load(answer)
        except OSError:
            return None
        for group in doc["data"]["groups"]:
            for rule in group["rules"]:
                if rule["name"] == name:
                    found: dict[str, Any] = rule
                    return found
        return None

    def check_alive(self) -> None:
        """Fail with the log's tail if Prometheus or Alertmanager exited."""
        for name, proc in self._procs:
            if proc.poll() is not None:
                tail = (self.folder / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{tail}")

    def stop(self) -> None:
        for _, proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in self._procs:
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT_S)
        self._procs.clear()
        self.webhook.stop()

    def __enter__(self) -> PromStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
