"""Retry policies: classification, backoff, budgets, and the arguments they refuse."""

from __future__ import annotations

import sqlite3

import httpx
import peewee
import psycopg2
import pytest

import farine.amqp
from farine._retry import Backoff, Permanent, Retry, Retryable, RetryPolicy, is_transient
from farine.amqp import PublishTimeout, UnroutableError
from farine.exceptions import ConfigurationError


class CatalogueDown(Retryable):
    pass


class BadOrder(Permanent, ConnectionError):
    """Permanent wins over what else the type is."""


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(),
        TimeoutError(),
        OSError("disk"),
        peewee.OperationalError("server closed the connection"),
        peewee.InterfaceError("connection already closed"),
        psycopg2.OperationalError("could not connect"),
        sqlite3.OperationalError("database is locked"),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        PublishTimeout("not confirmed"),
        CatalogueDown("down"),
    ],
)
def test_transient_failures(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError(),
        KeyError("id"),
        TypeError(),
        UnroutableError("nowhere"),
        BadOrder(),
        Exception(),
    ],
)
def test_permanent_failures(exc: BaseException) -> None:
    assert not is_transient(exc)


def test_exponential_backoff_is_capped_and_jittered_in_its_upper_half() -> None:
    backoff = Backoff(initial=1, factor=2, cap=5)
    assert [backoff.nominal(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]
    low = RetryPolicy(Retry(attempts=9, backoff=backoff), rand=lambda: 0.0)
    high = RetryPolicy(Retry(attempts=9, backoff=backoff), rand=lambda: 0.999)
    assert low.decide(OSError(), 3).delay == 2.0
    assert high.decide(OSError(), 3).delay == pytest.approx(4.0, rel=1e-3)


def test_fixed_delays_and_lists_are_not_jittered() -> None:
    fixed = RetryPolicy(Retry(attempts=9, backoff=0.5))
    listed = RetryPolicy(Retry(attempts=9, backoff=[1, 5, 30]))
    assert [fixed.decide(OSError(), n).delay for n in (1, 2)] == [0.5, 0.5]
    assert [listed.decide(OSError(), n).delay for n in (1, 2, 3, 4)] == [1, 5, 30, 30]


def test_attempts_count_the_calls_in_all() -> None:
    policy = RetryPolicy(Retry(attempts=3, backoff=0))
    assert [policy.decide(RuntimeError(), n).retry for n in (1, 2, 3)] == [True, True, False]
    assert "3 attempt(s) made" in policy.decide(RuntimeError(), 3).reason


def test_on_and_permanent_decide_what_is_retried() -> None:
    policy = RetryPolicy(Retry(attempts=5, on=(ConnectionError,)))
    assert policy.decide(ConnectionResetError(), 1).retry
    assert not policy.decide(KeyError("x"), 1).retry
    assert "not retried (KeyError)" in policy.decide(KeyError("x"), 1).reason
    assert not policy.decide(BadOrder(), 1).retry
    assert "permanent" in policy.decide(BadOrder(), 1).reason


def test_the_default_policy_retries_transient_failures_within_its_budget() -> None:
    policy = RetryPolicy(Retry.transient(budget=7, backoff=Backoff(initial=1, jitter=False)))
    # Delays 1 + 2 + 4 = 7 fit the budget; the fourth (8 more) does not.
    assert [policy.decide(TimeoutError(), n).retry for n in (1, 2, 3, 4)] == [
        True,
        True,
        True,
        False,
    ]
    assert "retry budget of 7s spent after 4 attempt(s)" in policy.decide(TimeoutError(), 4).reason
    assert not policy.decide(ValueError(), 1).retry


def test_retry_seed_requeues_once_at_once() -> None:
    seed = Retry.seed()
    assert seed.requeue
    policy = RetryPolicy(seed)
    assert policy.decide(RuntimeError(), 1).retry
    assert policy.decide(RuntimeError(), 1).delay == 0
    assert not policy.decide(RuntimeError(), 2).retry


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Retry(attempts=0), "attempts >= 1"),
        (lambda: Retry(attempts=None), "attempts or budget"),
        (lambda: Retry(budget=-1), "budget >= 0"),
        (lambda: Retry(backoff=-1), "backoff must be"),
        (lambda: Retry(backoff=[]), "backoff must be"),
        (lambda: Backoff(factor=0.5), "factor >= 1"),
        (lambda: farine.amqp.consume(retry=3), "retry must be a farine.amqp.Retry"),  # type: ignore[arg-type]
        (lambda: farine.amqp.consume(queue_type="stream"), "classic or quorum"),
        (lambda: farine.amqp.consume(delivery_limit=0), "delivery_limit must be >= 1"),
    ],
)
def test_wrong_arguments_fail_at_once(make: object, message: str) -> None:
    assert callable(make)
    with pytest.raises(ConfigurationError, match=message):
        make()
