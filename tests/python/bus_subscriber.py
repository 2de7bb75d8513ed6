"""An integrator's subscriber written only from docs/BUS.md.

Usage: bus_subscriber.py NATS_URL NAME [SUBJECT [STOP_TYPE]]
Reads events on SUBJECT (default: every pod's, capstan.v1.events.core.pods.>) from the start
of the stream until it sees an event of type STOP_TYPE (default DELETED) about NAME, and
prints one JSON line per event about NAME:
{"type", "revision", "name", "namespace", "kind", "subject"}.
"""
import asyncio
import json
import sys

import msgpack
import nats


async def main(url, pod, subject="capstan.v1.events.core.pods.>", stop="DELETED"):
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.subscribe(subject, ordered_consumer=True)
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
            if ev["type"] == stop:
                break
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
