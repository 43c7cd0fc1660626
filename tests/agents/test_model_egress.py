"""Where model requests may go: the site's keys stay on site-allowed hosts, redirects are never
followed, non-public addresses are refused after DNS resolution, and provider errors shown to
people are short. Real openai SDK, real HTTP against the fake server."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.urls import reverse
from fake_openai import API_KEY, MODEL, FakeOpenAI, Step

from agentide.agents import services
from agentide.agents.backends.base import ModelError, ProviderConfig
from agentide.agents.backends.egress import EgressPolicy, is_public
from agentide.agents.backends.openai import make_backend
from agentide.agents.models import ModelProvider

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parent.parent.parent


def check(client: Any) -> str:
    response = client.post(
        reverse("provider_check", args=["acme", "lab"]), headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    return str(response.content.decode())


def save_provider(lab: Any, base_url: str, *, key: str = API_KEY, env: str = "") -> Any:
    provider = ModelProvider(
        project=lab, kind="responses", base_url=base_url, model=MODEL, api_key_env=env
    )
    if key:
        provider.set_api_key(key)
    provider.save()
    return provider


def config(base_url: str, policy: EgressPolicy | None = None) -> ProviderConfig:
    return ProviderConfig(
        kind="responses",
        model=MODEL,
        api_key=API_KEY,
        base_url=base_url,
        max_retries=2,
        timeout_s=10,
        egress=policy or EgressPolicy(),
    )


def test_a_redirect_to_another_host_is_not_followed(
    client: Any, personas: Any, lab: Any, fake: FakeOpenAI
) -> None:
    with FakeOpenAI([Step(text="stolen")]) as elsewhere:
        fake.add(Step(redirect=elsewhere.url + "/responses"))
        save_provider(lab, fake.url)
        client.force_login(personas.owner)
        page = check(client)
        assert "Connection failed" in page and "307" in page and "redirect" in page
        # The streamed path too.
        fake.add(Step(redirect=elsewhere.url + "/responses"))
        backend = make_backend(services.provider_config(services.provider_for_project(lab)))
        with pytest.raises(ModelError) as failure:
            backend.respond([], on_text=lambda _t: None, should_stop=lambda: False)
        assert failure.value.permanent and failure.value.status_code == 307
        assert elsewhere.requests == []
    assert len(fake.requests) == 2


def test_the_site_key_is_sent_only_to_hosts_the_site_allows(
    client: Any,
    personas: Any,
    lab: Any,
    fake: FakeOpenAI,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    settings.AGENTIDE_MODEL_KEY_VARS = ["OPENAI_API_KEY"]
    settings.AGENTIDE_MODEL_KEY_HOSTS = ["api.openai.com"]
    client.force_login(personas.owner)
    # The form refuses the combination...
    response = client.post(
        reverse("provider_settings", args=["acme", "lab"]),
        {
            "kind": "responses",
            "base_url": fake.url,
            "model": MODEL,
            "api_key_env": "OPENAI_API_KEY",
            "context_window": "128000",
            "context_budget_percent": "80",
            "price_input": "0",
            "price_cached_input": "0",
            "price_output": "0",
            "max_steps": "20",
        },
    )
    assert response.status_code == 400 and b"sends its own keys only to" in response.content
    # ... and a provider saved before the rule (or by other means) never sends the key.
    save_provider(lab, fake.url, key="", env="OPENAI_API_KEY")
    fake.add(Step(text="OK"))
    page = check(client)
    assert "Connection failed" in page and "only to api.openai.com" in page
    assert fake.requests == []
    settings.AGENTIDE_MODEL_KEY_HOSTS = ["api.openai.com", "127.0.0.1"]
    assert "Connection works" in check(client)
    assert fake.requests[0].headers["authorization"] == f"Bearer {API_KEY}"


def test_a_loopback_base_url_is_refused_unless_the_site_allows_it(
    client: Any, personas: Any, lab: Any, fake: FakeOpenAI, settings: Any
) -> None:
    settings.AGENTIDE_MODEL_PRIVATE_NETWORKS = []
    save_provider(lab, fake.url)
    fake.add(Step(text="OK"))
    client.force_login(personas.owner)
    page = check(client)
    assert "Connection failed" in page and "127.0.0.1 are refused" in page
    assert fake.requests == []
    # Saving an address the site refuses is refused with the reason (names are checked at
    # request time, as above).
    response = client.post(
        reverse("provider_settings", args=["acme", "lab"]),
        {
            "kind": "responses",
            "base_url": "http://169.254.169.254/latest",
            "model": MODEL,
            "context_window": "128000",
            "context_budget_percent": "80",
            "price_input": "0",
            "price_cached_input": "0",
            "price_output": "0",
            "max_steps": "20",
        },
    )
    assert response.status_code == 400 and b"metadata addresses" in response.content
    settings.AGENTIDE_MODEL_PRIVATE_NETWORKS = ["127.0.0.1/32"]
    assert "Connection works" in check(client)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://localhost:1/v1",
        "http://[::1]:1/v1",
        "http://[::ffff:127.0.0.1]:1/v1",
        "http://0.0.0.0:1/v1",
        "http://10.1.2.3/v1",
        "http://172.17.0.1:2375/v1",  # the Docker bridge: an engine listening on TCP
        "http://192.168.1.1/v1",
        "http://100.64.0.1/v1",  # CGNAT
        "http://169.254.169.254/latest/meta-data",
        "http://[fd00:ec2::254]/latest",
        "http://[fe80::1]/v1",
        "http://224.0.0.1/v1",
    ],
)
def test_non_public_addresses_are_refused_before_anything_is_sent(base_url: str) -> None:
    with pytest.raises(ModelError) as failure:
        make_backend(config(base_url)).complete("hello")
    assert failure.value.permanent and "refused" in failure.value.message


def test_names_resolving_to_private_addresses_are_refused_like_compose_services(
    fake: FakeOpenAI,
) -> None:
    """In compose, the worker resolves postgres, redis and docker-proxy to addresses of
    Docker's networks; a base_url naming them is refused whatever the port."""
    compose_dns = {"postgres": "172.18.0.2", "redis": "172.18.0.3", "docker-proxy": "172.19.0.2"}
    policy = EgressPolicy(resolve=lambda host, _port: [compose_dns[host]])
    for name in compose_dns:
        with pytest.raises(ModelError) as failure:
            make_backend(config(f"http://{name}:2375/v1", policy)).complete("hello")
        assert f"{name} are refused" in failure.value.message
        assert compose_dns[name] not in failure.value.message  # no map of the network
    assert fake.requests == []


def test_the_checked_address_is_the_one_connected_to_and_the_name_is_kept(
    fake: FakeOpenAI,
) -> None:
    """One resolution per request, and the connection goes to its answer (a rebinding DNS
    cannot swap the address after the check); the Host header keeps the name."""
    port = fake.url.split(":")[2].split("/")[0]
    lookups: list[str] = []

    def resolve(host: str, _port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    policy = EgressPolicy(private_hosts=("models.internal",), resolve=resolve)
    fake.add(Step(text="OK"))
    text, _usage = make_backend(
        config(f"http://models.internal:{port}/v1", policy)
    ).complete("hi")
    assert text == "OK" and lookups == ["models.internal"]
    assert fake.requests[0].headers["host"] == f"models.internal:{port}"
    # A host allowed by name still never reaches a metadata address.
    metadata = EgressPolicy(
        private_hosts=("models.internal",), resolve=lambda _h, _p: ["169.254.169.254"]
    )
    with pytest.raises(ModelError, match="refused"):
        make_backend(config(f"http://models.internal:{port}/v1", metadata)).complete("hi")


def test_provider_error_bodies_are_trimmed_and_cleaned(
    client: Any, personas: Any, lab: Any, fake: FakeOpenAI
) -> None:
    save_provider(lab, fake.url)
    fake.add(Step(status=400, message="<b>" + "A" * 5000 + "\x1b[31m\x00\x07 tail-marker"))
    client.force_login(personas.owner)
    page = check(client)
    assert "Connection failed" in page and "400" in page
    assert "A" * 290 in page and "A" * 400 not in page and "tail-marker" not in page
    assert "\x1b" not in page and "\x00" not in page and "<b>" not in page


def test_the_compose_worker_can_reach_only_private_addresses_of_its_services() -> None:
    """The worker shares networks with PostgreSQL, Redis and the Docker socket proxy. No
    compose network sets its own subnet, so their addresses come from Docker's default
    pools, which are all private and refused; the example environment allows none."""
    compose = yaml.safe_load((ROOT / "compose" / "docker-compose.yml").read_text())
    worker_networks = set(compose["services"]["worker"]["networks"])
    neighbours = {
        name
        for name, service in compose["services"].items()
        if name != "worker" and worker_networks & set(service.get("networks") or [])
    }
    assert {"postgres", "redis", "docker-proxy"} <= neighbours
    for network in (compose.get("networks") or {}).values():
        assert not (network or {}).get("ipam"), "a custom subnet must be a private one"
    docker_default_pools = [f"172.{n}.0.0/16" for n in range(17, 32)] + ["192.168.0.0/16"]
    for pool in docker_default_pools:
        first = next(ipaddress.ip_network(pool).hosts())
        assert not is_public(first)
        assert not EgressPolicy().allows("redis", first)
    env_example = (ROOT / "compose" / ".env.example").read_text().splitlines()
    assert not [
        line for line in env_example if line.startswith("AGENTIDE_MODEL_PRIVATE_")
    ], "the example must not open private addresses by default"


def self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` (and its key), its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_is_verified_against_the_name_while_connecting_to_the_checked_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path, "models.internal")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the site trusts this certificate
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda _sock, name, _ctx: server_names.append(name)
    with FakeOpenAI([Step(text="over TLS")], tls=context) as fake:
        port = fake.url.split(":")[2].split("/")[0]
        policy = EgressPolicy(
            private_hosts=("models.internal", "other.internal"),
            resolve=lambda _host, _port: ["127.0.0.1"],
        )
        text, _usage = make_backend(
            config(f"https://models.internal:{port}/v1", policy)
        ).complete("hi")
        assert text == "over TLS"
        assert server_names == ["models.internal"]
        # The certificate does not name another host resolving to the same address.
        with pytest.raises(ModelError, match="Cannot reach"):
            make_backend(config(f"https://other.internal:{port}/v1", policy)).complete("hi")


def test_a_host_that_does_not_resolve_is_a_retried_connection_error() -> None:
    with pytest.raises(ModelError) as failure:
        make_backend(config("http://no-such-host.invalid/v1")).complete("hi")
    assert not failure.value.permanent and "Cannot reach" in failure.value.message
    assert "Cannot resolve the model host no-such-host.invalid" in failure.value.message
