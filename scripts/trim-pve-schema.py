#!/usr/bin/env python3
"""Trim Proxmox VE's published API schema into kiln's test fixtures.

Reads the schema dumps described in shared/data/README.md and writes
tests/fixtures/proxmox/ (see PROVENANCE.md there):

  pve-apidata-9.1.methods.json      the methods kiln calls, copied verbatim
                                    (descriptions and returns included), in
                                    the original tree shape: readable, and what
                                    most tests load
  pve-apidata-<ver>.params.json.gz  every method of the API, parameters only,
                                    documentation keys dropped; gzip with
                                    mtime 0 so the bytes are reproducible
  pve-api-formats.json              the named formats, copied verbatim

Usage: scripts/trim-pve-schema.py [SOURCE_DIR]   (default ../shared/data/proxmox)
"""

import gzip
import hashlib
import json
import pathlib
import sys

VERSIONS = ["8.4", "9.1"]
# The version whose methods are also kept verbatim.
METHODS_VERSION = "9.1"

# (method, templated path): what kiln's deploy step and its simulator use.
METHODS = [
    ("POST", "/nodes/{node}/qemu"),
    ("POST", "/nodes/{node}/qemu/{vmid}/config"),
    ("PUT", "/nodes/{node}/qemu/{vmid}/config"),
    ("POST", "/nodes/{node}/qemu/{vmid}/status/start"),
    ("POST", "/nodes/{node}/qemu/{vmid}/template"),
    ("POST", "/nodes/{node}/qemu/{vmid}/clone"),
    ("DELETE", "/nodes/{node}/qemu/{vmid}"),
    ("POST", "/nodes/{node}/lxc"),
    ("PUT", "/nodes/{node}/lxc/{vmid}/config"),
    ("POST", "/nodes/{node}/lxc/{vmid}/status/start"),
    ("POST", "/nodes/{node}/lxc/{vmid}/template"),
    ("POST", "/nodes/{node}/lxc/{vmid}/clone"),
    ("DELETE", "/nodes/{node}/lxc/{vmid}"),
    ("POST", "/nodes/{node}/storage/{storage}/upload"),
    ("POST", "/nodes/{node}/storage/{storage}/download-url"),
    ("GET", "/nodes/{node}/storage/{storage}/content"),
    ("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}"),
    ("GET", "/nodes/{node}/tasks"),
    ("GET", "/nodes/{node}/tasks/{upid}/status"),
    ("GET", "/nodes/{node}/tasks/{upid}/log"),
    ("GET", "/cluster/nextid"),
    ("GET", "/cluster/resources"),
    ("GET", "/version"),
]

# Keys that only document a schema; the validator ignores them.
DOC_KEYS = {"description", "verbose_description", "typetext", "format_description", "title"}


def strip_docs(schema):
    """A property schema without its documentation keys. Only schema keys
    go: a property may well be named `description`."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in DOC_KEYS:
            continue
        if key in ("properties", "format") and isinstance(value, dict):
            value = {name: strip_docs(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            value = strip_docs(value)
        elif key == "oneOf" and isinstance(value, list):
            value = [strip_docs(sub) for sub in value]
        out[key] = value
    return out


def trim_tree(nodes, keep_method):
    """The tree, keeping each node's info only for methods keep_method
    selects and dropping subtrees left empty."""
    out = []
    for node in nodes:
        info = {
            m: i for m, i in (node.get("info") or {}).items() if keep_method(m, node["path"])
        }
        children = trim_tree(node.get("children") or [], keep_method)
        if not info and not children:
            continue
        kept = {k: node[k] for k in ("path", "text", "leaf") if k in node}
        if info:
            kept["info"] = info
        if children:
            kept["children"] = children
        out.append(kept)
    return out


def params_only(nodes):
    out = []
    for node in nodes:
        kept = {"path": node["path"]}
        if node.get("info"):
            kept["info"] = {
                m: {"parameters": strip_docs(i["parameters"])} for m, i in node["info"].items()
            }
        if node.get("children"):
            kept["children"] = params_only(node["children"])
        out.append(kept)
    return out


def dump(value):
    return (json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def main():
    repo = pathlib.Path(__file__).resolve().parent.parent
    source = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else repo / "../shared/data/proxmox"
    target = repo / "tests/fixtures/proxmox"
    target.mkdir(parents=True, exist_ok=True)
    wanted = set(METHODS)

    for ver in VERSIONS:
        src = source / f"pve-apidata-{ver}.json"
        raw = src.read_bytes()
        print(f"{src.name}: sha256 {hashlib.sha256(raw).hexdigest()}")
        tree = json.loads(raw)

        trimmed = trim_tree(tree, lambda m, p: (m, p) in wanted)
        found = set()

        def collect(nodes):
            for n in nodes:
                found.update((m, n["path"]) for m in n.get("info") or {})
                collect(n.get("children") or [])

        collect(trimmed)
        missing = wanted - found
        if missing:
            sys.exit(f"{src.name}: methods not found: {sorted(missing)}")
        if ver == METHODS_VERSION:
            (target / f"pve-apidata-{ver}.methods.json").write_bytes(dump(trimmed))

        compact = json.dumps(params_only(tree), sort_keys=True, separators=(",", ":")).encode()
        (target / f"pve-apidata-{ver}.params.json.gz").write_bytes(
            gzip.compress(compact, compresslevel=9, mtime=0)
        )

    formats = source / "pve-api-formats.json"
    raw = formats.read_bytes()
    print(f"{formats.name}: sha256 {hashlib.sha256(raw).hexdigest()}")
    (target / "pve-api-formats.json").write_bytes(raw)


if __name__ == "__main__":
    main()
