"""Brings envoy-smc into an Envoy (or istio/proxy) bazel workspace.

`envoy_smc_repository` creates the external repository `@envoy_smc` from an envoy-smc checkout:
the config proto, the C header, the extension sources and the prebuilt Rust static library,
with the BUILD file `envoy_smc.BUILD.bazel` beside this file. Link `ENVOY_SMC_EXTENSION` into
the Envoy binary to register the socket interface.
"""

ENVOY_SMC_EXTENSION = "@envoy_smc//:socket_interface"

def _envoy_smc_repository_impl(ctx):
    root = ctx.attr.path
    if not root.startswith("/"):
        root = "%s/%s" % (ctx.workspace_root, root)
    root = ctx.path(root)
    for entry in ["api", "include", "bazel/source"]:
        source = root.get_child(entry)
        if not source.exists:
            fail("envoy-smc: %s is missing: is %s an envoy-smc checkout?" % (source, root))
        ctx.symlink(source, entry)

    # The Rust library is built outside bazel (cargo), for the glibc of Envoy's sysroot; see
    # bazel/README.md. ENVOY_SMC_STATICLIB overrides where the archive is taken from.
    lib = ctx.os.environ.get("ENVOY_SMC_STATICLIB", "")
    lib = ctx.path(lib) if lib else root.get_child("target").get_child("release").get_child("libenvoy_smc.a")
    if not lib.exists:
        fail("envoy-smc: %s is missing: build it first (cargo build --release --lib, see bazel/README.md)" % lib)
    ctx.symlink(lib, "lib/libenvoy_smc.a")
    ctx.symlink(ctx.attr.build_file, "BUILD.bazel")
    ctx.file("WORKSPACE", "workspace(name = \"envoy_smc\")\n")

envoy_smc_repository_rule = repository_rule(
    implementation = _envoy_smc_repository_impl,
    attrs = {
        "build_file": attr.label(allow_single_file = True, mandatory = True),
        "path": attr.string(mandatory = True, doc = "The envoy-smc checkout, absolute or relative to the main workspace."),
    },
    environ = ["ENVOY_SMC_STATICLIB"],
    local = True,
)

def envoy_smc_repository(path, build_file = Label("//:envoy_smc.BUILD.bazel")):
    envoy_smc_repository_rule(name = "envoy_smc", path = path, build_file = build_file)
