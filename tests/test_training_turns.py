"""The per-account running turns of style training jobs (`training.gate.AccountTurns`), without Ray: the account's
jobs run in submission order whichever driver asks first, a dead driver loses its turn and its place."""

from __future__ import annotations

from training.gate import AccountTurns


def turns(dead: set[str] | None = None) -> AccountTurns:
    gone = dead if dead is not None else set()
    return AccountTurns(alive=lambda job_id, namespace: job_id not in gone)


def test_a_later_job_whose_driver_asks_first_waits_for_the_earlier_one():
    t = turns()
    t.enqueue("acc", "first")
    t.enqueue("acc", "second")
    assert not t.acquire("acc", "second", 1, "ns")
    assert t.acquire("acc", "first", 1, "ns")
    assert not t.acquire("acc", "second", 1, "ns")   # the first holds the account's one turn
    t.release("acc", "first")
    assert t.acquire("acc", "second", 1, "ns")


def test_accounts_do_not_wait_for_each_other():
    t = turns()
    t.enqueue("a", "a1")
    t.enqueue("b", "b1")
    assert t.acquire("b", "b1", 1, "ns")
    assert t.acquire("a", "a1", 1, "ns")


def test_a_dead_driver_loses_its_turn_and_its_place():
    dead: set[str] = set()
    t = turns(dead)
    for job in ("j1", "j2", "j3"):
        t.enqueue("acc", job)
    assert t.acquire("acc", "j1", 1, "ns")
    dead.update({"j1", "j2"})          # the running one and the next in line died
    assert t.acquire("acc", "j3", 1, "ns")


def test_a_cancelled_job_leaves_the_line_and_a_turn_is_asked_for_once():
    t = turns()
    for job in ("j1", "j2", "j3"):
        t.enqueue("acc", job)
    t.release("acc", "j1")             # cancelled while queued
    assert t.acquire("acc", "j2", 2, "ns") and t.acquire("acc", "j2", 2, "ns")
    assert t.acquire("acc", "j3", 2, "ns")
    assert t.holders["acc"] == {"j2", "j3"} and t.waiting["acc"] == []


def test_after_a_restart_drivers_line_up_in_the_order_they_ask():
    t = turns()                        # the actor restarted: nothing enqueued
    assert t.acquire("acc", "x", 1, "ns")
    assert not t.acquire("acc", "y", 1, "ns")
    assert not t.acquire("acc", "z", 1, "ns")
    t.release("acc", "x")
    assert not t.acquire("acc", "z", 1, "ns") and t.acquire("acc", "y", 1, "ns")
