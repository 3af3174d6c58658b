"""Brings envoy-smc into an Envoy (or istio/proxy) Bazel build.

`envoy_smc_repository` creates the repository `@envoy_smc` from an envoy-smc checkout: the config
proto, the C header, the extension sources and the shipped Rust archive (bazel/ship-archive.sh:
a single object whose only global symbols are envoy_smc_*), with the BUILD file
`envoy_smc.BUILD.bazel` beside this file. Link `ENVOY_SMC_EXTENSION` into the Envoy binary.

- In a module build (bazel/envoy, Envoy 1.40): `use_repo_rule` in MODULE.bazel.
- In a WORKSPACE build (istio/proxy 1.28, Envoy 1.36): `envoy_smc_repository(...)` in WORKSPACE,
  with `envoy_repository = "@envoy"`, the `repository` argument those Envoy macros need.
"""

ENVOY_SMC_EXTENSION = "@envoy_smc//:socket_interface"

def _envoy_smc_repository_impl(ctx):
    root = ctx.attr.path
    if not root.startswith("/"):
        root = "%s/%s" % (ctx.workspace_root, root)
    root = ctx.path(root)
    for entry in ["api", "include", "bazel/source", "bazel/test", "envoy-config/bootstrap"]:
        source = root.get_child(entry)
        if not source.exists:
            fail("envoy-smc: %s is missing: is %s an envoy-smc checkout?" % (source, root))
        ctx.symlink(source, entry)

    # The shipped archive, built outside Bazel (cargo, then bazel/ship-archive.sh; see
    # bazel/README.md). build.sh passes its path in ENVOY_SMC_STATICLIB.
    lib = ctx.os.environ.get("ENVOY_SMC_STATICLIB", "")
    if not lib:
        fail("envoy-smc: set ENVOY_SMC_STATICLIB to the shipped archive (bazel/ship-archive.sh); bazel/envoy/build.sh does")
    lib = ctx.path(lib)
    if not lib.exists:
        fail("envoy-smc: %s is missing: build it first (bazel/envoy/build.sh)" % lib)
    ctx.symlink(lib, "lib/libenvoy_smc.a")
    ctx.symlink(ctx.attr.build_file, "BUILD.bazel")
    ctx.symlink(ctx.attr._defs, "defs.bzl")
    ctx.file("settings.bzl", "ENVOY_REPOSITORY = %r\n" % ctx.attr.envoy_repository)

envoy_smc_repository = repository_rule(
    implementation = _envoy_smc_repository_impl,
    attrs = {
        "build_file": attr.label(allow_single_file = True, mandatory = True),
        "envoy_repository": attr.string(
            default = "",
            doc = "The `repository` argument for Envoy's build macros: \"@envoy\" in a WORKSPACE build, empty in a module build.",
        ),
        "path": attr.string(mandatory = True, doc = "The envoy-smc checkout, absolute or relative to the main workspace."),
        "_defs": attr.label(default = Label(":envoy_smc_defs.bzl"), allow_single_file = True),
    },
    environ = ["ENVOY_SMC_STATICLIB"],
    local = True,
)
