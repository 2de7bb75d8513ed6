"""The official Python client's CustomObjectsApi against a CronTab CRD on capstan.

Usage: custom_objects.py KUBECONFIG. Prints one line per check; exits non-zero on failure.
"""
import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
api = client.CustomObjectsApi()
G, V, P = "stable.example.com", "v1", "crontabs"


def check(cond, what):
    if not cond:
        print("FAILED:", what)
        sys.exit(1)
    print("ok:", what)


body = {
    "apiVersion": "stable.example.com/v1",
    "kind": "CronTab",
    "metadata": {"name": "py-cron", "labels": {"from": "python"}},
    "spec": {"cronSpec": "*/5 * * * *", "image": "my-image"},
}
created = api.create_namespaced_custom_object(G, V, "default", P, body)
check(created["spec"]["replicas"] == 1 and created["spec"]["policy"] == "Allow", "defaults filled on create")

got = api.get_namespaced_custom_object(G, V, "default", P, "py-cron")
check(got["metadata"]["uid"] == created["metadata"]["uid"], "get returns the object")

listed = api.list_namespaced_custom_object(G, V, "default", P, label_selector="from=python")
check([o["metadata"]["name"] for o in listed["items"]] == ["py-cron"], "list with a label selector")

patched = api.patch_namespaced_custom_object(G, V, "default", P, "py-cron", {"spec": {"replicas": 3}})
check(patched["spec"]["replicas"] == 3, "merge patch")

scale = api.get_namespaced_custom_object_scale(G, V, "default", P, "py-cron")
check(scale["spec"]["replicas"] == 3, "scale subresource read")

status = api.patch_namespaced_custom_object_status(G, V, "default", P, "py-cron", {"status": {"replicas": 3}})
check(status["status"]["replicas"] == 3, "status subresource write")

for bad, field in [
    ({"spec": {"replicas": 11}}, "spec.replicas"),
    ({"spec": {"cronSpec": "not cron"}}, "spec.cronSpec"),
    ({"spec": {"image": "other"}}, "spec.image"),
]:
    try:
        api.patch_namespaced_custom_object(G, V, "default", P, "py-cron", bad)
        check(False, "invalid patch %r refused" % bad)
    except ApiException as e:
        check(e.status == 422 and field in e.body, "invalid %s refused with 422 naming it" % field)

try:
    api.get_namespaced_custom_object(G, V, "default", P, "missing")
    check(False, "a missing object is 404")
except ApiException as e:
    check(e.status == 404, "a missing object is 404")

w = watch.Watch()
rv = api.list_namespaced_custom_object(G, V, "default", P)["metadata"]["resourceVersion"]
api.delete_namespaced_custom_object(G, V, "default", P, "py-cron")
seen = []
for ev in w.stream(api.list_namespaced_custom_object, G, V, "default", P, resource_version=rv, timeout_seconds=10):
    seen.append((ev["type"], ev["object"]["metadata"]["name"]))
    if ev["type"] == "DELETED":
        w.stop()
check(("DELETED", "py-cron") in seen, "a watch sees the delete")
print("all custom object checks passed")
