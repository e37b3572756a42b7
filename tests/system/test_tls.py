"""TLS trust for FHIR and JWKS calls, against a real HTTPS server on loopback signed by a CA made here.

The sessions keep ``trust_env=False`` (no proxies or netrc from the environment), so the CA trust is applied
explicitly: ``NMS_CDS_CA_BUNDLE``, else ``REQUESTS_CA_BUNDLE``, else ``SSL_CERT_FILE``, else the system store.
A TLS failure is named as such (``certificate verify failed (...)``) in the log and in the 412 reason.
"""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from cds_service.app import create_app
from cds_service.auth import Authenticator
from cds_service.config import Settings
from cds_service.errors import FhirTlsError, Unauthorized
from cds_service.fhir.client import Deadline, FhirClient
from tests.conftest import make_settings
from tests.helpers.jwt_helpers import ec_key, jwks, make_token, write_trusted_clients

TRUST_VARIABLES = ("NMS_CDS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")
KEY = ec_key("tls-es384")
ISS = "https://ehr.tls.example"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca(directory: Path, label: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(f"nms-cds test CA {label}"))
            .issuer_name(_name(f"nms-cds test CA {label}")).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    path = directory / f"ca-{label}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_server_cert(directory: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     names: list[x509.GeneralName]) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("nms-cds test server")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / "server.pem", directory / "server-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        body: dict[str, Any]
        if path == "/jwks.json":
            body = jwks(KEY)
        elif path.startswith("/fhir/Patient/"):
            body = {"resourceType": "Patient", "id": path.rsplit("/", 1)[1]}
        else:
            body = {"resourceType": "Bundle", "type": "searchset", "entry": []}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class _TlsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # handshakes the client aborts (untrusted CA) are expected here


@dataclass
class Pki:
    ca: Path
    other_ca: Path
    origin: str

    @property
    def fhir(self) -> str:
        return self.origin + "/fhir"


def _serve(cert: Path, key: Path) -> tuple[_TlsServer, str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = _TlsServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"https://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pki]:
    for name in TRUST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    ca_key, ca_cert, ca_path = make_ca(tmp_path, "a")
    _, _, other = make_ca(tmp_path, "b")
    cert, key = make_server_cert(tmp_path, ca_key, ca_cert, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    server, origin = _serve(cert, key)
    yield Pki(ca_path, other, origin)
    server.shutdown()
    server.server_close()


def settings_for(pki: Pki, **overrides: Any) -> Settings:
    options: dict[str, Any] = {"fhir_allowlist": [pki.fhir], "REQUESTS_CA_BUNDLE": None, "SSL_CERT_FILE": None}
    options.update(overrides)
    return make_settings(**options)


def hook_call(fhir: str) -> dict[str, Any]:
    return {"hook": "order-sign", "hookInstance": "3c0b2f57-2a8d-4c1e-9f57-0d8a3c6b1e10", "fhirServer": fhir,
            "context": {"userId": "Practitioner/example", "patientId": "p1",
                        "draftOrders": {"resourceType": "Bundle", "entry": [{"resource": {
                            "resourceType": "MedicationRequest", "id": "d1", "status": "draft", "intent": "order",
                            "subject": {"reference": "Patient/p1"},
                            "medicationCodeableConcept": {"coding": [{
                                "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "5093"}]}}}]}}}


def test_a_private_ca_that_is_not_trusted_is_named_in_the_error_and_the_log(
        pki: Pki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    settings = settings_for(pki)
    assert settings.tls_trust[1] in ("system trust store", "certifi")
    with pytest.raises(FhirTlsError) as excinfo:
        FhirClient(pki.fhir, settings, Deadline(3.0)).read("Patient/p1")
    assert "certificate verify failed (unable to get local issuer certificate)" in excinfo.value.message
    assert "NMS_CDS_CA_BUNDLE" in excinfo.value.message
    tls_lines = [r for r in caplog.records if getattr(r, "event", None) == "fhir-tls-failed"]
    assert tls_lines and "certificate verify failed" in tls_lines[-1].getMessage()


def test_the_412_reason_says_certificate_verify_failed(pki: Pki) -> None:
    app = create_app(settings_for(pki))
    try:
        resp = app.test_client().post("/cds-services/nms-order-sign", json=hook_call(pki.fhir))
    finally:
        app.extensions["nms_cds"].close()
    assert resp.status_code == 412
    diagnostics = resp.get_json()["issue"][0]["diagnostics"]
    assert "TLS certificate verify failed (unable to get local issuer certificate)" in diagnostics
    assert "connection failed" not in diagnostics


@pytest.mark.parametrize("variable", TRUST_VARIABLES)
def test_each_trust_setting_makes_the_private_ca_trusted(pki: Pki, monkeypatch: pytest.MonkeyPatch,
                                                         variable: str) -> None:
    monkeypatch.setenv(variable, str(pki.ca))
    settings = make_settings(fhir_allowlist=[pki.fhir])  # the CA comes from the environment variable
    assert settings.tls_trust == (str(pki.ca), variable)
    patient = FhirClient(pki.fhir, settings, Deadline(3.0)).read("Patient/p1")
    assert patient == {"resourceType": "Patient", "id": "p1"}


def test_the_service_answers_through_a_private_ca_when_it_is_configured(pki: Pki) -> None:
    app = create_app(settings_for(pki, ca_bundle=pki.ca))
    try:
        resp = app.test_client().post("/cds-services/nms-order-sign", json=hook_call(pki.fhir))
    finally:
        app.extensions["nms_cds"].close()
    assert resp.status_code == 200, resp.get_json()


def test_nms_cds_ca_bundle_wins_over_the_standard_variables(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.other_ca))
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.other_ca))
    monkeypatch.setenv("NMS_CDS_CA_BUNDLE", str(pki.ca))
    settings = make_settings(fhir_allowlist=[pki.fhir])
    assert settings.tls_trust == (str(pki.ca), "NMS_CDS_CA_BUNDLE")
    assert FhirClient(pki.fhir, settings, Deadline(3.0)).read("Patient/p1")["id"] == "p1"


def test_a_bundle_with_another_ca_fails_verification(pki: Pki) -> None:
    with pytest.raises(FhirTlsError, match="certificate verify failed"):
        FhirClient(pki.fhir, settings_for(pki, ca_bundle=pki.other_ca), Deadline(3.0)).read("Patient/p1")


def test_a_certificate_for_another_name_fails_with_the_mismatch_named(tmp_path: Path, pki: Pki) -> None:
    key, cert, ca_path = make_ca(tmp_path, "c")
    server_cert, server_key = make_server_cert(tmp_path, key, cert, [x509.DNSName("fhir.example.org")])
    server, origin = _serve(server_cert, server_key)
    try:
        settings = settings_for(pki, ca_bundle=ca_path, fhir_allowlist=[origin + "/fhir"])
        with pytest.raises(FhirTlsError) as excinfo:
            FhirClient(origin + "/fhir", settings, Deadline(3.0)).read("Patient/p1")
    finally:
        server.shutdown()
        server.server_close()
    assert "certificate verify failed (IP address mismatch)" in excinfo.value.message


@pytest.mark.parametrize("trusted", [True, False], ids=["ca-configured", "ca-missing"])
def test_jwks_fetch_uses_the_same_trust(tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture,
                                        trusted: bool) -> None:
    caplog.set_level(logging.INFO)
    clients = write_trusted_clients(tmp_path / "clients.json", [{"iss": ISS, "jwks_url": pki.origin + "/jwks.json"}])
    settings = settings_for(pki, auth="jwt", trusted_clients=clients, public_base_url="https://cds.example.org",
                            ca_bundle=pki.ca if trusted else None)
    authenticator = Authenticator(settings)
    audience = "https://cds.example.org/cds-services"
    jwt_token = make_token(KEY, iss=ISS, aud=audience, now=time.time())
    if trusted:
        assert authenticator.verify(f"Bearer {jwt_token}", audience)
        return
    with pytest.raises(Unauthorized) as excinfo:
        authenticator.verify(f"Bearer {jwt_token}", audience)
    assert excinfo.value.reason.startswith("unknown kid")
    fetch_lines = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "jwks-fetch"]
    assert any("TLS certificate verify failed (unable to get local issuer certificate)" in line
               for line in fetch_lines), fetch_lines


@pytest.mark.parametrize("variable", TRUST_VARIABLES)
def test_a_missing_ca_file_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    variable: str) -> None:
    for name in TRUST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "missing.pem"))
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    (error,) = excinfo.value.errors()
    assert f"{variable}={tmp_path / 'missing.pem'}: no such file" in str(error["msg"])
