"""Run a real nginx (Debian ``nginx-light``) in front of a registry, as registries are deployed.

Layer: test kit, process, file and loopback network I/O. Synchronous.

``start_nginx(root, sites)`` writes an ``nginx.conf`` under ``root`` and runs
``/usr/sbin/nginx`` in the foreground on it. Each ``Site`` is one ``server`` block: plain or
TLS (``listen ... ssl`` with certificates from ``trustme``), optionally requiring a client
certificate, proxying to an upstream registry with streaming settings (no body size limit,
no request or response buffering) and extra raw directives (``return 307``, ``add_header``).

The access log records, per request, whether an ``Authorization`` header arrived (never its
value), so tests can prove where credentials went.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trustme

from tests.kit.registry import free_port, require_binary
from tests.kit.serving import Stoppable

NGINX = "/usr/sbin/nginx"
_READY_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """A test CA and a server certificate for the loopback names, written as PEM files."""

    ca: trustme.CA
    ca_cert: Path  # give this to the client (--ca-cert, certs.d/HOST/ca.crt)
    server_chain: Path  # key and certificate chain, for ssl_certificate(_key)

    def client_pair(self, directory: Path, name: str = "client") -> tuple[Path, Path]:
        """A client certificate signed by the same CA: (``NAME.cert``, ``NAME.key``)."""
        issued = self.ca.issue_cert("pull-verify-test-client")
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / f"{name}.cert", directory / f"{name}.key"
        cert.write_bytes(b"".join(p.bytes() for p in issued.cert_chain_pems))
        key.write_bytes(issued.private_key_pem.bytes())
        return cert, key


def make_tls_files(directory: Path, names: Sequence[str] = ("127.0.0.1", "localhost")) -> TLSFiles:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    ca_cert = directory / "ca.crt"
    ca.cert_pem.write_to_path(str(ca_cert))
    server = ca.issue_cert(*names)
    chain = directory / "server.pem"
    server.private_key_and_cert_chain_pem.write_to_path(str(chain))
    return TLSFiles(ca, ca_cert, chain)


@dataclass(slots=True)
class Site:
    """One ``server`` block."""

    upstream: str | None = None  # proxy_pass target, e.g. the registry's http://127.0.0.1:P
    tls: TLSFiles | None = None
    verify_client: bool = False  # ssl_verify_client on, against the TLS CA
    directives: str = ""  # raw nginx text inside the server block, before ``location /``
    # Extra headers nginx sets on proxied requests (nginx does not inherit server-level
    # proxy_set_header into a location that sets its own, so they go here).
    proxy_headers: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    name: str = "site"

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.netloc}"

    def render(self, log: Path) -> str:
        listen = f"listen {self.host}:{self.port}{' ssl' if self.tls else ''};"
        lines = [f"    server {{\n        {listen}", f"        access_log {log} pv;"]
        if self.tls is not None:
            lines += [
                f"        ssl_certificate {self.tls.server_chain};",
                f"        ssl_certificate_key {self.tls.server_chain};",
            ]
            if self.verify_client:
                lines += [
                    f"        ssl_client_certificate {self.tls.ca_cert};",
                    "        ssl_verify_client on;",
                ]
        # Registry-sized bodies, streamed both ways (see shared/field-facts.md).
        lines += [
            "        client_max_body_size 0;",
            "        proxy_request_buffering off;",
            "        proxy_buffering off;",
            "        chunked_transfer_encoding on;",
        ]
        if self.directives:
            lines.append(self.directives)
        if self.upstream is not None:
            lines += [
                "        location / {",
                f"            proxy_pass {self.upstream};",
                "            proxy_http_version 1.1;",
                "            proxy_set_header Host $http_host;",
                "            proxy_set_header X-Forwarded-Proto $scheme;",
                "            proxy_read_timeout 900;",
                *(
                    f'            proxy_set_header {k} "{v}";'
                    for k, v in self.proxy_headers.items()
                ),
                "        }",
            ]
        lines.append("    }\n")
        return "\n".join(lines)


@dataclass
class RunningNginx(Stoppable):
    root: Path
    sites: list[Site]
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def conf_path(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def error_log(self) -> Path:
        return self.root / "error.log"

    def access_log(self, site: Site) -> Path:
        return self.root / f"access-{site.name}.log"

    def log_lines(self, site: Site) -> list[str]:
        """The site's access log so far; nginx logs a request just after its last byte, so
        read after ``stop()`` to be sure the newest requests are in."""
        path = self.access_log(site)
        return path.read_text().splitlines() if path.exists() else []

    def render(self) -> str:
        # As root, workers would switch to ``nobody`` and lose access to pytest's 0700 dirs.
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "\n".join(
            f"    {kind}_temp_path {self.root / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        servers = "".join(site.render(self.access_log(site)) for site in self.sites)
        return (
            f"{user}worker_processes 1;\ndaemon off;\npid {self.root / 'nginx.pid'};\n"
            f"error_log {self.error_log} warn;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"{temp}\n"
            "    map $http_authorization $auth_sent { default yes; '' no; }\n"
            "    log_format pv '$request_method $request_uri $status auth=$auth_sent';\n"
            "    server_tokens off;\n"
            f"{servers}"
            "}\n"
        )

    def start(self) -> None:
        require_binary(NGINX)
        self.root.mkdir(parents=True, exist_ok=True)
        for site in self.sites:
            if site.port == 0:
                site.port = free_port(site.host)
        self.conf_path.write_text(self.render())
        log = (self.root / "nginx.out").open("wb")
        self._proc = subprocess.Popen(
            [NGINX, "-p", str(self.root), "-c", str(self.conf_path), "-e", str(self.error_log)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        pending = list(self.sites)
        while pending:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise RuntimeError(f"nginx exited before listening:\n{self._tail()}")
            site = pending[0]
            try:
                with socket.create_connection((site.host, site.port), timeout=0.5):
                    pending.pop(0)
                    continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not listen on {site.netloc}:\n{self._tail()}")
            time.sleep(0.02)

    def _tail(self) -> str:
        parts = [
            p.read_text()[-2000:] for p in (self.error_log, self.root / "nginx.out") if p.exists()
        ]
        return "\n".join(parts)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # Graceful shutdown: requests in flight finish and are logged (tests read the logs).
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_nginx(root: Path, sites: Sequence[Site]) -> RunningNginx:
    """Start nginx serving ``sites`` (ports picked when 0); wait until every one listens."""
    running = RunningNginx(root, list(sites))
    running.start()
    return running
