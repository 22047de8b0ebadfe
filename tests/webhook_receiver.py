"""A webhook receiver for tests: a real HTTP(S) server on 127.0.0.1 that records what it receives.

It answers each request with the next scripted reply (`reply_next(status, headers, body)`), 200
"ok" once the script is empty, and records method, path, headers, body and (over TLS) the server
name the client asked for. `verify(secret)` checks every recorded delivery with the official
`standardwebhooks` package, as an integrator's receiver would.

`tls_files(tmp_path, "hooks.example.test")` makes a throwaway CA and a certificate for that name,
so a client that connects to 127.0.0.1 must still name (SNI) and verify the host it meant.
"""

from __future__ import annotations

import datetime
import ssl
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    server_name: str | None = None


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


class Receiver:
    def __init__(self, *, certfile: Path | None = None, keyfile: Path | None = None):
        self.requests: list[Received] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server_names: dict[tuple, str] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                name = getattr(self.connection, "server_name_seen", None)
                with receiver._lock:
                    receiver.requests.append(Received("POST", self.path, dict(self.headers.items()), body, name))
                    reply = receiver._replies.popleft() if receiver._replies else Reply()
                self.send_response(reply.status)
                for header, value in reply.headers.items():
                    self.send_header(header, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if certfile is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile, keyfile)

            def remember(sock, name, _context):
                sock.server_name_seen = name

            context.sni_callback = remember
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, host: str = "127.0.0.1", path: str = "/hook") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def reply_next(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        with self._lock:
            self._replies.append(Reply(status, headers or {}, body))

    def verify(self, secret: str) -> list[dict]:
        """Every delivery's payload, each verified with `standardwebhooks` (raises on a bad one)."""
        from standardwebhooks import Webhook

        return [Webhook(secret).verify(r.body, r.headers) for r in self.requests]


def tls_files(directory: Path, hostname: str) -> tuple[Path, Path, Path]:
    """(certificate, key, CA certificate) for `hostname`, issued by a CA made for the test."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Prumo test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    paths[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return paths
