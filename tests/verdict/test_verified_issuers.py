"""The judge's shortcut for distinct leaves under one CA (``Judge._issuers``): once a path
through a CA verified, a further leaf presented with that CA is verified against the CA
alone, with its name as the verifier's subject. These tests hold that the shortcut is taken
and that it never says more than the full verification would: not past a name constraint
above the CA, not outside the CA's validity, not for a leaf the CA did not sign, and never
instead of a name mismatch.

Judging is pure (the chain is what a server presented): results are built here from
generated certificates; tests/verdict/test_verdict.py runs the same judge against servers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.certs import PrivateKey, der, make_cert, new_key
from trackssl_agent.engine.results import ProbeResult
from trackssl_agent.engine.targets import parse_target
from trackssl_agent.verdict.judge import Judge, Kind, Policy, Status, Verdict
from trackssl_agent.verdict.trust_store import Anchors

NOW = datetime.now(UTC)


class Network:
    """A root, one issuing CA under it, and leaves the CA signs."""

    def __init__(
        self, *, permitted: tuple[str, ...] = (), ca_days: float = 365, root_days: float = 3650
    ) -> None:
        self.root_key, self.ca_key = new_key("ec"), new_key("ec")
        self.leaf_key: PrivateKey = new_key("ec")
        self.root = make_cert(
            cn="Test Root", key=self.root_key, ca=True, days=root_days, permitted=permitted
        )
        self.ca = make_cert(
            cn="Test CA", key=self.ca_key, issuer_cn="Test Root", issuer_key=self.root_key,
            ca=True, days=ca_days,
        )  # fmt: skip

    def leaf(self, *sans: str, signer: PrivateKey | None = None, days: float = 90) -> bytes:
        """A leaf for ``sans`` issued in the CA's name (signed by ``signer``, else the CA)."""
        issuer_key = signer or self.ca_key
        leaf = make_cert(
            cn=sans[0], key=self.leaf_key, issuer_cn="Test CA", issuer_key=issuer_key,
            sans=sans, days=days,
        )  # fmt: skip
        return der(leaf)

    def judge(self) -> Judge:
        """A judge trusting only the root."""
        anchors = Anchors(certs=(self.root,), sources=("test",))
        return Judge(Policy(warn_days=7, crit_days=3), lambda: anchors)

    def verdict(
        self,
        judge: Judge,
        leaf: bytes,
        host: str,
        *,
        at: datetime = NOW,
    ) -> Verdict:
        """``judge``'s verdict on ``leaf`` presented with the CA at ``host``."""
        result = ProbeResult(
            target=parse_target(f"{host}:443"), servername=None, address="127.0.0.1",
            probed_at=at, elapsed_ms=1.0, chain=(leaf, der(self.ca)),
        )  # fmt: skip
        return judge(result)


def kinds(verdict: Verdict) -> set[Kind]:
    """The kinds of problem of ``verdict``."""
    return {p.kind for p in verdict.problems}


def test_distinct_leaves_under_one_ca_are_verified_in_full_once() -> None:
    """Twenty distinct leaves under one CA: every one verified, named and OK, and only the
    first path built in full (the others verified under the CA alone)."""
    network = Network()
    judge = network.judge()
    for n in range(20):
        verdict = network.verdict(judge, network.leaf(f"h{n}.corp.test"), f"h{n}.corp.test")
        assert verdict.status is Status.OK
        assert verdict.chain_verified
        assert verdict.problems == ()
    assert judge.full_checks == 1


def test_name_constraints_above_the_ca_still_bind_each_leaf() -> None:
    """A root that permits only ``.good.test``: a leaf for ``a.good.test`` verifies, and a
    leaf for ``a.evil.test`` under the same CA is untrusted (the shortcut would skip the
    root's constraints, so it is not taken under a constrained root)."""
    network = Network(permitted=("good.test",))
    judge = network.judge()
    good = network.verdict(judge, network.leaf("a.good.test"), "a.good.test")
    assert good.chain_verified
    evil = network.verdict(judge, network.leaf("a.evil.test"), "a.evil.test")
    assert not evil.chain_verified
    assert kinds(evil) == {Kind.UNTRUSTED}
    assert judge.full_checks == 2


@pytest.mark.parametrize("expiring", ["ca", "root"])
def test_a_leaf_probed_after_its_path_expired_is_untrusted(expiring: str) -> None:
    """A CA verified while its path was valid is no shortcut once the CA, or the root above
    it, has expired: a leaf outliving them, probed after their end, is untrusted with the
    full verification's reason."""
    network = Network(ca_days=2) if expiring == "ca" else Network(root_days=2)
    judge = network.judge()
    assert network.verdict(judge, network.leaf("a.corp.test"), "a.corp.test").chain_verified
    later = network.verdict(
        judge, network.leaf("b.corp.test", days=30), "b.corp.test", at=NOW + timedelta(days=5)
    )
    assert not later.chain_verified
    (problem,) = [p for p in later.problems if p.kind is Kind.UNTRUSTED]
    assert problem.message.endswith("not valid at validation time")
    assert judge.full_checks == 2  # the first path, then this one


def test_a_leaf_the_ca_did_not_sign_is_untrusted() -> None:
    """A leaf naming the verified CA as issuer but signed by another key is untrusted."""
    network = Network()
    judge = network.judge()
    assert network.verdict(judge, network.leaf("a.corp.test"), "a.corp.test").chain_verified
    forged = network.leaf("b.corp.test", signer=new_key("ec"))
    verdict = network.verdict(judge, forged, "b.corp.test")
    assert not verdict.chain_verified
    assert Kind.UNTRUSTED in kinds(verdict)


@pytest.mark.parametrize("misses", [3, 40])
def test_names_are_judged_under_a_verified_ca(misses: int) -> None:
    """Under a verified CA, leaves probed by an address they do not name are trusted with a
    name mismatch (with the same message as a full judgement), however many come in a row;
    a leaf that names its host after them is OK."""
    network = Network()
    judge = network.judge()
    fresh = network.judge()
    assert network.verdict(judge, network.leaf("a.corp.test"), "a.corp.test").chain_verified
    for n in range(misses):
        leaf = network.leaf(f"m{n}.corp.test")
        verdict = network.verdict(judge, leaf, "127.0.0.1")
        assert verdict.chain_verified
        assert kinds(verdict) == {Kind.NAME_MISMATCH}
        assert verdict.problems == network.verdict(fresh, leaf, "127.0.0.1").problems
    named = network.verdict(judge, network.leaf("z.corp.test", "127.0.0.1"), "127.0.0.1")
    assert named.problems == ()
    assert named.chain_verified


def test_wildcards_under_a_verified_ca_follow_the_same_rules() -> None:
    """A wildcard leaf under a verified CA: ``*.a.test`` names ``x.a.test``, not ``a.test``
    nor ``y.x.a.test`` (the same answers as the full judgement gives)."""
    network = Network()
    judge = network.judge()
    assert network.verdict(judge, network.leaf("first.corp.test"), "first.corp.test").problems == ()
    leaf = network.leaf("*.a.test")
    assert network.verdict(judge, leaf, "x.a.test").problems == ()
    for host in ("a.test", "y.x.a.test"):
        assert kinds(network.verdict(judge, leaf, host)) == {Kind.NAME_MISMATCH}


def test_a_presented_chain_in_another_order_is_judged_in_full() -> None:
    """Only the certificate presented right after the leaf is looked up as its CA: a chain
    that presents an unrelated certificate there is judged in full (and verifies, the
    verifier finding the CA further on)."""
    network = Network()
    judge = network.judge()
    assert network.verdict(judge, network.leaf("a.corp.test"), "a.corp.test").chain_verified
    other = der(make_cert(cn="Unrelated", key=new_key("ec")))
    leaf = network.leaf("b.corp.test")
    result = ProbeResult(
        target=parse_target("b.corp.test:443"), servername=None, address="127.0.0.1",
        probed_at=NOW, elapsed_ms=1.0, chain=(leaf, other, der(network.ca)),
    )  # fmt: skip
    verdict = judge(result)
    assert verdict.chain_verified
    assert judge.full_checks == 2
