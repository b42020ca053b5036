"""transfer.py: the resume decisions (Resumption) on their own, and BlobTransfer driven by scripted bodies;
blobs.py: one verdict per blob across the repositories that reference it.

ScriptedClient stands in for client.RegistryClient (a stand-in of ours): each request gets the next Reply of
its script, a body that hands over its bytes in pieces and then ends, ends early, stalls or breaks. The real
client, over a real socket, is proven by tests/test_e2e_faults.py.
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional

import pytest

from check_registry_deep.blobs import BlobChecker, BlobWork, plan
from check_registry_deep.deadline import Deadline
from check_registry_deep.errors import (
    BlobUnknown,
    CheckError,
    ShortBody,
    SizeMismatch,
    Stalled,
    TransportError,
    Truncated,
)
from check_registry_deep.manifests import CONFIG, LAYER, Descriptor
from check_registry_deep.model import Mode, Target, TargetResult
from check_registry_deep.reference import Digest, ImageRef
from check_registry_deep.retry import Retrier, RetryPolicy
from check_registry_deep.transfer import (
    MAX_RESUMES,
    RESTARTED,
    RESUMED,
    Answer,
    BlobTransfer,
    Decision,
    Resumption,
    Step,
    retried,
    stall_timeout,
)

BLOB = b"".join(hashlib.sha512(i.to_bytes(4, "big")).digest() for i in range(1600))  # 102,400 bytes
SIZE = len(BLOB)
DIGEST = Digest.of(BLOB)
LAYER_DESCRIPTOR = Descriptor("application/vnd.oci.image.layer.v1.tar", DIGEST, SIZE, LAYER)
FAST = RetryPolicy(attempts=3, backoff=0.001, max_wait=0.001)
DEADLINE = 20.0
STALL = stall_timeout(Deadline(DEADLINE))


# -- the decision table on its own -----------------------------------------------------------------------

def short(reached: int) -> ShortBody:
    return ShortBody(f"body ended after {reached} bytes", reached)


def stalled(reached: int) -> Stalled:
    return Stalled(f"stalled after {reached} bytes", reached)


def reset() -> TransportError:
    return TransportError("connection broken")


def resumption(asked_again: int = 0, requests: int = 1, size: Optional[int] = SIZE) -> Resumption:
    rules = Resumption(size, STALL)
    rules.asked_again = asked_again
    for _ in range(requests):
        rules.asking()
    return rules


TABLE = [
    # (the row of the table, fault, offset, kept, encoded, size, asked again, requests this run, remaining) -> step
    ("short, no progress, asked again this run", short(0), 40_000, 40_000, False, SIZE, 1, 2, 9, Step.TRUNCATED),
    ("stalled, no progress, asked again this run", stalled(0), 40_000, 40_000, False, SIZE, 1, 2, 9, Step.TRUNCATED),
    ("no body verified yet", stalled(0), 0, None, False, SIZE, 0, 1, 9, Step.GIVE_UP),
    ("encoded", short(10), 0, 10, True, SIZE, 0, 1, 9, Step.GIVE_UP),
    ("size unknown", short(10), 0, 10, False, None, 0, 1, 9, Step.GIVE_UP),
    ("size unknown, short again: no verdict without a size", short(0), 10, 10, False, None, 1, 2, 9, Step.GIVE_UP),
    ("reset, no progress", reset(), 40_000, 40_000, False, SIZE, 1, 2, 9, Step.GIVE_UP),
    ("reset, nothing at all on the first request", reset(), 0, 0, False, SIZE, 0, 1, 9, Step.GIVE_UP),
    ("budget spent", short(10), 0, 10, False, SIZE, MAX_RESUMES, 1, 9, Step.GIVE_UP),
    ("deadline near", short(10), 0, 10, False, SIZE, 0, 1, 0.05, Step.GIVE_UP),
    ("progress, short", short(10), 0, 10, False, SIZE, 0, 1, 9, Step.RESUME),
    ("progress, stalled, asked again this run", stalled(5), 10, 15, False, SIZE, 1, 2, 9, Step.RESUME),
    ("progress, reset", reset(), 0, 10, False, SIZE, MAX_RESUMES - 1, 1, 9, Step.RESUME),
    ("short, no progress, offset > 0, first request of a run", short(0), 40_000, 40_000, False, SIZE, 1, 1, 9,
     Step.RESUME),
    ("short, no progress, offset 0", short(0), 0, 0, False, SIZE, 0, 1, 9, Step.REPEAT),
]


@pytest.mark.parametrize("row, fault, offset, kept, encoded, size, asked_again, requests, remaining, step", TABLE,
                         ids=[row[0] for row in TABLE])
def test_the_decision_table_row_by_row(row, fault, offset, kept, encoded, size, asked_again, requests, remaining,
                                       step):
    rules = resumption(asked_again, requests, size)
    decision = rules.after_break(fault, offset, kept, encoded, remaining)
    assert decision.step is step
    # only a resume or a repeat spends the blob's budget; only a repeat counts as a whole-blob retry
    assert rules.asked_again == asked_again + (step in (Step.RESUME, Step.REPEAT))
    assert rules.repeated == (step is Step.REPEAT)
    assert bool(decision.why) == (step is Step.TRUNCATED)


def test_truncated_names_the_furthest_byte_reached_and_how_often():
    rules = resumption()
    assert rules.after_break(short(45_000), 0, 40_000, False, 9) == Decision(Step.RESUME)  # 5,000 lost bytes
    rules.asking()
    assert rules.after_break(short(0), 40_000, 40_000, False, 9) == Decision(
        Step.TRUNCATED, f"got 45000 of {SIZE} bytes (the body ends before its Content-Length, 2 times)")
    rules.start_run()
    assert (rules.requests, rules.reached, rules.asked_again) == (0, 0, 1)  # the budget outlives the run


@pytest.mark.parametrize("status, offset, answer", [
    (206, 40_000, Answer.CONTINUES), (200, 40_000, Answer.RESTART), (416, SIZE, Answer.ENDED),
    (416, 40_000, Answer.TRUNCATED)])
def test_the_answer_to_a_range_request(status, offset, answer):
    assert Resumption(SIZE, STALL).answer(status, offset) is answer


# -- BlobTransfer over scripted bodies ---------------------------------------------------------------------

@dataclass
class Reply:
    """One answer: `status`, then `data` in pieces of `piece` bytes, then `end`: "end" (the body is complete),
    "short" (closed before its Content-Length), "stall" (no more bytes), "reset"; `lost`: bytes that arrived
    but were lost with the break (ShortBody.reached counts them). `fails`: the request gets no answer at all."""

    status: int = 200
    data: bytes = BLOB
    end: str = "end"
    piece: int = 1 << 20
    lost: int = 0
    content_length: Optional[int] = None  # default: what a 200 or 206 from the request's offset declares
    content_range: Optional[str] = None  # default: the right one for a 206
    encoding: Optional[str] = None
    fails: Optional[CheckError] = None


class ScriptedBody:
    """A verify.BlobStream that plays one Reply."""

    def __init__(self, reply: Reply, offset: int, limit: Optional[int]):
        self.reply, self.limit, self.received = reply, limit, 0
        self.status = reply.status
        rest = SIZE - offset if reply.status == 206 else SIZE
        self.content_length = reply.content_length if reply.content_length is not None else (
            None if reply.status == 416 else rest)
        self.content_range = reply.content_range or (f"bytes {offset}-{SIZE - 1}/{SIZE}"
                                                     if reply.status == 206 else None)
        self.content_encoding = reply.encoding

    def read(self, size: int) -> bytes:
        if self.limit is not None:
            size = min(size, self.limit - self.received)
        chunk = self.reply.data[self.received:self.received + min(size, self.reply.piece)]
        if chunk:
            self.received += len(chunk)
            return chunk
        if self.reply.end == "short":
            raise ShortBody(f"body ended after {self.received} bytes", self.received + self.reply.lost)
        if self.reply.end == "stall":
            raise Stalled(f"stalled after {self.received} bytes", self.received + self.reply.lost)
        if self.reply.end == "reset":
            raise TransportError(f"connection broken after {self.received} bytes")
        return b""


class ScriptedClient:
    """Answers each blob request with the next Reply; records each request's offset. Runs out: the test's bug."""

    def __init__(self, *replies: Reply, deadline: Optional[Deadline] = None, heads: Optional[dict] = None):
        self.replies: List[Reply] = list(replies)
        self.heads = heads or {}  # repository -> the Content-Length its HEAD answers, or the error it raises
        self.headed: List[str] = []
        self.offsets: List[int] = []
        self.stalls: List[float] = []
        self.retrier = Retrier(FAST, deadline or Deadline(DEADLINE))

    @contextmanager
    def open_blob(self, repository: str, digest: Digest, limit: Optional[int], offset: int = 0,
                  stall: float = 30.0) -> Iterator[ScriptedBody]:
        assert digest == DIGEST
        self.offsets.append(offset)
        self.stalls.append(stall)
        reply = self.replies.pop(0)
        if reply.fails is not None:
            raise reply.fails
        yield ScriptedBody(reply, offset, limit)

    def head_blob(self, repository: str, digest: Digest) -> Optional[int]:
        self.headed.append(repository)
        answer = self.heads.get(repository, SIZE)
        if isinstance(answer, CheckError):
            raise answer
        return answer


def transfer(client: ScriptedClient, descriptor: Descriptor = LAYER_DESCRIPTOR, deadline: float = DEADLINE
             ) -> BlobTransfer:
    return BlobTransfer(client, "team/app", descriptor, cancelled=threading.Event(),  # type: ignore[arg-type]
                        deadline=Deadline(deadline), chunk_size=8192)


def run_with_retries(client: ScriptedClient, blob: BlobTransfer):
    """The way blobs.py runs a transfer: retry.py around it."""
    return client.retrier.run(blob.run, "blob")


def resumed(*offsets: int) -> str:
    return RESUMED.format(offsets=", ".join(map(str, offsets)), size=SIZE)


def test_a_whole_body_at_once_is_verified_without_caveats():
    client = ScriptedClient(Reply())
    blob = transfer(client)
    assert blob.run() == ((), SIZE)
    assert client.offsets == [0]
    assert client.stalls == [STALL] and STALL == 2.0  # a tenth of 20 s
    assert client.retrier.count == blob.repeated == 0


def test_a_short_body_then_the_rest_is_resumed_with_a_caveat():
    client = ScriptedClient(Reply(data=BLOB[:40_000], end="short"), Reply(status=206, data=BLOB[40_000:]))
    blob = transfer(client)
    assert blob.run() == ((resumed(40_000),), SIZE)
    assert client.offsets == [0, 40_000]
    assert client.retrier.count == 1 and blob.repeated == 0


def test_a_stall_then_the_rest_is_resumed():
    client = ScriptedClient(Reply(data=BLOB[:40_000], end="stall"), Reply(status=206, data=BLOB[40_000:]))
    assert transfer(client).run() == ((resumed(40_000),), SIZE)


def test_a_stall_at_the_same_byte_twice_is_truncated():
    client = ScriptedClient(Reply(data=BLOB[:40_000], end="stall"), Reply(status=206, data=b"", end="stall"))
    with pytest.raises(Truncated) as caught:
        transfer(client).run()
    assert str(caught.value) == f"truncated: stalled at byte 40000 of {SIZE} bytes (nothing more for 2s, 2 times)"
    assert client.offsets == [0, 40_000]


def test_a_range_request_that_gets_no_answer_at_all_is_a_stall_at_the_same_byte():
    client = ScriptedClient(Reply(data=BLOB[:40_000], end="stall"), Reply(fails=Stalled("no answer in 2s", 0)))
    with pytest.raises(Truncated, match=f"^truncated: stalled at byte 40000 of {SIZE} bytes"):
        transfer(client).run()


def test_a_short_body_at_the_same_byte_twice_is_truncated_naming_lost_bytes_too():
    client = ScriptedClient(Reply(data=BLOB[:40_000], end="short", lost=1_000),
                            Reply(status=206, data=b"", end="short"))
    with pytest.raises(Truncated) as caught:
        transfer(client).run()
    assert str(caught.value) == (f"truncated: got 41000 of {SIZE} bytes "
                                 f"(the body ends before its Content-Length, 2 times)")


def test_a_416_before_the_declared_size_is_truncated():
    client = ScriptedClient(Reply(data=BLOB[:40_000], end="short"), Reply(status=416, data=b""))
    with pytest.raises(Truncated) as caught:
        transfer(client).run()
    assert str(caught.value) == (f"truncated: the registry says the blob ends before byte 40000 of {SIZE} "
                                 f"(416 to a Range)")


def test_a_416_at_the_declared_size_finishes_with_the_bytes_kept():
    client = ScriptedClient(Reply(end="reset"), Reply(status=416, data=b""))  # every byte came, then a reset
    assert transfer(client).run() == ((resumed(SIZE),), SIZE)
    assert client.offsets == [0, SIZE]


def test_a_200_from_a_server_that_ignores_range_starts_over_with_a_caveat():
    client = ScriptedClient(Reply(data=BLOB[:40_000], end="short"), Reply(status=200))
    assert transfer(client).run() == ((RESTARTED.format(offset=40_000),), 40_000 + SIZE)
    assert client.offsets == [0, 40_000]


def test_a_200_that_breaks_again_before_reaching_the_old_offset_makes_no_progress():
    client = ScriptedClient(Reply(data=BLOB[:40_000], end="short"), Reply(status=200, data=BLOB[:30_000], end="reset"))
    with pytest.raises(TransportError, match="connection broken after 30000 bytes"):
        transfer(client).run()


def test_a_206_that_continues_elsewhere_is_not_resumed():
    client = ScriptedClient(Reply(data=BLOB[:40_000], end="short"),
                            Reply(status=206, data=BLOB[30_000:], content_range=f"bytes 30000-{SIZE - 1}/{SIZE}"))
    with pytest.raises(TransportError, match="^resumed at byte 40000, but the server answered Content-Range"):
        transfer(client).run()


def test_a_206_for_a_blob_of_another_size_is_a_size_mismatch():
    client = ScriptedClient(Reply(data=BLOB[:40_000], end="short"),
                            Reply(status=206, data=BLOB[40_000:], content_range=f"bytes 40000-{SIZE - 1}/999999"))
    with pytest.raises(SizeMismatch, match=f"Content-Range says the blob is 999999 bytes, descriptor {SIZE}"):
        transfer(client).run()


def test_a_body_that_trickles_is_resumed_while_it_moves_up_to_the_budget():
    piece = 10_000
    replies = [Reply(status=206 if i else 200, data=BLOB[i * piece:(i + 1) * piece], end="stall", piece=100)
               for i in range(MAX_RESUMES + 1)]
    client = ScriptedClient(*replies)
    with pytest.raises(Stalled, match=f"stalled after {piece} bytes"):
        transfer(client).run()
    assert client.offsets == [i * piece for i in range(MAX_RESUMES + 1)]  # 5 resumes, then it gives up
    assert client.retrier.count == MAX_RESUMES


def test_a_body_that_trickles_and_gets_there_within_the_budget_lists_every_resume():
    piece = SIZE // 3 + 1
    replies = [Reply(status=206 if i else 200, data=BLOB[i * piece:(i + 1) * piece], end="stall" if i < 2 else "end",
                     piece=100) for i in range(3)]
    client = ScriptedClient(*replies)
    assert transfer(client).run() == ((resumed(piece, 2 * piece),), SIZE)


def test_the_resume_budget_is_per_blob_across_retry_runs():
    """Run 1 spends the budget; retry.py's runs 2 and 3 start over from byte 0, and give up at their first stall."""
    piece = 10_000
    first_run = [Reply(status=206 if i else 200, data=BLOB[i * piece:(i + 1) * piece], end="stall")
                 for i in range(MAX_RESUMES + 1)]
    again = [Reply(data=BLOB[:piece], end="stall") for _ in range(FAST.attempts - 1)]
    client = ScriptedClient(*first_run, *again)
    with pytest.raises(Stalled):
        run_with_retries(client, transfer(client))
    assert client.offsets == [i * piece for i in range(MAX_RESUMES + 1)] + [0, 0]
    assert client.retrier.count == MAX_RESUMES + FAST.attempts - 1


def test_a_body_that_ends_before_its_first_byte_is_asked_for_once_more_as_a_retry():
    client = ScriptedClient(Reply(data=b"", end="short"), Reply())
    blob = transfer(client)
    assert run_with_retries(client, blob) == (((), SIZE), 0)
    assert client.offsets == [0, 0]
    assert blob.repeated == 1 and client.retrier.count == 1  # blobs.py adds `repeated` to the blob's retries


def test_a_body_that_ends_before_its_first_byte_twice_is_truncated():
    client = ScriptedClient(Reply(data=b"", end="short"), Reply(data=b"", end="short"))
    with pytest.raises(Truncated, match=f"^truncated: got 0 of {SIZE} bytes .* 2 times"):
        transfer(client).run()


def test_no_answer_to_the_first_request_is_for_retry_py_which_runs_it_again():
    client = ScriptedClient(Reply(fails=TransportError("127.0.0.1:5000 unreachable")), Reply())
    blob = transfer(client)
    assert run_with_retries(client, blob) == (((), SIZE), 1)
    assert client.offsets == [0, 0] and blob.repeated == 0


def test_a_reset_without_progress_on_a_resume_gives_up():
    client = ScriptedClient(Reply(data=BLOB[:40_000], end="short"), Reply(status=206, data=b"", end="reset"))
    with pytest.raises(TransportError, match="^connection broken after 0 bytes"):
        transfer(client).run()


def test_an_encoded_body_that_breaks_is_not_resumed():
    client = ScriptedClient(Reply(data=BLOB[:40_000], end="short", encoding="gzip", content_length=SIZE))
    with pytest.raises(ShortBody):
        transfer(client).run()
    assert client.offsets == [0]


def test_a_blob_of_unknown_size_that_breaks_is_not_resumed():
    schema1 = Descriptor(LAYER_DESCRIPTOR.media_type, DIGEST, None, LAYER)
    client = ScriptedClient(Reply(data=BLOB[:40_000], end="short"))
    with pytest.raises(ShortBody):
        transfer(client, schema1).run()
    assert client.offsets == [0]


def test_errors_that_are_not_transport_faults_end_the_run_at_once():
    client = ScriptedClient(Reply(fails=BlobUnknown("404 BLOB_UNKNOWN", 404, "BLOB_UNKNOWN")))
    with pytest.raises(BlobUnknown):
        run_with_retries(client, transfer(client))
    assert client.offsets == [0]


@pytest.mark.parametrize("seconds, stall", [(1, 2.0), (20, 2.0), (100, 10.0), (1000, 30.0)])
def test_the_stall_timeout_is_a_tenth_of_the_run_from_2_to_30_seconds(seconds, stall):
    assert stall_timeout(Deadline(seconds)) == stall


def test_the_table_covers_every_step():
    assert {row[-1] for row in TABLE} == set(Step)


# -- blobs.py: one verdict per blob ------------------------------------------------------------------------

APP, WEB = ImageRef.parse("team/app:1"), ImageRef.parse("team/web:1")
REGISTRY = "http://127.0.0.1:5000"


def work(*images: ImageRef, deep: bool = True) -> BlobWork:
    return BlobWork(REGISTRY, LAYER_DESCRIPTOR, {i.repository: (Target(i, REGISTRY),) for i in images}, deep)


def checker() -> BlobChecker:
    return BlobChecker(Deadline(DEADLINE), threading.Event(), chunk_size=8192)


def test_plan_lists_each_blob_once_per_registry_largest_first_and_lets_a_chooser_pick_the_deep_ones():
    config = Descriptor("application/vnd.oci.image.config.v1+json", Digest.of(b"{}"), 2, CONFIG)
    results = [TargetResult(Target(ref, REGISTRY), Digest.of(ref.repository.encode()), (config, LAYER_DESCRIPTOR))
               for ref in (APP, WEB)]
    planned = plan(results, choose_deep=lambda candidates: {key for key, size in candidates if size > 2})
    assert [(w.descriptor, list(w.by_repository), w.deep) for w in planned] == [
        (LAYER_DESCRIPTOR, ["team/app", "team/web"], True), (config, ["team/app", "team/web"], False)]
    assert planned[0].everyone == (Target(APP, REGISTRY), Target(WEB, REGISTRY))


def test_a_blob_is_read_once_and_only_headed_in_the_other_repositories():
    client = ScriptedClient(Reply())
    findings = checker().check(client, work(APP, WEB))  # type: ignore[arg-type]
    assert [(f.error, f.bytes_read, f.repository, f.mode) for f in findings] == [
        (None, SIZE, "team/app", Mode.VERIFIED)]
    assert client.offsets == [0] and client.headed == ["team/web"]


def test_a_blob_asked_for_again_counts_that_as_a_retry_of_the_blob():
    client = ScriptedClient(Reply(data=b"", end="short"), Reply())
    [finding] = checker().check(client, work(APP))  # type: ignore[arg-type]
    assert (finding.error, finding.retries, finding.caveats) == (None, 1, (retried(1),))


def test_a_blob_truncated_in_its_first_repository_is_one_finding_for_every_image():
    client = ScriptedClient(Reply(data=BLOB[:40_000], end="stall"), Reply(status=206, data=b"", end="stall"))
    [finding] = checker().check(client, work(APP, WEB))  # type: ignore[arg-type]
    assert isinstance(finding.error, Truncated) and finding.affected == work(APP, WEB).everyone
    assert client.headed == []


def test_a_lost_link_in_another_repository_names_where_the_bytes_verified():
    gone = BlobUnknown("HEAD in team/web: 404 BLOB_UNKNOWN", 404, "BLOB_UNKNOWN")
    client = ScriptedClient(Reply(), heads={"team/web": gone})
    verified, lost = checker().check(client, work(APP, WEB))  # type: ignore[arg-type]
    assert verified.error is None
    assert str(lost.error) == ("404 BLOB_UNKNOWN in team/web (the repository's link is gone; the blob itself "
                               "verified in team/app)")
    assert lost.affected == (Target(WEB, REGISTRY),)


def test_a_blob_not_chosen_for_a_deep_check_is_only_headed():
    client = ScriptedClient()
    [present] = checker().check(client, work(APP, WEB, deep=False))  # type: ignore[arg-type]
    assert (present.error, present.mode, present.bytes_read) == (None, Mode.PRESENT, 0)
    assert client.offsets == [] and client.headed == ["team/app", "team/web"]


def test_a_head_that_declares_another_size_is_a_size_mismatch():
    client = ScriptedClient(heads={"team/web": SIZE + 1})
    [wrong] = checker().check(client, work(APP, WEB, deep=False))  # type: ignore[arg-type]
    assert str(wrong.error) == f"HEAD in team/web declares {SIZE + 1} bytes, descriptor says {SIZE}"
    assert wrong.affected == (Target(WEB, REGISTRY),)
