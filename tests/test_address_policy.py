"""One address policy for image_url fetches and webhook deliveries: every category of the table, in IPv4, IPv6 and
IPv4-in-IPv6 forms, under both settings (allow_private false and true), through the three ways out: an image fetch,
a webhook attempt and the webhook_url check at submission. The DNS answer is the address under test and the HTTP
exchange is a stand-in transport, so allowed addresses are reached without a network and the pinned address is seen.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest

from avatar import webhooks
from avatar.errors import FetchRefused, InvalidRequest
from avatar.store import fetch as fetch_mod
from avatar.store.addresses import NEVER, PRIVATE_CATEGORIES, Category, categorize
from avatar.store.fetch import FetchPolicy, fetch_image

pytestmark = pytest.mark.timeout(60)

PUBLIC = "public"
EXAMPLES: dict[str, list[str]] = {
    Category.METADATA: ["169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16",
                        "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "::a9fe:a9fe", "2002:a9fe:a9fe::1"],
    Category.LINK_LOCAL: ["169.254.1.1", "fe80::1", "::ffff:169.254.1.1"],
    Category.UNSPECIFIED: ["0.0.0.0", "::", "::ffff:0.0.0.0"],
    Category.MULTICAST: ["224.0.0.1", "239.1.2.3", "ff02::1", "::ffff:224.0.0.1"],
    Category.LOOPBACK: ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"],
    Category.PRIVATE: ["10.1.2.3", "172.16.0.1", "192.168.1.1", "fd12:3456::1", "::ffff:10.0.0.1",
                       "2002:c0a8:0101::1"],
    Category.SHARED: ["100.64.0.1", "100.127.255.254", "::ffff:100.64.0.1"],
    Category.RESERVED: ["240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1", "0.1.2.3", "2001:db8::1",
                        "::ffff:240.0.0.1"],
    PUBLIC: ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "2002:0808:0808::1"],
}
CASES = [(category, address) for category, addresses in EXAMPLES.items() for address in addresses]
# what each setting lets through, written out here rather than read from the code under test
REACHABLE = {False: {PUBLIC}, True: {PUBLIC, Category.LOOPBACK, Category.PRIVATE, Category.SHARED}}


def test_every_category_has_examples_and_a_rule():
    assert set(EXAMPLES) - {PUBLIC} == set(Category)
    assert PRIVATE_CATEGORIES | NEVER == set(Category) and not PRIVATE_CATEGORIES & NEVER
    assert {Category.METADATA, Category.LINK_LOCAL} <= NEVER


@pytest.mark.parametrize("category,address", CASES)
def test_each_address_falls_in_its_category(category, address):
    assert categorize(address) == (None if category == PUBLIC else category)


@pytest.fixture()
def reach(monkeypatch):
    """`target.test` resolves to the address under test; requests go to a stand-in that records where."""
    reached: list[str] = []
    answer: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "target.test":
            family = socket.AF_INET6 if ":" in answer["ip"] else socket.AF_INET
            return [(family, socket.SOCK_STREAM, 6, "", (answer["ip"], port))]
        return real(host, port, *args, **kwargs)

    def handler(request: httpx.Request) -> httpx.Response:
        reached.append(request.url.host)
        return httpx.Response(200, content=b"ok")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(fetch_mod, "_client", lambda policy: httpx.AsyncClient(transport=httpx.MockTransport(handler)))

    def to(ip: str) -> list[str]:
        answer["ip"] = ip
        reached.clear()
        return reached
    return to


def _outcomes(policy: FetchPolicy) -> dict[str, str | None]:
    """The refusal (or None) of each way out for `http://target.test`."""
    out: dict[str, str | None] = {}
    try:
        assert fetch_image("http://target.test/photo.jpg", policy) == b"ok"
        out["image_url"] = None
    except FetchRefused as exc:
        out["image_url"] = exc.message
    body = webhooks.message("completed", {"job_id": "job_1"})
    record = asyncio.run(webhooks.attempt("http://target.test/hook", body,
                                          webhooks.sign([webhooks.new_secret()], "msg_1", time.time(), body), policy))
    out["webhook"] = record["error"]
    try:
        webhooks.check_webhook_url("http://target.test/hook", policy)
        out["webhook_url check"] = None
    except InvalidRequest as exc:
        out["webhook_url check"] = exc.message
    return out


@pytest.mark.parametrize("category,address", CASES)
@pytest.mark.parametrize("allow_private", [False, True])
def test_fetches_and_webhooks_follow_one_table(reach, category, address, allow_private):
    reached = reach(address)
    outcomes = _outcomes(FetchPolicy(timeout_s=5, allow_private=allow_private))
    if category in REACHABLE[allow_private]:
        assert outcomes == {"image_url": None, "webhook": None, "webhook_url check": None}
        assert len(reached) == 2 and all(h.strip("[]") == address for h in reached)   # pinned to the checked one
    else:
        assert all(msg is not None and "non-public" in msg and f": {category.value})" in msg
                   for msg in outcomes.values()), outcomes
        assert reached == []


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest", "http://[fe80::1]/", "http://[::ffff:169.254.169.254]/",
                                 "http://[fd00:ec2::254]/", "http://100.100.100.200/", "http://169.254.170.2/v2",
                                 "http://255.255.255.255/", "http://240.0.0.1/"])
def test_metadata_link_local_and_reserved_literals_stay_refused_when_private_targets_are_allowed(url):
    policy = FetchPolicy(timeout_s=2, allow_private=True)
    with pytest.raises(FetchRefused, match="non-public"):
        fetch_image(url, policy)
    with pytest.raises(InvalidRequest) as err:
        webhooks.check_webhook_url(url, policy)
    assert err.value.field == "webhook_url"
    body = webhooks.message("completed", {"job_id": "job_1"})
    record = asyncio.run(webhooks.attempt(url, body, webhooks.sign([webhooks.new_secret()], "m", time.time(), body),
                                          policy))
    assert record["status_code"] is None and "non-public" in record["error"]
