"""EtcdSettings: parsing the original's flags, normalising, and one-line refusals."""

from __future__ import annotations

import pytest

from kaylee_sync.errors import UsageError
from kaylee_sync.settings import EtcdSettings


def test_defaults_match_the_original_kaylee() -> None:
    settings = EtcdSettings()

    assert settings.endpoints == ("http://127.0.0.1:4001", "http://127.0.0.1:2379")
    assert settings.prefix == "/kaylee2"
    assert settings.timeout == 5.0


def test_endpoints_string_is_split_on_commas_and_blanks_dropped() -> None:
    settings = EtcdSettings.from_endpoints_string(" http://a:1 , https://b:2/,", ca_file="")

    assert settings.endpoints == ("http://a:1", "https://b:2")
    assert settings.ca_file is None


@pytest.mark.parametrize("raw", ["kaylee2", "/kaylee2/", "kaylee2//", " /kaylee2 "])
def test_prefix_is_normalised(raw: str) -> None:
    assert EtcdSettings(prefix=raw).prefix == "/kaylee2"


def test_password_never_appears_in_repr() -> None:
    settings = EtcdSettings(username="root", password="hunter2")

    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings)
    assert "root" in repr(settings)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"endpoints": ("127.0.0.1:2379",)}, "must start with http:// or https://"),
        ({"endpoints": ("unix:///run/etcd.sock",)}, "must start with http:// or https://"),
        ({"endpoints": ("http://127.0.0.1",)}, "must name a host and a port"),
        ({"endpoints": ("http://127.0.0.1:99999",)}, "invalid port"),
        ({"endpoints": ("http://127.0.0.1:2379/v2",)}, "must not have a path"),
        ({"endpoints": ()}, "no etcd endpoint"),
        ({"cert_file": "c.pem"}, "--etcd-cert-file and --etcd-key-file must be given together"),
        ({"key_file": "k.pem"}, "--etcd-cert-file and --etcd-key-file must be given together"),
        ({"username": "root"}, "--etcd-password missing"),
        ({"password": "x"}, "--etcd-username missing"),
        ({"ca_file": "ca.pem"}, "TLS files given but etcd endpoint http://127.0.0.1:4001"),
        ({"prefix": "/"}, "not the root"),
        ({"prefix": "/a/../b"}, "'..'"),
        ({"timeout": 0}, "must be positive"),
    ],
)
def test_bad_settings_are_refused_in_one_line(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        EtcdSettings(**kwargs)  # type: ignore[arg-type]

    assert "\n" not in str(caught.value)


def test_credentials_in_an_endpoint_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(UsageError) as caught:
        EtcdSettings.from_endpoints_string("http://root:hunter2@127.0.0.1:2379")

    assert "hunter2" not in str(caught.value)
    assert "--etcd-username" in str(caught.value)


def test_https_endpoints_with_tls_files_are_accepted() -> None:
    settings = EtcdSettings.from_endpoints_string(
        "https://10.0.0.1:2379,https://[::1]:2379",
        ca_file="ca.pem",
        cert_file="c.pem",
        key_file="k.pem",
    )

    assert settings.endpoints == ("https://10.0.0.1:2379", "https://[::1]:2379")
    assert settings.uses_tls_files
