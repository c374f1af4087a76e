"""Broker._drop_link: the one way a worker leaves the broker's books cleans every structure that refers to it."""
import asyncio
import os
from types import SimpleNamespace

from omnibroker.broker import Broker
from omnibroker.protocol import ErrorCode
from omnibroker.workers import BuildSlots, WorkerLink


def _broker(granted: list) -> Broker:
    """A Broker with only the structures _drop_link touches (no sockets, no supervisord)."""
    broker = Broker.__new__(Broker)
    broker.workers, broker.by_identity, broker.pending = {}, {}, {}
    broker.slots = BuildSlots(1, lambda identity, token: granted.append((identity, token)))
    broker.supervisor = SimpleNamespace(describe=lambda plugin: f"worker program omniworker-{plugin}")
    return broker


def _link(broker: Broker, plugin: str, identity: bytes) -> WorkerLink:
    link = broker.workers[plugin] = WorkerLink(identity, os.getpid())
    broker.by_identity[identity] = plugin
    broker._watch_pid(plugin, link)
    return link


def test_drop_link_cleans_every_structure():
    async def main():
        loop = asyncio.get_running_loop()
        granted: list = []
        broker = _broker(granted)
        link = _link(broker, "p", b"w:p:1")
        other = _link(broker, "q", b"w:q:2")
        broker.slots.acquire("held", link.identity)
        broker.slots.acquire("queued", link.identity)
        broker.slots.acquire("next", other.identity)       # waits behind p's two tokens
        mine, theirs = loop.create_future(), loop.create_future()
        broker.pending.update(r1=(mine, "p"), r2=(theirs, "q"))
        assert link.watch is not None and link.watch.method == "pidfd"

        broker._drop_link("p", "the plugin was removed")

        assert "p" not in broker.workers and link.identity not in broker.by_identity
        assert link.watch._fd is None                       # pid watch closed
        assert broker.slots.holders == {"next": other.identity}     # p's slot freed and granted to q
        assert list(broker.slots.waiting) == []
        assert granted[-1] == (other.identity, "next")
        reply = mine.result()
        assert reply.code == ErrorCode.WORKER_UNAVAILABLE and "the plugin was removed" in reply.reason
        assert not theirs.done()                            # another plugin's request is untouched
        assert broker.workers == {"q": other} and broker.by_identity == {other.identity: "q"}

        broker._drop_link("p", "again")                     # idempotent
        broker._drop_link("q", "done")
        assert not broker.workers and not broker.by_identity and not broker.slots.holders
        assert other.watch._fd is None
    asyncio.run(main())


def test_a_pid_watch_that_fires_drops_the_link_through_worker_gone():
    """The worker's death (its pidfd) goes through _worker_gone, which drops the link."""
    async def main():
        broker = _broker([])
        gone = asyncio.Event()
        broker._worker_gone = lambda plugin, why: (broker._drop_link(plugin, why), gone.set())
        proc = await asyncio.create_subprocess_exec("sleep", "30")
        link = broker.workers["p"] = WorkerLink(b"w:p:x", proc.pid)
        broker.by_identity[link.identity] = "p"
        broker._watch_pid("p", link)
        proc.kill()
        await proc.wait()
        await asyncio.wait_for(gone.wait(), 5)
        assert "p" not in broker.workers and not broker.by_identity
    asyncio.run(main())
