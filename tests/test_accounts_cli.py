"""`avatar accounts create|credit|show|seats|plan` and `avatar db migrate`, on both database backends."""

from __future__ import annotations

import json

import pytest

from avatar.store.credits import Ledger
from avatar.store.database import open_database
from avatar.store.migrations import LATEST
from cli import main


@pytest.fixture()
def run(database_url, monkeypatch, capsys):
    monkeypatch.setenv("AVATAR_DATABASE_URL", database_url)
    monkeypatch.setenv("AVATAR_ACCOUNT_PEPPER", "a pepper every node shares")

    def run(*argv: str) -> tuple[int, dict | None, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, json.loads(out) if out.strip() else None, err
    return run


def test_credit_show_and_seats(run, database_url):
    code, created, err = run("accounts", "create", "Acme HR", "--plan", "team")
    assert code == 0 and created["plan"] == "team" and "shown only this once" in err
    account = created["account_id"]
    assert run("accounts", "credit", account, "100", "--note", "invoice 42")[1]["balance"] == 100
    assert run("accounts", "credit", account, "-40")[1]["balance"] == 60
    ledger = Ledger(open_database(database_url))
    ledger.hold(account, "req_1", "corporate_headshot", "slack", 1, external_id="emp-7", seat_price=10, seat_s=3600)
    ledger.settle("req_1", billable=True)
    code, shown, _ = run("accounts", "show", account)
    assert code == 0 and (shown["name"], shown["plan"], shown["balance"], shown["active_seats"]) == \
        ("Acme HR", "team", 50, 1)
    assert [g["note"] for g in shown["recent_grants"]] == ["", "invoice 42"]
    code, seats, _ = run("accounts", "seats", account)
    assert code == 0 and [s["external_id"] for s in seats["seats"]] == ["emp-7"]
    assert seats["seats"][0]["expires_at"] - seats["seats"][0]["opened_at"] == pytest.approx(3600)
    assert run("accounts", "plan", account, "default")[0] == 0
    assert run("accounts", "show", account)[1]["plan"] == "(default)"


def test_bad_commands_exit_2_with_a_json_error(run):
    account = run("accounts", "create", "Acme")[1]["account_id"]
    for argv, code in ((("accounts", "credit", "acc_missing", "5"), "account_not_found"),
                       (("accounts", "show", "acc_missing"), "account_not_found"),
                       (("accounts", "seats", "acc_missing"), "account_not_found"),
                       (("accounts", "credit", account, "-1"), "invalid_request"),
                       (("accounts", "credit", account, "0"), "invalid_request")):
        status, _, err = run(*argv)
        assert status == 2 and json.loads(err)["error"]["code"] == code, argv


def test_db_migrate_reports_the_version(run):
    code, report, _ = run("db", "migrate")
    assert code == 0 and report["applied"] == list(range(1, LATEST + 1)) and report["version"] == LATEST
    code, again, _ = run("db", "migrate")
    assert code == 0 and again["applied"] == [] and again["version"] == LATEST
    assert "***" in report["database"] or report["database"].startswith(("sqlite", "postgresql://avatar@"))
