#!/usr/bin/env python3
"""The official Python client (`kubernetes` from PyPI) against a running capstan.

Usage: client_test.py KUBECONFIG

Standalone (no pytest): every test is a plain function using asserts; the script prints
one line per test, then `N passed, M failed`, and exits non-zero if anything failed.
Nothing sleeps: asynchronous checks poll until a deadline.
"""

import json
import signal
import sys
import time
import traceback

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "py-test"
DEADLINE_S = 20.0
TEST_TIMEOUT_S = 60  # per test, so a hung request fails the test instead of hanging the run

core: client.CoreV1Api
apps: client.AppsV1Api


# ---------------------------------------------------------------- helpers


def wait_for(what, f, timeout=DEADLINE_S):
    """Polls `f` until it returns a truthy value; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)  # poll interval, bounded by the deadline above


def api_error(fn, *args, **kwargs):
    """Calls `fn`, asserts it raises ApiException, returns (exception, decoded Status body)."""
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        body = json.loads(e.body) if e.body else {}
        return e, body
    raise AssertionError(f"{fn.__name__} unexpectedly succeeded")


def is_gone(read, *args):
    try:
        read(*args)
        return False
    except ApiException as e:
        if e.status == 404:
            return True
        raise


def cm(name, data=None, labels=None):
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        data=data,
    )


def rv(obj):
    return int(obj.metadata.resource_version)


# ---------------------------------------------------------------- tests


def test_version_and_discovery():
    v = client.VersionApi().get_code()
    assert v.major and v.git_version, v
    groups = client.ApisApi().get_api_versions()
    names = {g.name for g in groups.groups}
    assert "apps" in names, names
    res = core.get_api_resources()
    assert "configmaps" in {r.name for r in res.resources}


def test_create_namespace():
    ns = core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    assert ns.metadata.name == NS
    assert ns.metadata.uid and ns.metadata.resource_version
    got = core.read_namespace(NS)
    assert got.metadata.uid == ns.metadata.uid
    assert NS in [n.metadata.name for n in core.list_namespace().items]


def test_configmap_crud():
    created = core.create_namespaced_config_map(NS, cm("cm-a", {"a": "1"}, {"app": "py"}))
    assert created.metadata.name == "cm-a" and created.metadata.namespace == NS
    assert created.data == {"a": "1"}
    assert created.metadata.creation_timestamp is not None
    core.create_namespaced_config_map(NS, cm("cm-b", {"x": "y"}))

    # Read back.
    got = core.read_namespaced_config_map("cm-a", NS)
    assert got.data == {"a": "1"} and got.metadata.labels == {"app": "py"}
    assert got.metadata.uid == created.metadata.uid

    # Replace (PUT) with the current resourceVersion.
    got.data["a"] = "2"
    got.data["new"] = "n"
    replaced = core.replace_namespaced_config_map("cm-a", NS, got)
    assert replaced.data == {"a": "2", "new": "n"}
    assert rv(replaced) > rv(got), (replaced.metadata.resource_version, got.metadata.resource_version)
    assert core.read_namespaced_config_map("cm-a", NS).data == {"a": "2", "new": "n"}

    # Patch with a dict: the client sends application/strategic-merge-patch+json.
    patched = core.patch_namespaced_config_map("cm-a", NS, {"data": {"b": "3"}, "metadata": {"labels": {"p": "s"}}})
    assert patched.data == {"a": "2", "new": "n", "b": "3"}, patched.data
    assert patched.metadata.labels == {"app": "py", "p": "s"}

    # JSON merge patch: null deletes a key.
    merged = core.patch_namespaced_config_map(
        "cm-a", NS, {"data": {"new": None, "c": "4"}}, _content_type="application/merge-patch+json"
    )
    assert merged.data == {"a": "2", "b": "3", "c": "4"}, merged.data

    # JSON patch: a list body is sent as application/json-patch+json.
    jp = core.patch_namespaced_config_map("cm-a", NS, [{"op": "replace", "path": "/data/a", "value": "5"}])
    assert jp.data["a"] == "5", jp.data

    # Delete, then 404 on read.
    st = core.delete_namespaced_config_map("cm-b", NS)
    assert st is not None
    e, body = api_error(core.read_namespaced_config_map, "cm-b", NS)
    assert e.status == 404, e.status
    assert body.get("kind") == "Status" and body.get("reason") == "NotFound", body
    e, _ = api_error(core.delete_namespaced_config_map, "cm-b", NS)
    assert e.status == 404, e.status


def deployment(name, replicas):
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="web",
                            image="nginx:1.27",
                            ports=[client.V1ContainerPort(container_port=80)],
                        )
                    ]
                ),
            ),
        ),
    )


def test_deployment_crud():
    d = apps.create_namespaced_deployment(NS, deployment("web", 1))
    assert d.metadata.name == "web" and d.spec.replicas == 1
    assert d.spec.template.spec.containers[0].image == "nginx:1.27"

    got = apps.read_namespaced_deployment("web", NS)
    assert got.metadata.uid == d.metadata.uid
    assert got.spec.selector.match_labels == {"app": "web"}
    assert [d.metadata.name for d in apps.list_namespaced_deployment(NS).items] == ["web"]

    # Replace: bump replicas through PUT. The deployment controller writes status
    # concurrently, so a read-modify-write may meet 409 and is retried as clients do.
    deadline = time.monotonic() + 30
    while True:
        got = apps.read_namespaced_deployment("web", NS)
        got.spec.replicas = 2
        try:
            rep = apps.replace_namespaced_deployment("web", NS, got)
            break
        except ApiException as e:
            if e.status != 409 or time.monotonic() > deadline:
                raise
    assert rep.spec.replicas == 2
    assert rep.metadata.generation > got.metadata.generation, (rep.metadata.generation, got.metadata.generation)

    # Strategic merge patch (the default for a dict body): containers merge by name, so
    # the port survives a patch that only names the container and a new image.
    p = apps.patch_namespaced_deployment(
        "web",
        NS,
        {"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.28"}]}}}},
    )
    assert p.spec.replicas == 3
    cs = p.spec.template.spec.containers
    assert len(cs) == 1 and cs[0].image == "nginx:1.28", cs
    assert cs[0].ports and cs[0].ports[0].container_port == 80, cs[0].ports

    # The same body as a JSON merge patch replaces the whole list: the port goes.
    m = apps.patch_namespaced_deployment(
        "web",
        NS,
        {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.29"}]}}}},
        _content_type="application/merge-patch+json",
    )
    cs = m.spec.template.spec.containers
    assert len(cs) == 1 and cs[0].image == "nginx:1.29" and not cs[0].ports, cs
    assert m.spec.replicas == 3

    # The scale and status subresources deserialize too.
    sc = apps.read_namespaced_deployment_scale("web", NS)
    assert sc.spec.replicas == 3
    apps.read_namespaced_deployment_status("web", NS)

    apps.delete_namespaced_deployment("web", NS)
    wait_for("deployment web to be gone", lambda: is_gone(apps.read_namespaced_deployment, "web", NS))
    e, _ = api_error(apps.read_namespaced_deployment, "web", NS)
    assert e.status == 404


def test_list_paging_and_selectors():
    names = [f"page-{i:02d}" for i in range(25)]
    for i, n in enumerate(names):
        core.create_namespaced_config_map(
            NS, cm(n, {"i": str(i)}, {"batch": "page", "parity": "even" if i % 2 == 0 else "odd"})
        )

    def pages(**kw):
        seen, count, cont = [], 0, None
        while True:
            lst = core.list_namespaced_config_map(NS, limit=10, _continue=cont, **kw)
            assert len(lst.items) <= 10, len(lst.items)
            seen += [c.metadata.name for c in lst.items]
            count += 1
            assert count < 50, "paging does not terminate"
            cont = lst.metadata._continue
            if not cont:
                return seen, count

    seen, count = pages(label_selector="batch=page")
    assert sorted(seen) == names, seen
    assert len(seen) == len(set(seen)) == 25
    assert count == 3, count

    # Without a selector: every object in the namespace exactly once.
    everything, _ = pages()
    assert len(everything) == len(set(everything)), everything
    assert set(names) <= set(everything)

    even = core.list_namespaced_config_map(NS, label_selector="batch=page,parity=even")
    assert sorted(c.metadata.name for c in even.items) == names[0::2]
    odd = core.list_namespaced_config_map(NS, label_selector="batch=page,parity!=even")
    assert sorted(c.metadata.name for c in odd.items) == names[1::2]
    some = core.list_namespaced_config_map(NS, label_selector="parity in (odd),batch")
    assert len(some.items) == 12
    none = core.list_namespaced_config_map(NS, label_selector="batch=nope")
    assert none.items == []
    by_name = core.list_namespaced_config_map(NS, field_selector="metadata.name=page-07")
    assert [c.metadata.name for c in by_name.items] == ["page-07"]
    # Across namespaces.
    allns = core.list_config_map_for_all_namespaces(label_selector="batch=page")
    assert len(allns.items) == 25


def collect(resource_version, want, names):
    """Watches configmaps in NS from `resource_version` and returns the events for objects
    in `names` once `want` of them arrived (or the server's 5 s timeout ends the stream)."""
    w = watch.Watch()
    got = []
    for ev in w.stream(core.list_namespaced_config_map, NS, resource_version=resource_version, timeout_seconds=5):
        obj = ev["object"]
        if obj.metadata.name in names:
            got.append((ev["type"], obj.metadata.name, rv(obj)))
            if len(got) >= want:
                w.stop()
                break
    return got


def test_watch_resume():
    start = core.list_namespaced_config_map(NS).metadata.resource_version
    assert start, "list has no resourceVersion"

    core.create_namespaced_config_map(NS, cm("w1", {"v": "1"}))
    core.patch_namespaced_config_map("w1", NS, {"data": {"v": "2"}})
    core.delete_namespaced_config_map("w1", NS)

    evs = collect(start, 3, {"w1"})
    assert [t for t, _, _ in evs] == ["ADDED", "MODIFIED", "DELETED"], evs
    rvs = [r for _, _, r in evs]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3, rvs
    assert rvs[0] > int(start), (rvs, start)
    last = str(rvs[-1])

    # More changes, then resume from the last seen resourceVersion: only the newer events.
    core.create_namespaced_config_map(NS, cm("w2", {"v": "1"}))
    core.patch_namespaced_config_map("w2", NS, {"data": {"v": "2"}})
    newer = collect(last, 2, {"w1", "w2"})
    assert [(t, n) for t, n, _ in newer] == [("ADDED", "w2"), ("MODIFIED", "w2")], newer
    assert all(r > rvs[-1] for _, _, r in newer), (newer, last)
    assert newer[0][2] < newer[1][2], newer


def test_conflicts():
    core.create_namespaced_config_map(NS, cm("conf", {"v": "1"}))
    stale = core.read_namespaced_config_map("conf", NS)
    fresh = core.read_namespaced_config_map("conf", NS)
    fresh.data["v"] = "2"
    core.replace_namespaced_config_map("conf", NS, fresh)

    stale.data["v"] = "3"
    e, body = api_error(core.replace_namespaced_config_map, "conf", NS, stale)
    assert e.status == 409, e.status
    assert e.reason == "Conflict", e.reason
    assert body.get("kind") == "Status" and body.get("reason") == "Conflict", body
    assert body.get("code") == 409
    assert core.read_namespaced_config_map("conf", NS).data == {"v": "2"}

    e, body = api_error(core.create_namespaced_config_map, NS, cm("conf", {"v": "x"}))
    assert e.status == 409, e.status
    assert body.get("reason") == "AlreadyExists", body
    assert body.get("details", {}).get("name") == "conf", body


def test_invalid_name():
    e, body = api_error(core.create_namespaced_config_map, NS, cm("Bad_Name", {"a": "b"}))
    assert e.status == 422, (e.status, e.body)
    assert body.get("reason") == "Invalid", body
    e, _ = api_error(core.read_namespaced_config_map, "Bad_Name", NS)
    assert e.status == 404, "an invalid object must not be stored"


def test_delete_namespace():
    core.delete_namespace(NS)
    wait_for("namespace py-test to be gone", lambda: is_gone(core.read_namespace, NS), timeout=45)


TESTS = [
    test_version_and_discovery,
    test_create_namespace,
    test_configmap_crud,
    test_deployment_crud,
    test_list_paging_and_selectors,
    test_watch_resume,
    test_conflicts,
    test_invalid_name,
    test_delete_namespace,
]


def main():
    global core, apps
    if len(sys.argv) != 2:
        print("usage: client_test.py KUBECONFIG", file=sys.stderr)
        return 2
    config.load_kube_config(config_file=sys.argv[1])
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    def on_alarm(_signum, _frame):
        raise TimeoutError(f"test did not finish within {TEST_TIMEOUT_S}s")

    signal.signal(signal.SIGALRM, on_alarm)
    passed, failed = 0, []
    for t in TESTS:
        t0 = time.monotonic()
        signal.alarm(TEST_TIMEOUT_S)
        try:
            t()
        except Exception:  # noqa: BLE001 - report every failure, keep going
            failed.append(t.__name__)
            print(f"FAIL {t.__name__}\n{traceback.format_exc()}", flush=True)
        else:
            passed += 1
            print(f"ok   {t.__name__} ({time.monotonic() - t0:.2f}s)", flush=True)
        finally:
            signal.alarm(0)
    if failed:
        print("failed: " + ", ".join(failed))
    print(f"{passed} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
