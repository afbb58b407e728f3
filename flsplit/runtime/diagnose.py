"""Why a data-plane connection fails: a probe of the helper's port.

gRPC reports a connection that cannot be made as ``TRANSIENT_FAILURE`` and keeps retrying;
its error details name some causes (refused, a certificate check) but not others (a
plaintext client reaching a TLS helper sees "Socket closed"). When a
:class:`~flsplit.runtime.helper_client.HelperClient`'s channel does not become ready,
:func:`probe` looks at the helper's port itself and returns a :class:`Diagnosis`:

1. a plain TCP connection: refused (nothing listens there), no answer (the host is down,
   unreachable or a firewall drops the packets), or a host name that does not resolve;
2. what the peer speaks: the client's own TLS handshake (its root certificate, the name it
   expects, ALPN ``h2``) with Python's :mod:`ssl`, or, for a plaintext client, an HTTP/2
   connection preface (a gRPC server answers with a ``SETTINGS`` frame) and a TLS
   ClientHello that checks nothing (a TLS server answers with its certificate).

Each failure kind has one message, naming the cause and the node-config keys that fix
it; the README's "Data-plane TLS" section lists them. A ``fatal`` diagnosis (a TLS
mismatch, a certificate that does not verify or does not name the helper, a port that
speaks something else) does not change by waiting; refused, no answer and an unresolved
name may (the helper may still be starting), so the client waits for those until its
deadline and then fails with the diagnosis.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

# kinds of Diagnosis
OK = "ok"
REFUSED = "refused"
TIMEOUT = "timeout"
UNRESOLVED = "unresolved"
UNREACHABLE = "unreachable"
HELPER_TLS = "tls-mismatch-helper-tls"  # the helper serves TLS, the client plaintext
HELPER_PLAINTEXT = "tls-mismatch-helper-plaintext"  # the client expects TLS, the helper not
WRONG_ROOT = "tls-wrong-root"
NAME_MISMATCH = "tls-name-mismatch"
EXPIRED = "tls-expired"
TLS_FAILED = "tls-failed"
NOT_GRPC = "not-grpc"
SILENT = "silent"

# OpenSSL verification codes (X509_V_ERR_*)
_NOT_YET_VALID, _EXPIRED, _HOSTNAME, _IP_ADDRESS = 9, 10, 62, 64
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
_TLS_KEYS = "the helper's data-tls-cert/data-tls-key and the client's data-tls-root-cert"


@dataclass(frozen=True)
class Diagnosis:
    """What a probe of the helper's port found.

    Attributes
    ----------
    kind : str
        One of the module's kinds (``"refused"``, ``"tls-wrong-root"``, ...; ``"ok"``:
        the port speaks what the client expects).
    message : str
        The cause in words, with the fix; empty for ``"ok"``.
    fatal : bool
        Waiting will not change it (a configuration error), so fail at once.
    """

    kind: str
    message: str = ""
    fatal: bool = False


def split_address(address: str) -> tuple[str, int]:
    """``host`` and ``port`` of ``host:port``, ``[v6]:port`` or ``ipv4:host:port``.

    Raises
    ------
    ValueError
        If ``address`` has no numeric port.
    """
    for scheme in ("dns:///", "ipv4:", "ipv6:"):
        if address.startswith(scheme):
            address = address[len(scheme):]
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {address!r} has no port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def probe(
    address: str,
    tls_root_cert: bytes | None = None,
    server_name: str | None = None,
    timeout: float = 2.0,
) -> Diagnosis:
    """Probe the helper's data-plane port as the client would reach it.

    Parameters
    ----------
    address : str
        The helper's ``host:port``.
    tls_root_cert : bytes, optional
        The client's root certificate (PEM): the client expects TLS.
    server_name : str, optional
        The name the client expects in the helper's certificate (default: the host).
    timeout : float
        Seconds each connection and handshake may take.

    Returns
    -------
    Diagnosis
        What was found.
    """
    try:
        host, port = split_address(address)
    except ValueError as err:
        return Diagnosis(UNRESOLVED, f"helper address {address!r}: {err}", fatal=True)
    where = f"{host}:{port}"
    found = _tcp(host, port, timeout)
    if found is not None:
        return found
    if tls_root_cert is not None:
        return _probe_tls(host, port, where, tls_root_cert, server_name or host, timeout)
    return _probe_plaintext(host, port, where, timeout)


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def _tcp(host: str, port: int, timeout: float) -> Diagnosis | None:
    """``None`` if a TCP connection can be made, else why not."""
    where = f"{host}:{port}"
    try:
        _connect(host, port, timeout).close()
    except ConnectionRefusedError:
        return Diagnosis(
            REFUSED,
            f"connection refused: nothing listens at {where}; check that the helper runs "
            "and that this is its data-plane address (its data-address, or "
            "advertise-address)",
        )
    except socket.gaierror as err:
        return Diagnosis(UNRESOLVED, f"the helper's host name {host!r} does not resolve "
                         f"({err.strerror or err})")
    except TimeoutError:
        return Diagnosis(
            TIMEOUT,
            f"no answer from {where} within {timeout:.1f} s: the host is down or "
            "unreachable, or a firewall drops the packets",
        )
    except OSError as err:
        return Diagnosis(
            UNREACHABLE, f"cannot reach {where}: {err.strerror or err}",
        )
    return None


def _probe_tls(
    host: str, port: int, where: str, root: bytes, name: str, timeout: float
) -> Diagnosis:
    """The client's own handshake: its root certificate, the name it expects."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
    try:
        context.load_verify_locations(cadata=root.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as err:
        return Diagnosis(TLS_FAILED, f"the client's data-tls-root-cert cannot be loaded: {err}",
                         fatal=True)
    context.set_alpn_protocols(["h2"])
    try:
        with _connect(host, port, timeout) as raw, context.wrap_socket(
            raw, server_hostname=name
        ):
            return Diagnosis(OK)
    except ssl.SSLCertVerificationError as err:
        return _verify_failure(err, host, port, where, name, timeout)
    except OSError as err:  # ssl.SSLError, a reset or closed connection, a timeout
        if _speaks_h2(host, port, timeout):
            return Diagnosis(
                HELPER_PLAINTEXT,
                f"TLS mismatch: this client expects TLS (it has a data-tls-root-cert), but "
                f"the helper at {where} serves plaintext (it has no data-tls-cert and "
                "data-tls-key); give the helper its certificate and key, or remove the "
                "client's data-tls-root-cert",
                fatal=True,
            )
        return Diagnosis(
            TLS_FAILED,
            f"TLS handshake with {where} failed ({_why(err)}) and the port does not speak "
            f"plaintext gRPC either: is {where} the helper's data-plane port?",
            fatal=isinstance(err, ssl.SSLError),
        )


def _verify_failure(
    err: ssl.SSLCertVerificationError, host: str, port: int, where: str, name: str,
    timeout: float,
) -> Diagnosis:
    code = getattr(err, "verify_code", None)
    detail = getattr(err, "verify_message", "") or _why(err)
    if code in (_HOSTNAME, _IP_ADDRESS):
        names = _certificate_names(host, port, timeout)
        held = f" (it names {', '.join(names)})" if names else ""
        return Diagnosis(
            NAME_MISMATCH,
            f"TLS handshake with {where} failed: the helper's certificate is not valid for "
            f"{name!r}{held}; set the client's data-tls-server-name to a name the "
            "certificate holds, or reissue the certificate for the address clients dial",
            fatal=True,
        )
    if code in (_EXPIRED, _NOT_YET_VALID):
        return Diagnosis(
            EXPIRED,
            f"TLS handshake with {where} failed: the helper's certificate is out of its "
            f"validity period ({detail}); renew its data-tls-cert (or check the clocks)",
            fatal=True,
        )
    return Diagnosis(
        WRONG_ROOT,
        f"TLS handshake with {where} failed: the helper's certificate does not verify "
        f"against this client's data-tls-root-cert ({detail}); give the client the CA "
        "certificate that signed the helper's data-tls-cert",
        fatal=True,
    )


def _probe_plaintext(host: str, port: int, where: str, timeout: float) -> Diagnosis:
    """A plaintext client: is the peer plaintext HTTP/2, or TLS?"""
    if _speaks_h2(host, port, timeout):
        return Diagnosis(OK)
    if _speaks_tls(host, port, timeout):
        return Diagnosis(
            HELPER_TLS,
            f"TLS mismatch: the helper at {where} serves TLS (it has a data-tls-cert), but "
            "this client connects in plaintext (it has no data-tls-root-cert); give the "
            "client data-tls-root-cert, the CA certificate that signed the helper's",
            fatal=True,
        )
    return Diagnosis(
        NOT_GRPC,
        f"something listens at {where} but speaks neither plaintext gRPC nor TLS: is it "
        "the helper's data-plane port?",
    )


def _speaks_h2(host: str, port: int, timeout: float) -> bool:
    """Whether the peer answers an HTTP/2 preface with a SETTINGS frame (gRPC does)."""
    try:
        with _connect(host, port, timeout) as sock:
            sock.sendall(_H2_PREFACE + _H2_SETTINGS)
            head = _read(sock, 9)
    except OSError:
        return False
    return len(head) == 9 and head[3] == 0x04


def _speaks_tls(host: str, port: int, timeout: float) -> bool:
    """Whether the peer completes a TLS handshake (nothing verified: a question of
    protocol, no data is sent)."""
    context = _unverified_context()
    try:
        with _connect(host, port, timeout) as raw, context.wrap_socket(raw):
            return True
    except (ssl.SSLError, OSError):
        return False


def _certificate_names(host: str, port: int, timeout: float) -> list[str]:
    """The DNS names and IP addresses the helper's certificate holds (empty if unknown)."""
    context = _unverified_context()
    try:
        with _connect(host, port, timeout) as raw, context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    except (ssl.SSLError, OSError):
        return []
    if not der:
        return []
    try:
        from cryptography import x509

        cert = x509.load_der_x509_certificate(der)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except Exception:  # no cryptography, or no SAN extension: say nothing
        return []
    names = [*sans.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    return names[:8]


def _unverified_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    return context


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _why(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    if isinstance(err, ssl.SSLError) and reason:
        return str(reason)
    return str(err) or type(err).__name__
