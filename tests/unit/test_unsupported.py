"""Every endpoint the conformance suites call is served or answers 422 `unsupported`.

The set of routes is computed from the suites' JSON files (method + path of every step), so a
new suite file or a removed table row shows up here; only the routes other work is building
right now are set aside (EXCLUDED, with who builds them)."""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path
from typing import Any, cast

import pytest

from ojs_amqp.core.envelope import UNHONOURED_OPTIONS
from ojs_amqp.http import unsupported
from ojs_amqp.http.app import HttpApi
from ojs_amqp.http.server import Request, Response
from ojs_amqp.settings import Settings

HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
SOME_ID = "019539a4-0000-7000-8000-000000000abc"
#: Routes under construction elsewhere (issue 12: progress, probes and the drain beat are
#: built by another change; DELETE /ojs/v1/queues/{q} by another). Regexes on the path.
EXCLUDED = {
    ("GET", r"/ojs/v1/jobs/[^/]+/progress"),
    ("PUT", r"/ojs/v1/jobs/[^/]+/progress"),
    ("GET", r"/health"),
    ("GET", r"/ready"),
    ("POST", r"/ojs/v1/workers/beat"),
    ("GET", r"/ojs/v1/workers/[^/]+/health"),
    ("DELETE", r"/ojs/v1/queues/[^/]+"),
}


def _suites_dir() -> Path:
    given = os.environ.get("OJS_CONFORMANCE_DIR")
    candidates = [Path(given)] if given else []
    candidates += [p / "shared" / "conformance" for p in Path(__file__).resolve().parents]
    for candidate in candidates:
        if (candidate / "suites").is_dir():
            return candidate / "suites"
    pytest.fail("conformance suites not found; set OJS_CONFORMANCE_DIR")


def suite_routes() -> dict[tuple[str, str], set[str]]:
    """(method, concrete path) -> the suite directories whose steps call it."""
    found: dict[tuple[str, str], set[str]] = {}
    root = _suites_dir()
    for file in sorted(root.rglob("*.json")):
        test = json.loads(file.read_text())
        for step in test.get("steps", []) if isinstance(test, dict) else []:
            method, path = str(step.get("action", "")).upper(), step.get("path")
            if method not in HTTP_METHODS or not isinstance(path, str):
                continue
            path = re.sub(r"\{\{[^}]*\}\}|\$\{[^}]*\}", SOME_ID, path.split("?", 1)[0])
            found.setdefault((method, path), set()).add(file.relative_to(root).parts[0])
    return found


def _excluded(method: str, path: str) -> bool:
    return any(m == method and re.fullmatch(p, path) for m, p in EXCLUDED)


@pytest.fixture(scope="module")
def api() -> HttpApi:
    # The unsupported routes and the manifest touch neither the engine nor cron.
    return HttpApi(cast(Any, None), cast(Any, None), Settings())


def call(api: HttpApi, method: str, path: str, body: bytes = b"") -> tuple[Response, Any]:
    headers = {"content-type": "application/json"} if body else {}
    answer = asyncio.run(api.handle(Request(method, path, "", headers, body)))
    assert isinstance(answer, Response)
    return answer, json.loads(answer.body)


def _is_served(api: HttpApi, method: str, path: str) -> bool:
    handler, _ = api.router.resolve(method, path)
    # A bound method of one of the API's route tables = served (a table row is a function).
    return getattr(handler, "__self__", None) is not None


def test_every_route_of_the_suites_is_served_or_answers_unsupported(api: HttpApi) -> None:
    routes = suite_routes()
    assert len(routes) > 50  # the walk found the suites
    wrong, refused = {}, set()
    for (method, path), dirs in sorted(routes.items()):
        if _excluded(method, path):
            continue
        try:
            if _is_served(api, method, path):
                continue
        except Exception as exc:  # 404 / 405: neither served nor in the table
            wrong[f"{method} {path}"] = f"{type(exc).__name__} ({', '.join(sorted(dirs))})"
            continue
        response, body = call(api, method, path, b"{}" if method in ("POST", "PUT") else b"")
        error = body["error"]
        if response.status != 422 or error["code"] != "unsupported":
            wrong[f"{method} {path}"] = f"{response.status} {error['code']}"
            continue
        feature = error["details"]["feature"]
        part = error["details"].get("level", error["details"].get("extension"))
        assert feature in error["message"] and str(part) in error["message"]
        assert error["details"]["path"] == path
        refused.add(feature)
    assert wrong == {}
    # Every row of the table is reached by some suite step (none is dead weight) ...
    assert refused == {f.feature for f in unsupported.MISSING}


def test_the_suites_levels_three_and_four_are_all_refused_by_level(api: HttpApi) -> None:
    for (method, path), dirs in suite_routes().items():
        if dirs & {"level-3-workflows", "level-4-advanced"} and not _is_served(api, method, path):
            _, body = call(api, method, path, b"{}" if method == "POST" else b"")
            level = body["error"]["details"]["level"]
            assert f"conformance level {level}" in body["error"]["message"]
            assert level == (3 if "level-3-workflows" in dirs else 4)


def test_no_row_of_the_table_shadows_a_served_route(api: HttpApi) -> None:
    """A served route wins over a row; a row it hides is stale and must be deleted."""
    for method, template, feature in unsupported.routes():
        path = re.sub(r"\{[a-z_]+\}", "x1", template)
        assert not _is_served(api, method, path), f"{method} {template} is served: drop the row"
        _, body = call(api, method, path, b"{}" if method in ("POST", "PUT", "PATCH") else b"")
        assert body["error"]["details"]["feature"] == feature.feature


def test_the_manifest_says_each_missing_feature_is_off(api: HttpApi) -> None:
    _, manifest = call(api, "GET", "/ojs/manifest")
    listed = {entry["feature"]: entry for entry in manifest["unsupported"]}
    for feature in unsupported.MISSING:
        assert listed[feature.feature]["endpoints"] == list(feature.routes)
        if feature.capability:
            assert manifest["capabilities"][feature.capability] is False
    # Options refused on push are listed too.
    options = {entry["option"] for entry in manifest["unsupported_options"]}
    assert options == set(UNHONOURED_OPTIONS) and "unique" in options
    assert manifest["capabilities"]["unique_jobs"] is False
    # Served features stay on.
    assert manifest["capabilities"]["cron_jobs"] is True
    assert manifest["capabilities"]["dead_letter"] is True


def test_an_unsupported_answer_names_feature_and_level(api: HttpApi) -> None:
    response, body = call(api, "POST", "/ojs/v1/workflows", b'{"type": "chain"}')
    assert response.status == 422
    error = body["error"]
    assert error["code"] == "unsupported" and error["retryable"] is False
    assert "workflows" in error["message"] and "conformance level 3" in error["message"]
    assert error["details"] == {"feature": "workflows (chain, group, batch)",
                                "spec": "ojs-workflows", "level": 3,
                                "path": "/ojs/v1/workflows"}  # fmt: skip
    _, body = call(api, "POST", "/ojs/v1/webhooks/subscriptions", b"{}")
    assert "the ext-webhooks extension" in body["error"]["message"]


def test_an_unknown_path_is_a_404_with_a_hint_about_paths(api: HttpApi) -> None:
    response, body = call(api, "GET", "/ojs/v1/nothing-here")
    assert response.status == 404 and body["error"]["code"] == "not_found"
    hint = body["error"]["hint"]
    assert "path" in hint and "/ojs/v1" in hint and " id" not in hint
    assert body["error"]["details"] == {"path": "/ojs/v1/nothing-here"}


def test_a_known_path_with_a_wrong_method_is_a_405_listing_every_method(api: HttpApi) -> None:
    response, body = call(api, "PATCH", "/ojs/v1/jobs/batch")
    assert response.status == 405 and body["error"]["code"] == "method_not_allowed"
    # /jobs/batch (a row: POST) and /jobs/{id} (served: GET, HEAD, DELETE) both match
    assert ("Allow", "DELETE, GET, HEAD, POST") in response.headers
    response, _ = call(api, "PUT", "/ojs/v1/workflows")
    assert response.status == 405 and ("Allow", "POST") in response.headers


def test_a_row_does_not_hide_a_served_route_on_an_overlapping_path(api: HttpApi) -> None:
    handler, params = api.router.resolve("GET", "/ojs/v1/jobs/batch")
    assert handler == api.jobs.info and params == {"id": "batch"}  # a job id, as before
    handler, _ = api.router.resolve("POST", "/ojs/v1/jobs/batch")
    assert getattr(handler, "__self__", None) is None  # the table's refusal
