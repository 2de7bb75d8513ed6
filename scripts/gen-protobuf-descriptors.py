#!/usr/bin/env python3
"""Regenerates api/src/protobuf/k8s.desc from upstream Kubernetes sources.

Usage:
    scripts/gen-protobuf-descriptors.py K8S_API_DIR K8S_APIMACHINERY_DIR > api/src/protobuf/k8s.desc

K8S_API_DIR is a checkout of k8s.io/api and K8S_APIMACHINERY_DIR one of k8s.io/apimachinery,
at the Kubernetes version capstan serves (today v0.36.x, matching the k8s-openapi v1_36
types). The message layout (field numbers, names, types,
cardinality) comes from upstream's `generated.proto` files (what go-to-protobuf emits and what
the k8s-pb crate is compiled from). Facts the .proto files do not carry come from the Go
types next to them (`types.go`, by each field's `protobuf:"...,name=X"` tag):

* `ptr`: the Go field is a pointer, so its JSON form keeps a zero value (`replicas: 0`),
  while a zero value field is dropped as Go's `omitempty` does;
* the JSON name, from the Go field's `json` tag, where go-to-protobuf named the proto
  field differently (`uID` for `uid`);
* `inline`: the Go field is embedded with `json:",inline"`, so its fields are written into
  the parent JSON object (e.g. `LocalObjectReference` in `ConfigMapKeySelector`).
Go fields are matched to proto fields by the number in their `protobuf:"..."` tag.

A Go named slice (`type ExtraValue []string`) is wrapped in a message with one repeated
`items` field on the wire; such messages are marked `list` (their JSON form is the array).

Output format, one record per line:
    M <full message name> [list]
    F <number> <json name> <type> <opt|ptr|rep|inline>
where <type> is a scalar (string, bytes, int32, int64, bool, double, float), `.<message>`,
or `map:<key>:<value>` with value a scalar or `.<message>`.
Only stable (v1, v2) API packages are included, plus apimachinery's meta/v1, runtime,
resource and intstr.
"""

import os
import re
import subprocess
import sys

SCALARS = {"string", "bytes", "int32", "int64", "bool", "double", "float", "uint32", "uint64"}


def proto_files(api_dir, machinery_dir):
    for group in sorted(os.listdir(api_dir)):
        gdir = os.path.join(api_dir, group)
        if not os.path.isdir(gdir) or group.startswith("."):
            continue
        for version in sorted(os.listdir(gdir)):
            if not re.fullmatch(r"v\d+", version):
                continue
            path = os.path.join(gdir, version, "generated.proto")
            if os.path.exists(path):
                yield path
    for sub in ("pkg/apis/meta/v1", "pkg/runtime", "pkg/api/resource", "pkg/util/intstr"):
        path = os.path.join(machinery_dir, sub, "generated.proto")
        if os.path.exists(path):
            yield path


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def parse_proto(path):
    text = strip_comments(open(path, encoding="utf-8").read())
    package = re.search(r"\bpackage\s+([\w.]+)\s*;", text).group(1)
    messages = []
    for m in re.finditer(r"\bmessage\s+(\w+)\s*\{([^{}]*)\}", text):
        name, body = m.group(1), m.group(2)
        fields = []
        for f in re.finditer(
            r"(?:(optional|repeated)\s+([\w.]+)|map\s*<\s*(\w+)\s*,\s*([\w.]+)\s*>)\s+(\w+)\s*=\s*(\d+)", body
        ):
            label, ty, mkey, mval, fname, num = f.groups()
            if mkey:
                ty = "map:%s:%s" % (mkey, resolve(mval, package))
                label = "optional"
            else:
                ty = resolve(ty, package)
            fields.append((int(num), fname, ty, label))
        messages.append((package + "." + name, fields))
    return package, messages


def resolve(ty, package):
    if ty in SCALARS:
        return ty
    if ty.startswith("."):
        return ty
    return "." + package + "." + ty


GO_FIELD = re.compile(r"^\s*(?:(\w+)\s+)?(\*?[\w.\[\]]+(?:\[[\w.]+\][\w.*]+)?)\s+`([^`]*)`")


def go_facts(go_dir, package):
    """(message, proto field name) -> set of flags; message names of Go named slices."""
    facts, lists = {}, set()
    if not os.path.isdir(go_dir):
        return facts, lists
    for fname in sorted(os.listdir(go_dir)):
        if not fname.endswith(".go") or fname.endswith("_test.go") or fname.startswith("zz_generated"):
            continue
        if fname.endswith(".pb.go"):
            continue
        text = open(os.path.join(go_dir, fname), encoding="utf-8").read()
        for m in re.finditer(r"^type\s+(\w+)\s+\[\]\w+\s*$", text, flags=re.M):
            lists.add(package + "." + m.group(1))
        for m in re.finditer(r"^type\s+(\w+)\s+struct\s*\{(.*?)^\}", text, flags=re.M | re.S):
            struct, body = m.group(1), m.group(2)
            for line in body.splitlines():
                fm = GO_FIELD.match(line)
                if not fm:
                    continue
                goname, gotype, tags = fm.groups()
                pm = re.search(r'protobuf:"\w+,(\d+)', tags)
                if not pm:
                    continue
                flags = set()
                if gotype.startswith("*"):
                    flags.add("ptr")
                jm = re.search(r'json:"([^"]*)"', tags)
                json_name = jm.group(1).split(",")[0] if jm else ""
                # An embedded struct without a JSON name, or one marked `,inline`, is inlined.
                if jm and json_name == "" and (goname is None or "inline" in jm.group(1)):
                    flags.add("inline")
                if json_name and json_name != "-":
                    flags.add("json=" + json_name)
                # By field number: embedded fields may have no `name=` in their tag.
                facts[(package + "." + struct, int(pm.group(1)))] = flags
    return facts, lists


def describe(path):
    try:
        return subprocess.run(
            ["git", "-C", path, "describe", "--tags"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(unknown version)"


def main():
    api_dir, machinery_dir = sys.argv[1], sys.argv[2]
    out = [
        "# Generated by scripts/gen-protobuf-descriptors.py from upstream generated.proto and types.go;",
        "# do not edit. Format: see the script.",
        "# Source: k8s.io/api %s, k8s.io/apimachinery %s" % (describe(api_dir), describe(machinery_dir)),
    ]
    for path in proto_files(api_dir, machinery_dir):
        package, messages = parse_proto(path)
        facts, lists = go_facts(os.path.dirname(path), package)
        for name, fields in messages:
            out.append("M %s%s" % (name, " list" if name in lists else ""))
            for num, fname, ty, label in sorted(fields):
                flags = facts.get((name, num), set())
                if label == "repeated":
                    card = "rep"
                elif "inline" in flags:
                    card = "inline"
                elif "ptr" in flags:
                    card = "ptr"
                else:
                    card = "opt"
                # The JSON name is the Go field's `json` tag; go-to-protobuf names most fields
                # the same, but not all (`uID` for `uid`).
                json_name = next((f[5:] for f in flags if f.startswith("json=")), fname)
                out.append("F %d %s %s %s" % (num, json_name, ty, card))
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
