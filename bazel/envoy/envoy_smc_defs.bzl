"""Macros of @envoy_smc (installed there as defs.bzl by envoy_smc.bzl)."""

load("@envoy//bazel:envoy_build_system.bzl", "envoy_cc_library", "envoy_cc_test")
load(":settings.bzl", "ENVOY_REPOSITORY")

def envoy_smc_cc_library(name, **kwargs):
    """envoy_cc_library, with `repository` only where Envoy's macros need it (WORKSPACE builds)."""
    if ENVOY_REPOSITORY:
        kwargs["repository"] = ENVOY_REPOSITORY
    envoy_cc_library(name = name, **kwargs)

def envoy_smc_cc_test(name, **kwargs):
    """envoy_cc_test, with `repository` only where Envoy's macros need it (WORKSPACE builds)."""
    if ENVOY_REPOSITORY:
        kwargs["repository"] = ENVOY_REPOSITORY
    envoy_cc_test(name = name, **kwargs)
