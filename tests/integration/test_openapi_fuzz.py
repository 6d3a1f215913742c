"""Bad input, generated (RELIABILITY.md, "Bad input"): schemathesis drives every operation of the app's own OpenAPI
document against the real app and database — no 5xx, responses as documented — and hypothesis throws hostile raw
bytes at the ingest webhook: always 2xx or 4xx, and every 2xx has exactly one ticket row.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.asgi import create_app
from core.errors import PROBLEM_JSON
from core.settings import Settings

ADMIN_TOKEN = "fuzz-admin-token-7c1f-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
INGEST = "/api/webhooks/support/ingest"
MAX_EXAMPLES = 25
BOUNDED = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases on every run: CI stays stable, a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def openapi_document() -> dict[str, Any]:
    """The app's OpenAPI document, built without a database (nothing is served)."""
    app = create_app(Settings.from_mapping({"DESKPILOT_DATABASE_URL": "postgresql://unused/unused"}))
    document: dict[str, Any] = app.openapi_schema.to_schema()
    return document


DOCUMENT = openapi_document()
# Every operation, read at collection time: a new endpoint is fuzzed without touching this file.
OPERATION_DOCS: dict[str, dict[str, Any]] = {
    op["operationId"]: op for item in DOCUMENT["paths"].values() for op in item.values() if "operationId" in op
}
OPERATIONS = sorted(OPERATION_DOCS)

# --- the errors each operation must declare -----------------------------------------------------------------
# What each operation can answer besides its success. test_every_operation_declares_the_errors_it_answers
# requires every one of them in the OpenAPI document (errors as problem+json), so the schemathesis run below
# applies the standard conformance checks to every answer, with nothing relaxed.
EXPECTED_STATUSES: dict[str, frozenset[int]] = {
    "health": frozenset({503}),
    "metrics": frozenset(),
    "ingestTicket": frozenset({200, 400, 401, 409, 413, 415, 422, 503}),
    # Public; unconfigured here (no provider credentials, no widget secret): 404 naming the setting.
    "inboundPostmark": frozenset({200, 401, 404, 413, 422, 503}),
    "inboundSendgrid": frozenset({200, 401, 404, 413, 415, 422, 503}),
    "inboundMailgun": frozenset({200, 400, 401, 404, 413, 415, 422, 503}),
    "widgetScript": frozenset(),
    "widgetPostQuestion": frozenset({403, 404, 422, 429}),
    "widgetThread": frozenset({403, 404, 422, 429}),
}
CONFLICTING_OPERATIONS = {"reviewTicket", "closeTicket"}


def expected_statuses(operation_id: str) -> frozenset[int]:
    """What an operation can answer besides its success: fixed for the public ones, derived for the admin API."""
    if operation_id in EXPECTED_STATUSES:
        return EXPECTED_STATUSES[operation_id]
    op = OPERATION_DOCS[operation_id]
    locations = {parameter["in"] for parameter in op.get("parameters", [])}
    statuses = {401, 503}  # every admin operation: the guard, and the database
    if "path" in locations:
        statuses.add(404)
    if "query" in locations or "requestBody" in op:
        statuses.add(422)
    if operation_id in CONFLICTING_OPERATIONS:
        statuses.add(409)
    return frozenset(statuses)


def is_problem(response: Any) -> bool:
    """RFC 9457 problem details, as every error of this service should be."""
    if not response.headers.get("content-type", [""])[0].startswith(PROBLEM_JSON):
        return False
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    return (
        isinstance(body, dict)
        and body.get("status") == response.status_code
        and isinstance(body.get("title"), str)
        and isinstance(body.get("detail"), str)
    )


def errors_are_problem_details(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx is application/problem+json naming its status (DESIGN.md §1.1, RELIABILITY.md inv. 3)."""
    if response.status_code >= 400:
        assert is_problem(response), f"{response.status_code} is not problem+json: {response.content[:300]!r}"
    return None


CHECKS = [
    not_a_server_error,
    errors_are_problem_details,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]

# --- schemathesis over every operation ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_app(database_url: str, embedder: Any) -> Iterator[Litestar]:
    # `embedder` loads the model once, so the first generated KB search is not a multi-second cold start.
    data_dir = Path(tempfile.mkdtemp(prefix="deskpilot-fuzz-"))
    app = create_app(
        Settings.from_mapping(
            {
                "DESKPILOT_DATABASE_URL": database_url,
                "DESKPILOT_DATA_DIR": str(data_dir),
                "DESKPILOT_ADMIN_TOKEN": ADMIN_TOKEN,
                "DESKPILOT_DB_POOL_MIN": "1",
                "DESKPILOT_DB_POOL_MAX": "4",
            }
        ),
        database_url=database_url,
        run_worker=False,
    )
    yield app
    # schemathesis keeps an ASGI app's lifespan running until interpreter exit: close our pool now.
    schemathesis_asgi.shutdown_lifespans()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def api_schema(fuzz_app: Litestar) -> Any:
    return schemathesis.openapi.from_asgi("/schema/openapi.json", fuzz_app)


@pytest.fixture
def seeded_ids(fuzz_app: Litestar, clean_db: asyncpg.Pool) -> dict[str, str]:
    """A ticket and its customer, so generated calls reach the 200 paths as well as the 404 ones."""
    with schemathesis_asgi.get_client(fuzz_app) as http:
        created = http.post(
            INGEST,
            json={
                "external_id": "fuzz-seed-1",
                "channel": "in_app",
                "customer_email": "seed@example.com",
                "subject": "Invoice download",
                "body": "Where do I download my invoices?",
            },
        )
        assert created.status_code == 201, created.text
        customer = http.post("/api/customers", json={"email": "seed@example.com"}, headers=AUTH)
        assert customer.status_code in (200, 201), customer.text
    return {"ticket_id": created.json()["ticket_id"], "customer_id": str(customer.json()["id"])}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("operation_id", OPERATIONS)
def test_operation_never_fails_and_matches_its_schema(
    api_schema: Any, seeded_ids: dict[str, str], operation_id: str, mode: GenerationMode
) -> None:
    operation = api_schema.find_operation_by_id(operation_id)
    if mode is GenerationMode.NEGATIVE and not (list(operation.iter_parameters()) or list(operation.body)):
        pytest.skip("nothing to send wrong: the operation takes no input")
    strategy = operation.as_strategy(generation_mode=mode)
    path_names = {parameter.name for parameter in operation.path_parameters}
    known = {name: value for name, value in seeded_ids.items() if name in path_names}
    if known:  # half the cases on the seeded ticket/customer, half on generated ids
        strategy = st.one_of(strategy, operation.as_strategy(generation_mode=mode, path_parameters=known))

    @BOUNDED
    @given(case=strategy)
    def run(case: Any) -> None:
        # The admin token on every call, so admin routes are exercised beyond the 401. (Negative cases that
        # mutate the security header itself still go out without it: those must be a 401 problem.)
        case.call_and_validate(headers=AUTH, checks=CHECKS)

    run()


def test_ingest_documents_its_request_body() -> None:
    operation = DOCUMENT["paths"][INGEST]["post"]
    assert "application/json" in operation.get("requestBody", {}).get("content", {})


def test_every_operation_declares_the_errors_it_answers() -> None:
    """Every status an operation can answer is declared, errors as problem+json (a declared 400 too)."""
    missing = {}
    for operation_id, op in OPERATION_DOCS.items():
        responses = op.get("responses", {})
        expected = set(expected_statuses(operation_id)) | ({400} if "400" in responses else set())
        undeclared = [
            status
            for status in sorted(expected)
            if str(status) not in responses
            or (status >= 400 and PROBLEM_JSON not in responses[str(status)].get("content", {}))
        ]
        if undeclared:
            missing[operation_id] = undeclared
    assert missing == {}


def test_response_content_types_are_well_formed(fuzz_app: Litestar, clean_db: asyncpg.Pool) -> None:
    with schemathesis_asgi.get_client(fuzz_app) as http:
        for path in ("/health", "/metrics", "/schema/openapi.json"):
            content_type = http.get(path, headers=AUTH).headers["content-type"]
            names = [part.split("=", 1)[0].strip().lower() for part in content_type.split(";")[1:]]
            assert len(names) == len(set(names)), f"{path}: duplicate parameter in {content_type!r}"


# --- hostile raw bytes at the ingest webhook ----------------------------------------------------------------

JSON_TYPES = ["application/json", "application/json; charset=utf-8", "application/vnd.deskpilot+json"]
WRONG_TYPES = [
    "",
    "text/plain",
    "text/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/json; charset=latin-1",
    "application/json; charset=utf-16",
    "application/xml",
    "application/json\x00",
]
FIELDS = ["external_id", "channel", "customer_email", "subject", "body", "customer_name", "thread_ref"]
BAD_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xe2\x82"]
LONE_SURROGATES = ["\\ud800", "\\udfff", "\\udbff", "\\udc00x", "\\ud83d", "\\ud800\\ud800"]
LIMIT = Settings().max_body_bytes

external_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.:", min_size=1, max_size=24)
words = st.lists(
    st.sampled_from(["invoice", "login", "export", "broken", "refund", "please", "help", "API", "error", "plan"]),
    min_size=1,
    max_size=8,
).map(" ".join)


@st.composite
def tickets(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "external_id": "raw-" + draw(external_ids),
        "channel": draw(st.sampled_from(["email", "in_app", "webhook"])),
        "customer_email": draw(st.sampled_from(["ann@example.com", "Bob@Example.org", "c+tag@example.net"])),
        "subject": draw(words),
        "body": draw(words),
    }
    if draw(st.booleans()):
        payload["metadata"] = draw(
            st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=3)
        )
    return payload


def encoded(payload: Any) -> bytes:
    return json.dumps(payload).encode()


@st.composite
def splice(draw: st.DrawFn, fragments: list[bytes] | list[str]) -> bytes:
    """A ticket whose chosen field carries a hostile fragment at a drawn position, spliced into the raw JSON."""
    payload = draw(tickets())
    field = draw(st.sampled_from(FIELDS))
    marker = "SPLICEHERE"
    value = str(payload.get(field, ""))
    cut = draw(st.integers(0, len(value)))
    payload[field] = value[:cut] + marker + value[cut:]
    fragment = draw(st.sampled_from(fragments))
    raw = encoded(payload)
    return raw.replace(marker.encode(), fragment if isinstance(fragment, bytes) else fragment.encode())


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    depth = draw(st.sampled_from([1, 31, 32, 33, 64, 1000, 20_000]))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    nested = opener * depth + "1" + closer * depth
    if draw(st.booleans()):
        return nested.encode()  # the whole document
    payload = draw(tickets())
    return encoded(payload)[:-1] + b', "metadata": {"deep": ' + nested.encode() + b"}}"


@st.composite
def huge(draw: st.DrawFn) -> bytes:
    """Strings up to and just past the body limit, and fields just past their own caps."""
    payload = draw(tickets())
    field, size = draw(
        st.sampled_from(
            [
                ("body", LIMIT - 400),
                ("body", LIMIT),
                ("subject", 5_000),
                ("subject", 5_001),
                ("external_id", 255),
                ("external_id", 256),
                ("customer_name", 1_001),
                ("thread_ref", 256),
            ]
        )
    )
    unit = draw(st.sampled_from(["x", "é", "😀", "\u200b", "<b>", "> "]))
    payload[field] = (unit * size)[:size]
    return encoded(payload)


@st.composite
def wrong_types(draw: st.DrawFn) -> bytes:
    """Every field replaced by any JSON value: numbers, nulls, lists, objects, booleans."""
    payload = draw(tickets())
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    )
    for field in draw(st.sets(st.sampled_from([*FIELDS, "metadata", "references", "message_id"]), min_size=1)):
        payload[field] = draw(json_values)
    return encoded(payload)


@st.composite
def hostile_keys(draw: st.DrawFn) -> bytes:
    """Hostile fragments in object keys: known field names with a tail, unknown keys, metadata keys."""
    payload = draw(tickets())
    name = draw(st.sampled_from([*FIELDS, "metadata", "status", "x"]))
    fragment = draw(st.sampled_from([*LONE_SURROGATES, "\\u0000", "\\u200b"]))
    raw = encoded({**payload, "metadata": {"SPLICEHERE": 1}} if name == "metadata" else payload)
    if name == "metadata":
        return raw.replace(b"SPLICEHERE", fragment.encode())
    return raw[:-1] + b', "' + name.encode() + fragment.encode() + b'": "x"}'


hostile_bodies = st.one_of(
    st.binary(max_size=2_048),
    tickets().map(encoded),  # some valid ones, so replays, conflicts and follow-ups happen too
    splice(BAD_UTF8),
    splice(LONE_SURROGATES),
    hostile_keys(),
    splice(["\\u0000", "\x00", "\\u0000\\u0000", "\\ufeff", "\\u202e", "\\udb40\\udc41"]),
    splice(['"', "\\", "\\x41", "\\u12", "\n", "\t", "\x7f"]),
    deep_nesting(),
    huge(),
    wrong_types(),
    st.sampled_from([b"", b"null", b"[]", b'""', b"0", b"1e999", b"{}", b"\xef\xbb\xbf{}", b"NaN", b"{" * 100]),
)


@pytest.fixture
def ingest_client(database_url: str, make_settings: Callable[..., Settings], clean_db: asyncpg.Pool) -> Iterator[Any]:
    app = create_app(make_settings(), database_url=database_url)
    with TestClient(app=app, raise_server_exceptions=False) as client:
        yield client


def sql(client: Any, query: str, *args: Any) -> Any:
    """A query through the app's own pool, on the loop the app runs on."""
    pool = client.app.state.runtime.pool
    return client.blocking_portal.call(pool.fetchval, query, *args)


def assert_refused_or_stored_once(client: Any, response: Any) -> str | None:
    """A 4xx problem, or a 2xx whose ticket exists exactly once; never a 5xx. Returns the ticket id of a 2xx."""
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
        assert response.json()["status"] == response.status_code
        return None
    assert response.status_code in (200, 201), response.text
    ticket_id: str = response.json()["ticket_id"]
    assert sql(client, "SELECT count(*) FROM tickets WHERE id = $1::uuid", ticket_id) == 1
    return ticket_id


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "x\\udbff"], ids=["ud800", "udfff", "x-udbff"])
@pytest.mark.parametrize("where", [*FIELDS, "references", "metadata key", "metadata value", "unknown key"])
def test_a_lone_surrogate_anywhere_is_refused_or_cleaned(ingest_client: Any, where: str, escape: str) -> None:
    """JSON allows lone surrogate escapes; Python strings hold them, UTF-8 and Postgres cannot."""
    payload: dict[str, Any] = {
        "external_id": f"sur-{where}-{escape}",
        "channel": "email",
        "customer_email": "ann@example.com",
        "subject": "Invoice",
        "body": "Where is my invoice?",
    }
    if where == "references":
        payload["references"] = ["MARK"]
    elif where == "metadata key":
        payload["metadata"] = {"MARK": 1}
    elif where == "metadata value":
        payload["metadata"] = {"note": "MARK"}
    elif where == "unknown key":
        payload["MARK"] = "x"
    else:
        payload[where] = str(payload.get(where, "")) + "MARK"
    raw = encoded(payload).replace(b"MARK", escape.encode())
    response = ingest_client.post(INGEST, content=raw, headers={"content-type": "application/json"})
    ticket_id = assert_refused_or_stored_once(ingest_client, response)
    if ticket_id is not None:
        stored = sql(
            ingest_client, "SELECT concat(subject, body, customer_name) FROM tickets WHERE id = $1::uuid", ticket_id
        )
        assert not any(0xD800 <= ord(ch) <= 0xDFFF for ch in stored)


def test_hostile_raw_bytes_get_4xx_or_exactly_one_ticket(ingest_client: Any) -> None:
    accepted: set[str] = set()

    @settings(BOUNDED, max_examples=250)
    @given(raw=hostile_bodies, content_type=st.sampled_from(JSON_TYPES) | st.sampled_from(WRONG_TYPES))
    def post(raw: bytes, content_type: str) -> None:
        headers = {"content-type": content_type} if content_type else {}
        response = ingest_client.post(INGEST, content=raw, headers=headers)
        ticket_id = assert_refused_or_stored_once(ingest_client, response)
        if ticket_id is not None:
            assert content_type in JSON_TYPES
            accepted.add(ticket_id)
        # Nothing written for a rejection, one row per accepted ticket: follow-ups and replays add none.
        assert sql(ingest_client, "SELECT count(*) FROM tickets") == len(accepted)

    post()
    assert accepted, "no generated request was accepted: the strategy no longer produces valid tickets"
