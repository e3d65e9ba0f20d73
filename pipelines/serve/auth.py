"""Who may call the API: an API key, sent as `Authorization: Bearer <key>`.

    genray serve --api-key-file FILE          a file only its owner can read (chmod 600)
    api_key_file: FILE | api_key_env: NAME    the same in a serve config or a Serve config's args

    key_check(spec)   read and check the key where it is configured; its salted hash (KeyCheck)
    BearerAuth        the gateway's middleware: 401 on every route but OPEN_PATHS unless the key matches

The key never leaves the process that reads it (`genray serve`, or Serve's app build task for a
config file). The gateway replicas get a KeyCheck as a deployment argument: a random salt and
HMAC-SHA256(salt, key). Serve pickles deployment arguments into its controller's state and shows
none of them (its status and the dashboard show the deployment options and a config file's
`args`, which hold the file's path or the variable's name). So the key is in no argument, no
log line, no error and not in <home>/serve/<app>.json. Why a hash rather than the path, read on
the replica: the replica may run on a node without the file (`--address` to a cluster, another
Kubernetes pod), and a key that cannot be read there would surface as a replica that fails to
start, after Serve started; here every mistake is a UserError before anything starts.

The request's key is hashed the same way and the two digests compared with hmac.compare_digest:
equal-length values, compared in constant time, so the time an answer takes depends neither on
the key nor on how much of it a guess got right (benchmarks/serve_auth.py measures it). The hash
is fast (one HMAC, about a microsecond): use a long random key, e.g.
`python -c 'import secrets; print(secrets.token_urlsafe(32))'`; a short password could be
guessed offline by whoever can read Serve's controller state (who could read the key file too).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass

from fastapi.responses import JSONResponse

from genray.components.errors import UserError

# Open without the key: the health check (load balancers and probes send no key) and the gallery
# page, which carries no data and must load to ask for the key (pipelines/web/index.html).
OPEN_PATHS = frozenset({"/healthz", "/"})
MAX_KEY_BYTES = 4096
NEW_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"

# ------------------------------------------------------------------------------- reading the key


def read_key_file(path: str) -> bytes:
    """The key in `path`: a regular file that only its owner can read or write, holding one line
    of printable ASCII. Anything else is a UserError naming the file (and never its content)."""
    where = f"API key file {path}"
    try:
        # O_NONBLOCK: a FIFO must not hang `genray serve`; it fails the regular-file check below.
        fd = os.open(os.path.expanduser(path), os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise UserError(f"{where}: cannot read it ({e.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode  # of the file that is read, not of whatever the path names later
        if not stat.S_ISREG(mode):
            raise UserError(f"{where}: not a regular file")
        if mode & 0o077:
            raise UserError(f"{where}: group or others have access (mode {stat.S_IMODE(mode):o}); "
                            f"make it private with `chmod 600 {path}`")
        try:
            raw = os.read(fd, MAX_KEY_BYTES + 1)
        except OSError as e:
            raise UserError(f"{where}: cannot read it ({e.strerror})") from None
    finally:
        os.close(fd)
    return checked_key(raw, where)


def read_key_env(name: str) -> bytes:
    """The key in environment variable `name` (KubeRay: a Kubernetes Secret as an env var)."""
    where = f"API key variable {name}"
    raw = os.environb.get(name.encode())
    if raw is None:
        raise UserError(f"{where}: not set in the environment of the process that builds the app")
    return checked_key(raw, where)


def checked_key(raw: bytes, where: str) -> bytes:
    """`raw` without surrounding whitespace (a file's trailing newline), if it can be a Bearer
    token: not empty, one line of printable ASCII, at most MAX_KEY_BYTES."""
    key = raw.strip()
    if not key:
        raise UserError(f"{where}: empty; write a key into it, e.g. {NEW_KEY}")
    if len(key) > MAX_KEY_BYTES:
        raise UserError(f"{where}: over {MAX_KEY_BYTES} bytes; an API key is one short line, e.g. {NEW_KEY}")
    if not all(0x21 <= b <= 0x7E for b in key):
        raise UserError(f"{where}: the key must be one line of printable ASCII without spaces "
                        f"(clients send it in an HTTP header), e.g. {NEW_KEY}")
    return key


# ------------------------------------------------------------------------------ checking a request


def _digest(salt: bytes, key: bytes) -> bytes:
    return hmac.new(salt, key, hashlib.sha256).digest()


@dataclass(frozen=True, repr=False)
class KeyCheck:
    """What a replica keeps of the key: a random salt and HMAC-SHA256(salt, key)."""

    salt: bytes
    digest: bytes

    @classmethod
    def of(cls, key: bytes) -> KeyCheck:
        salt = secrets.token_bytes(16)
        return cls(salt, _digest(salt, key))

    def matches(self, presented: bytes) -> bool:
        # Both sides are 32-byte digests: compare_digest's time depends on neither's content.
        return hmac.compare_digest(_digest(self.salt, presented), self.digest)

    def __repr__(self) -> str:  # whatever prints a deployment's arguments prints no digest
        return "KeyCheck(salted HMAC-SHA256)"


def key_check(spec) -> KeyCheck | None:
    """The ServeSpec's key (api_key_file or api_key_env), read and checked now, as a KeyCheck;
    None when the spec asks for no key."""
    if spec.api_key_file is not None:
        return KeyCheck.of(read_key_file(spec.api_key_file))
    if spec.api_key_env is not None:
        return KeyCheck.of(read_key_env(spec.api_key_env))
    return None


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The token of the first `Authorization: Bearer <token>` header (the scheme's case is free,
    RFC 7235); b"" when there is none."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return b""


def unauthorized() -> JSONResponse:
    # The same answer for a missing and a wrong key: nothing about the key, or which it was.
    return JSONResponse(status_code=401, headers={"WWW-Authenticate": "Bearer"}, content={"detail": [{
        "loc": ["header", "Authorization"], "type": "unauthorized",
        "msg": "this server needs an API key: send the header Authorization: Bearer <key>"}]})


class BearerAuth:
    """ASGI middleware: a request reaches the app if its path (relative to the app's route
    prefix) is in OPEN_PATHS or its Bearer token matches `check`; otherwise 401. On the whole
    app, so a route added later needs the key without asking for it."""

    def __init__(self, inner, check: KeyCheck, open_paths: frozenset[str] = OPEN_PATHS):
        self.inner, self.check, self.open_paths = inner, check, open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):  # lifespan
            return await self.inner(scope, receive, send)
        # Serve puts an app's route prefix in root_path and keeps it in path (ASGI's convention).
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if path in self.open_paths or self.check.matches(bearer_token(scope.get("headers") or [])):
            return await self.inner(scope, receive, send)
        if scope["type"] == "websocket":  # the gateway has none; should one appear, it is closed
            return await send({"type": "websocket.close", "code": 1008})
        await unauthorized()(scope, receive, send)
