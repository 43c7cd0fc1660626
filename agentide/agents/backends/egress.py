"""Where model requests may go: the address policy and the HTTP transport that enforces it.

A project admin chooses a model ``base_url``; the worker that sends the request sits next to
internal services (PostgreSQL, Redis, the Docker socket proxy, a cloud metadata endpoint).
So every request resolves its host *when it is sent*, refuses it if any address is not a
public one (loopback, private, link-local, CGNAT, multicast, unspecified, metadata...) unless
the site allowed that network or host explicitly (local vLLM/Ollama setups), and connects to
the address it checked: a DNS answer that changes between check and connect (rebinding) is
never used. TLS SNI and the Host header keep the name.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

import httpx2

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata endpoints: refused even when a site allows other private addresses by host
# name; only a network listed in ``private_networks`` that contains them lets them through.
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


class EgressRefused(Exception):
    """A model request was not sent: its destination is not allowed. Permanent."""


def resolve_host(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IP literals resolve to themselves).
    Raises socket.gaierror."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def is_public(address: IPAddress) -> bool:
    """Whether ``address`` is an ordinary public unicast address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_unspecified
        and not address.is_reserved
        and address not in METADATA_ADDRESSES
    )


@dataclass(frozen=True)
class EgressPolicy:
    """The site's exceptions to "public addresses only".

    ``private_networks``: CIDR networks model requests may reach although they are not
    public (e.g. ``127.0.0.0/8`` for a vLLM on the worker's host). ``private_hosts``: host
    names that may resolve to non-public addresses (e.g. ``vllm`` in compose); metadata
    addresses stay refused for them. ``resolve`` is the DNS lookup (a seam for tests of
    names that resolve to private addresses).
    """

    private_networks: tuple[str, ...] = ()
    private_hosts: tuple[str, ...] = ()
    resolve: Callable[[str, int], list[str]] = resolve_host

    def allows(self, host: str, address: IPAddress) -> bool:
        """Whether a request to ``host`` may connect to ``address``."""
        if any(address in ipaddress.ip_network(n, strict=False) for n in self.private_networks):
            return True
        if is_public(address):
            return True
        named = host.lower().rstrip(".") in {h.lower() for h in self.private_hosts}
        return named and address not in METADATA_ADDRESSES

    def address_for(self, host: str, port: int) -> str:
        """The address to connect to for ``host``: every address it resolves to must be
        allowed. Raises EgressRefused naming the host."""
        addresses = self.resolve(host, port)
        if not addresses:
            raise EgressRefused(f"The model host {host!r} has no address.")
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if not self.allows(host, address):
                # The address itself is not shown: it would map the site's internal network
                # for whoever chooses the base URL.
                raise EgressRefused(
                    f"Model requests to {host} are refused: it is or resolves to a loopback, "
                    "private, link-local or metadata address this site does not allow "
                    "(AGENTIDE_MODEL_PRIVATE_NETWORKS / AGENTIDE_MODEL_PRIVATE_HOSTS)."
                )
        return addresses[0]


class CheckedTransport(httpx2.HTTPTransport):
    """An HTTP transport that connects only to addresses ``policy`` allows, resolved and
    checked for every request, keeping the name for TLS (SNI, certificate) and Host."""

    def __init__(self, policy: EgressPolicy, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.policy = policy

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        host = request.url.host
        port = request.url.port or _DEFAULT_PORTS.get(request.url.scheme, 443)
        try:
            address = self.policy.address_for(host, port)
        except socket.gaierror as exc:
            # Possibly transient (a DNS hiccup): a connection error the SDK retries.
            raise httpx2.ConnectError(
                f"Cannot resolve the model host {host}: {exc.strerror}", request=request
            ) from exc
        if address != host:
            # The Host header was set from the name when the request was built.
            request.url = request.url.copy_with(host=address)
            request.extensions = {**request.extensions, "sni_hostname": host}
        return super().handle_request(request)


def http_client(policy: EgressPolicy, *, timeout: float) -> httpx2.Client:
    """An HTTP client for model requests: checked destinations, redirects never followed,
    no proxy or credentials taken from the environment."""
    return httpx2.Client(
        transport=CheckedTransport(policy),
        follow_redirects=False,
        trust_env=False,
        timeout=timeout,
    )
