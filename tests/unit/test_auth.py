import pytest

from ojs_amqp.cli import _check_exposure
from ojs_amqp.http.auth import parse_tokens, required_scopes
from ojs_amqp.settings import Settings, Token

SECRET = "s" * 16


def test_tokens_parse_from_lines_or_commas_and_hide_their_secret() -> None:
    tokens = parse_tokens(f"# ops\nadmin:{SECRET}\n\nworker:{'w' * 20}, producer:{'p' * 16}")
    assert [t.scope for t in tokens] == ["admin", "worker", "producer"]
    assert SECRET not in repr(tokens[0])


@pytest.mark.parametrize("bad", ["admin", f"root:{SECRET}", "admin:short", f":{SECRET}"])
def test_malformed_tokens_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_tokens(bad)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("POST", "/ojs/v1/jobs", {"producer", "admin"}),
     ("DELETE", "/ojs/v1/jobs/x", {"producer", "admin"}),
     ("GET", "/ojs/v1/jobs/x", {"producer", "worker", "admin", "admin-read"}),
     ("POST", "/ojs/v1/workers/fetch", {"worker", "admin"}),
     ("POST", "/ojs/v1/workers/w1/directive", {"admin"}),
     ("GET", "/ojs/v1/dead-letter", {"admin", "admin-read"}),
     ("POST", "/ojs/v1/cron", {"admin"}),
     ("GET", "/ojs/v1/cron", {"producer", "worker", "admin", "admin-read"}),
     ("POST", "/ojs/v1/admin/reset", {"admin"}),
     ("GET", "/ojs/v1/admin/jobs", {"admin", "admin-read"}),
     ("HEAD", "/ojs/v1/admin/stats", {"admin", "admin-read"}),
     ("POST", "/ojs/v1/admin/jobs/bulk/retry", {"admin"}),
     ("DELETE", "/ojs/v1/admin/dead-letter/x", {"admin"}),
     ("PUT", "/ojs/v1/admin/queues/q/config", {"admin"})],
)  # fmt: skip
def test_each_route_needs_the_scopes_of_its_role(method: str, path: str, allowed: set[str]) -> None:
    assert required_scopes(method, path) == allowed


def test_a_public_address_without_tokens_is_refused_unless_allowed() -> None:
    with pytest.raises(SystemExit, match="without authentication"):
        _check_exposure(Settings(http_host="0.0.0.0"))
    _check_exposure(Settings(http_host="0.0.0.0", allow_unauthenticated=True))
    _check_exposure(Settings(http_host="0.0.0.0", auth_tokens=(Token("admin", SECRET),)))
    _check_exposure(Settings(http_host="::1"))


def test_test_mode_is_refused_off_loopback_even_with_tokens() -> None:
    with pytest.raises(SystemExit, match="test-mode"):
        _check_exposure(Settings(http_host="10.0.0.5", test_mode=True,
                                 auth_tokens=(Token("admin", SECRET),)))  # fmt: skip
