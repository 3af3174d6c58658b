#!/usr/bin/env python3
"""Adds the envoy-smc socket interface to Istio's bootstrap template.

usage: add_envoy_smc.py STOCK_TEMPLATE EXTENSION_JSON > PATCHED_TEMPLATE

Istio >= 1.21 no longer applies EnvoyFilter BOOTSTRAP patches, so the proxy image carries the
extension in the template pilot-agent renders the bootstrap from. The template is Go
text/template over JSON, not JSON, so it is patched as text at two anchors that every Istio
1.2x template has: the extension becomes the first entry of "bootstrap_extensions", and
"default_socket_interface" names it. Fails when an anchor is missing or the template already
names a socket interface, rather than writing a bootstrap Envoy would read differently.
"""

import json
import sys

ANCHOR = '"bootstrap_extensions": ['


def patch(template: str, extension: dict) -> str:
    if template.count(ANCHOR) != 1:
        raise SystemExit(f"add_envoy_smc: expected exactly one {ANCHOR!r} in the template")
    if '"default_socket_interface"' in template:
        raise SystemExit("add_envoy_smc: the template already sets default_socket_interface")
    name = extension["name"]
    block = json.dumps(extension, indent=2).replace("\n", "\n    ")
    start = template.index(ANCHOR)
    line_start = template.rindex("\n", 0, start) + 1
    indent = template[line_start:start]
    return (
        template[:line_start]
        + f'{indent}"default_socket_interface": {json.dumps(name)},\n'
        + template[line_start : start + len(ANCHOR)]
        + f"\n    {block},"
        + template[start + len(ANCHOR) :]
    )


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        template = f.read()
    with open(sys.argv[2], encoding="utf-8") as f:
        extension = json.load(f)
    sys.stdout.write(patch(template, extension))


if __name__ == "__main__":
    main()
