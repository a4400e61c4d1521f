"""`mmfuse serve` over TLS and mutual TLS, with certificates made here."""
import datetime
import ipaddress

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dataset import pseudonyms
from mmfuse.cli import main
from serving import client
from serving.conftest import small_batches
from serving.server import ModelServer


def _certificate(name, key, issuer_name, issuer_key, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for localhost/127.0.0.1 and a client
    certificate, both signed by it, as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    paths = {}

    def write(name, data):
        paths[name] = str(folder / name)
        (folder / name).write_bytes(data)

    write("ca.pem", _certificate("mmfuse test CA", ca_key, "mmfuse test CA", ca_key, ca=True)
          .public_bytes(serialization.Encoding.PEM))
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(who, key, "mmfuse test CA", ca_key, server=who == "server")
        write(f"{who}.pem", cert.public_bytes(serialization.Encoding.PEM))
        write(f"{who}.key", key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    return paths


def _served(model_base, **tls):
    served = ModelServer(model_base, port=0, batching_parameters=small_batches(),
                         announce=lambda line: None, **tls)
    served.start()
    return served


def _ask(port, credentials=None, timeout=5.0):
    with client.connect(f"127.0.0.1:{port}", timeout, credentials) as channel:
        return client.ask(channel, client.predict_request("recommend", {"user_id": ["u1"]}),
                          timeout)


def _user_key_file(tmp_path) -> str:
    """`mmfuse query --user` pseudonymises the user under a key: one of the test's own."""
    path = str(tmp_path / "user_key")
    pseudonyms.load_key(path, create=True)
    return path


def test_tls_answers_clients_that_trust_its_ca_only(model_base, pki, capsys, tmp_path):
    served = _served(model_base, tls_cert=pki["server.pem"], tls_key=pki["server.key"])
    try:
        assert _ask(served.port, client.tls_credentials(pki["ca.pem"])).model_version == 1
        with pytest.raises(ConnectionError):  # plaintext to a TLS port never gets ready
            _ask(served.port, timeout=1)
        with pytest.raises(ConnectionError):  # the system's CAs do not know ours
            _ask(served.port, client.tls_credentials(), timeout=1)
        assert main(["query", "--server", f"localhost:{served.port}", "--user", "u1",
                     "--user-key-file", _user_key_file(tmp_path), "--tls-ca", pki["ca.pem"],
                     "--json"]) == 0
        assert '"model_version": 1' in capsys.readouterr().out
    finally:
        served.stop(grace=0)


def test_mutual_tls_needs_a_client_certificate_signed_by_the_client_ca(model_base, pki, capsys,
                                                                      tmp_path):
    served = _served(model_base, tls_cert=pki["server.pem"], tls_key=pki["server.key"],
                     tls_client_ca=pki["ca.pem"])
    try:
        with pytest.raises((ConnectionError, grpc.RpcError)):
            _ask(served.port, client.tls_credentials(pki["ca.pem"]), timeout=1)
        mutual = client.tls_credentials(pki["ca.pem"], pki["client.pem"], pki["client.key"])
        assert _ask(served.port, mutual).model_version == 1
        assert main(["query", "--server", f"127.0.0.1:{served.port}", "--user", "u1", "--json",
                     "--user-key-file", _user_key_file(tmp_path), "--tls-ca", pki["ca.pem"],
                     "--tls-cert", pki["client.pem"], "--tls-key", pki["client.key"]]) == 0
        capsys.readouterr()
    finally:
        served.stop(grace=0)


def test_incomplete_or_unreadable_tls_settings_are_clear_errors(model_base, pki, tmp_path):
    with pytest.raises(ValueError, match="both serving.tls_cert and serving.tls_key"):
        ModelServer(model_base, tls_cert=pki["server.pem"])
    with pytest.raises(ValueError, match="both"):
        ModelServer(model_base, tls_client_ca=pki["ca.pem"])
    with pytest.raises(OSError, match="cannot read"):
        ModelServer(model_base, tls_cert=str(tmp_path / "none.pem"), tls_key=pki["server.key"])
    with pytest.raises(ValueError, match="not PEM"):
        ModelServer(model_base, tls_cert=pki["server.pem"], tls_key=model_base + "/1/saved_model.pb")
    with pytest.raises(ValueError, match="needs its key"):
        client.tls_credentials(pki["ca.pem"], pki["client.pem"])


def test_serve_flags_are_the_tls_settings(tmp_path, capsys):
    from mmfuse.cli import _parser, _settings

    args = _parser().parse_args(["serve", "--model-base", str(tmp_path), "--tls-cert", "c.pem",
                                 "--tls-key", "k.pem", "--tls-client-ca", "ca.pem"])
    serving = _settings(args, "serve").serving
    assert (serving.tls_cert, serving.tls_key, serving.tls_client_ca) == ("c.pem", "k.pem", "ca.pem")
    assert main(["serve", "--model-base", str(tmp_path), "--tls-cert", "c.pem"]) == 2
    assert "TLS needs both serving.tls_cert and serving.tls_key" in capsys.readouterr().err
