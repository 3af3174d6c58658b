// SPDX-License-Identifier: GPL-2.0-only
// Loaded into the kernel by envoy-smc-agent (the Rust loader around it is Apache-2.0). GPL because
// tracing programs (fmod_ret) must declare a GPL-compatible license.
//
// At socket(), before the kernel picks the protocol's implementation, turn TCP stream sockets of
// the selected pods (their cgroup id is a key of `selected_cgroups`) into IPPROTO_SMC. Everything
// else keeps the protocol the caller asked for. SMC falls back to TCP by itself where it cannot
// be used (loopback peers, peers without SMC, the keep-TCP socket option).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define SOCK_TYPE_MASK 0xf /* the rest of `type` is SOCK_NONBLOCK / SOCK_CLOEXEC */
#define IPPROTO_TCP 6
#define IPPROTO_SMC 256

/* cgroup id (the cgroup v2 directory's inode) -> sockets converted so far */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} selected_cgroups SEC(".maps");

SEC("fmod_ret/update_socket_protocol")
int BPF_PROG(select_smc, int family, int type, int protocol)
{
	__u64 cgroup_id;
	__u64 *converted;

	if (family != AF_INET && family != AF_INET6)
		return protocol;
	if ((type & SOCK_TYPE_MASK) != SOCK_STREAM)
		return protocol;
	if (protocol != 0 && protocol != IPPROTO_TCP)
		return protocol;
	cgroup_id = bpf_get_current_cgroup_id();
	converted = bpf_map_lookup_elem(&selected_cgroups, &cgroup_id);
	if (!converted)
		return protocol;
	__sync_fetch_and_add(converted, 1);
	return IPPROTO_SMC;
}

char LICENSE[] SEC("license") = "GPL";
