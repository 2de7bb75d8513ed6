"""An integrator on a locked-down bus, written only from docs/BUS.md ("Connecting").

Usage: bus_integrator.py NATS_URL CREDS_FILE CA_FILE INBOX_PREFIX CONFIGMAP
Reads ConfigMap events from the start of the stream until it sees CONFIGMAP, prints it as
one JSON line {"event": ...}, then tries an API request and prints {"api": "refused"} when
it gets no reply and the server reported a permissions violation.
"""
import asyncio
import json
import ssl
import sys

import msgpack
import nats
from nats.errors import TimeoutError as NatsTimeout


async def main(url, creds, ca, inbox_prefix, name):
    errors = []

    async def on_error(e):
        errors.append(str(e))

    tls = ssl.create_default_context(cafile=ca)
    nc = await nats.connect(url, tls=tls, nkeys_seed=creds, inbox_prefix=inbox_prefix,
                            error_cb=on_error, allow_reconnect=False)
    js = nc.jetstream()
    sub = await js.subscribe("capstan.v1.events.core.configmaps.>", stream="CAPSTAN_EVENTS",
                             ordered_consumer=True)
    try:
        while True:
            msg = await sub.next_msg(timeout=30)
            ev = msgpack.unpackb(msg.data)
            md = ev["object"]["metadata"]
            if md["name"] == name:
                print(json.dumps({"event": ev["type"], "revision": ev["revision"],
                                  "subject": msg.subject}), flush=True)
                break
        try:
            await nc.request("capstan.v1.api.controllers", msgpack.packb(
                {"verb": "get", "group": "", "version": "v1", "resource": "namespaces"}), timeout=3)
            print(json.dumps({"api": "answered"}), flush=True)
        except NatsTimeout:
            await asyncio.sleep(0)  # let the error callback run
            refused = any("permissions violation" in e.lower() for e in errors)
            print(json.dumps({"api": "refused" if refused else "timeout", "errors": errors}),
                  flush=True)
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
