#!/usr/bin/env python3
"""Checks bazel/image/: the bootstrap-template patch and the extension config it inserts.

- add_envoy_smc.py on a template shaped like Istio's (Go template actions inside JSON): the
  extension becomes the first bootstrap extension, default_socket_interface names it, the rest
  of the template is unchanged, and a template without the anchor (or already naming a socket
  interface) is refused;
- the inserted typed_config (without "@type") is accepted by the real envoy-smc configuration
  loader, through the C ABI of target/debug/libenvoy_smc.so, and the extension's name is the one
  the shim registers.

Prints "N passed, N failed" last.
"""

import ctypes
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
IMAGE = os.path.join(ROOT, "bazel", "image")
sys.path.insert(0, IMAGE)

import add_envoy_smc  # noqa: E402

TEMPLATE = """{
  "node": {
    "id": "{{ .nodeID }}",
    "metadata": {{ .meta_json_str }}
  },
  "bootstrap_extensions": [
    {{- if .metadata_discovery }}
    {
      "name": "metadata_discovery",
      "typed_config": {}
    },
    {{- end }}
    {
      "name": "envoy.bootstrap.internal_listener",
      "typed_config": {}
    }
  ],
  "admin": {}
}
"""

with open(os.path.join(IMAGE, "envoy_smc_extension.json"), encoding="utf-8") as f:
    EXTENSION = json.load(f)

results = []


def case(fn):
    try:
        fn()
        results.append(True)
        print(f"ok   {fn.__name__}")
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        results.append(False)
        print(f"FAIL {fn.__name__}: {e!r}")
    return fn


@case
def patched_template_registers_the_extension_first():
    out = add_envoy_smc.patch(TEMPLATE, EXTENSION)
    # Render the two Go template branches the way pilot-agent would and parse the JSON.
    for with_discovery in (False, True):
        text = out.replace('{{ .nodeID }}', 'sidecar~10.0.0.1~a.b~b.svc.cluster.local')
        text = text.replace("{{ .meta_json_str }}", "{}")
        keep = "{{- if .metadata_discovery }}"
        head, rest = text.split(keep)
        body, tail = rest.split("{{- end }}")
        text = head + (body if with_discovery else "") + tail
        bootstrap = json.loads(text)
        assert bootstrap["default_socket_interface"] == EXTENSION["name"], bootstrap
        exts = bootstrap["bootstrap_extensions"]
        assert exts[0] == EXTENSION, exts[0]
        assert exts[-1]["name"] == "envoy.bootstrap.internal_listener"
        assert len(exts) == (3 if with_discovery else 2)
    # Nothing else changed: taking the two insertions out gives the stock template back.
    block = "\n    " + json.dumps(EXTENSION, indent=2).replace("\n", "\n    ") + ","
    name_line = f'  "default_socket_interface": "{EXTENSION["name"]}",\n'
    assert out.count(block) == 1 and out.count(name_line) == 1
    assert out.replace(block, "").replace(name_line, "") == TEMPLATE


@case
def template_without_anchor_is_refused():
    for bad in (TEMPLATE.replace('"bootstrap_extensions": [', '"bootstrap_extensions":['),
                TEMPLATE.replace('"admin"', '"default_socket_interface": "x",\n  "admin"')):
        try:
            add_envoy_smc.patch(bad, EXTENSION)
        except SystemExit:
            continue
        raise AssertionError("patched a template it should refuse")


@case
def command_line_writes_the_patched_template():
    with tempfile.TemporaryDirectory() as tmp:
        stock = os.path.join(tmp, "stock.json")
        with open(stock, "w", encoding="utf-8") as f:
            f.write(TEMPLATE)
        out = subprocess.run(
            [sys.executable, os.path.join(IMAGE, "add_envoy_smc.py"), stock,
             os.path.join(IMAGE, "envoy_smc_extension.json")],
            check=True, capture_output=True, text=True).stdout
        assert out == add_envoy_smc.patch(TEMPLATE, EXTENSION)


@case
def extension_name_is_the_registered_one():
    with open(os.path.join(ROOT, "bazel", "source", "smc_socket_interface.h"), encoding="utf-8") as f:
        header = f.read()
    assert f'Name = "{EXTENSION["name"]}"' in header
    assert EXTENSION["typed_config"]["@type"] == "type.googleapis.com/envoy_smc.v1.SmcConfig"


@case
def typed_config_accepted_by_the_library():
    lib = ctypes.CDLL(os.path.join(ROOT, "target", "debug", "libenvoy_smc.so"))
    lib.envoy_smc_runtime_new_from_yaml.restype = ctypes.c_uint32
    lib.envoy_smc_runtime_new_from_yaml.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
        ctypes.POINTER(ctypes.c_void_p)]
    lib.envoy_smc_runtime_free.argtypes = [ctypes.c_void_p]
    lib.envoy_smc_string_free.argtypes = [ctypes.c_void_p]
    config = {k: v for k, v in EXTENSION["typed_config"].items() if k != "@type"}
    text = json.dumps(config).encode()
    rt = ctypes.c_void_p()
    err = ctypes.c_void_p()
    rc = lib.envoy_smc_runtime_new_from_yaml(text, len(text), ctypes.byref(rt), ctypes.byref(err))
    assert rc == 0, (rc, err.value and ctypes.string_at(err.value))
    lib.envoy_smc_runtime_free(rt)
    bad = json.dumps(dict(config, listeners={"ports": [70000]})).encode()
    rc = lib.envoy_smc_runtime_new_from_yaml(bad, len(bad), ctypes.byref(rt), ctypes.byref(err))
    assert rc == 2, rc
    assert b"listeners.ports" in ctypes.string_at(err.value)
    lib.envoy_smc_string_free(err)


print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
sys.exit(0 if all(results) else 1)
