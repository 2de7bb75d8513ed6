"""An integrator's subscriber written only from docs/BUS.md.

Usage: bus_subscriber.py NATS_URL POD_NAME
Reads pod events from the start of the stream until it sees POD_NAME deleted, and prints
one JSON line per event about POD_NAME: {"type", "revision", "name", "namespace", "kind"}.
"""
import asyncio
import json
import sys

import msgpack
import nats


async def main(url, pod):
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.subscribe("capstan.v1.events.core.pods.>", ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=30)
            ev = msgpack.unpackb(msg.data)
            obj = ev["object"]
            md = obj["metadata"]
            if md["name"] != pod:
                continue
            assert msg.headers and msg.headers.get("Nats-Msg-Id") == str(ev["revision"]), msg.headers
            assert md["resourceVersion"] == str(ev["revision"])
            print(json.dumps({"type": ev["type"], "revision": ev["revision"], "name": md["name"],
                              "namespace": md.get("namespace"), "kind": obj.get("kind"),
                              "subject": msg.subject}), flush=True)
            if ev["type"] == "DELETED":
                break
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
