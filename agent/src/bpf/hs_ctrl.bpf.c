// SPDX-License-Identifier: GPL-2.0-only
// Loaded into the kernel by envoy-smc-agent (the Rust loader around it is Apache-2.0) on kernels
// with the smc_hs_ctrl struct_ops (Linux 6.19+, CONFIG_SMC_HS_CTRL_BPF). GPL because the kernel
// only lets GPL-compatible programs implement it.
//
// The kernel asks syn_option() before it puts SMC's TCP option (254) on the SYN of an SMC
// connect in a network namespace whose net.smc.hs_ctrl names this struct_ops; 0 leaves the option
// off, so the peer never sees SMC offered and the connection is plain TCP (the SMC socket falls
// back with PEERNOSMC). It is asked again for every retransmitted SYN: a connect stuck behind a
// path that drops option-254 SYNs gets through as TCP once its destination is held.
//
// The decision follows the agent's compiled configuration, in the order of the policy's
// before_connect(): loopback, denied address, address not allowed, denied port, port not
// allowed, then destinations held after a proven black hole (until their hold-down ends).
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

#define AF_INET 2
#define AF_INET6 10

// The kernel's types, reduced to the fields read here: CO-RE (preserve_access_index) relocates
// every access by name against the running kernel's BTF.
struct esmc_in6_addr {
	union {
		__u32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	__u32 skc_daddr;
	__u16 skc_dport;
	unsigned short skc_family;
	struct esmc_in6_addr skc_v6_daddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct inet_sock {
	struct sock sk;
} __attribute__((preserve_access_index));

struct inet_connection_sock {
	struct inet_sock icsk_inet;
} __attribute__((preserve_access_index));

struct tcp_sock {
	struct inet_connection_sock inet_conn;
} __attribute__((preserve_access_index));

struct inet_request_sock;

// include/net/smc.h (the public part; the kernel's list and owner members are private).
struct smc_hs_ctrl {
	char name[16];
	int flags;
	int (*syn_option)(struct tcp_sock *tp);
	int (*synack_option)(const struct tcp_sock *tp, struct inet_request_sock *ireq);
};

// LPM trie keys: prefix length in bits, then the address in network byte order.
struct v4_key {
	__u32 prefixlen;
	__u32 addr;
};
struct v6_key {
	__u32 prefixlen;
	__u32 addr[4];
};

#define MAX_CIDRS 4096
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_CIDRS);
	__type(key, struct v4_key);
	__type(value, __u8);
} deny_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_CIDRS);
	__type(key, struct v4_key);
	__type(value, __u8);
} allow_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_CIDRS);
	__type(key, struct v6_key);
	__type(value, __u8);
} deny_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAX_CIDRS);
	__type(key, struct v6_key);
	__type(value, __u8);
} allow_v6 SEC(".maps");

// Per port (host byte order): PORT_DENY and/or PORT_ALLOW.
#define PORT_DENY 1
#define PORT_ALLOW 2
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} ports SEC(".maps");

// Index 0: RULE_* bits saying which allow lists are non-empty.
#define RULE_ALLOW_ADDRS 1
#define RULE_ALLOW_PORTS 2
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} rules SEC(".maps");

// A destination held on TCP after a proven black hole -> end of its hold-down
// (CLOCK_MONOTONIC ns, bpf_ktime_get_ns()). IPv4 as IPv4-mapped IPv6.
struct dest_key {
	__u32 addr[4];
	__u16 port; // network byte order
	__u16 pad;
};
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct dest_key);
	__type(value, __u64);
} held SEC(".maps");

// Decisions so far, by outcome (index = DECIDED_*).
enum {
	DECIDED_OFFERED,
	DECIDED_LOOPBACK,
	DECIDED_DENIED_ADDRESS,
	DECIDED_ADDRESS_NOT_ALLOWED,
	DECIDED_DENIED_PORT,
	DECIDED_PORT_NOT_ALLOWED,
	DECIDED_HELD,
	DECIDED_MAX,
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DECIDED_MAX);
	__type(key, __u32);
	__type(value, __u64);
} decided SEC(".maps");

static __always_inline int count(__u32 what, int offer)
{
	__u64 *n = bpf_map_lookup_elem(&decided, &what);

	if (n)
		__sync_fetch_and_add(n, 1);
	return offer;
}

static __always_inline int decide(struct dest_key *d, int v4, __u16 port)
{
	__u32 zero = 0, rule_bits = 0, p = port;
	__u32 *r = bpf_map_lookup_elem(&rules, &zero);
	__u8 *port_bits;
	__u64 *until;

	if (r)
		rule_bits = *r;
	if (v4) {
		struct v4_key k = { .prefixlen = 32, .addr = d->addr[3] };

		if ((bpf_ntohl(k.addr) >> 24) == 127)
			return count(DECIDED_LOOPBACK, 0);
		if (bpf_map_lookup_elem(&deny_v4, &k))
			return count(DECIDED_DENIED_ADDRESS, 0);
		if ((rule_bits & RULE_ALLOW_ADDRS) && !bpf_map_lookup_elem(&allow_v4, &k))
			return count(DECIDED_ADDRESS_NOT_ALLOWED, 0);
	} else {
		struct v6_key k = { .prefixlen = 128 };

		__builtin_memcpy(k.addr, d->addr, sizeof(k.addr));
		if (!k.addr[0] && !k.addr[1] && !k.addr[2] && k.addr[3] == bpf_htonl(1))
			return count(DECIDED_LOOPBACK, 0);
		if (bpf_map_lookup_elem(&deny_v6, &k))
			return count(DECIDED_DENIED_ADDRESS, 0);
		if ((rule_bits & RULE_ALLOW_ADDRS) && !bpf_map_lookup_elem(&allow_v6, &k))
			return count(DECIDED_ADDRESS_NOT_ALLOWED, 0);
	}
	port_bits = bpf_map_lookup_elem(&ports, &p);
	if (port_bits && (*port_bits & PORT_DENY))
		return count(DECIDED_DENIED_PORT, 0);
	if ((rule_bits & RULE_ALLOW_PORTS) && !(port_bits && (*port_bits & PORT_ALLOW)))
		return count(DECIDED_PORT_NOT_ALLOWED, 0);
	until = bpf_map_lookup_elem(&held, d);
	if (until && *until > bpf_ktime_get_ns())
		return count(DECIDED_HELD, 0);
	return count(DECIDED_OFFERED, 1);
}

SEC("struct_ops/syn_option")
int BPF_PROG(envoy_smc_syn_option, struct tcp_sock *tp)
{
	struct sock_common *c = &tp->inet_conn.icsk_inet.sk.__sk_common;
	struct dest_key d = {};
	int v4;

	d.port = c->skc_dport;
	if (c->skc_family == AF_INET) {
		d.addr[2] = bpf_htonl(0xffff);
		d.addr[3] = c->skc_daddr;
		v4 = 1;
	} else if (c->skc_family == AF_INET6) {
		d.addr[0] = c->skc_v6_daddr.in6_u.u6_addr32[0];
		d.addr[1] = c->skc_v6_daddr.in6_u.u6_addr32[1];
		d.addr[2] = c->skc_v6_daddr.in6_u.u6_addr32[2];
		d.addr[3] = c->skc_v6_daddr.in6_u.u6_addr32[3];
		// An IPv4 peer of an IPv6 socket: decided as IPv4, like the policy's canonical().
		v4 = !d.addr[0] && !d.addr[1] && d.addr[2] == bpf_htonl(0xffff);
	} else {
		return 1;
	}
	return decide(&d, v4, bpf_ntohs(d.port));
}

SEC(".struct_ops")
struct smc_hs_ctrl envoy_smc_hs = {
	.name = "envoy_smc",
	.syn_option = (void *)envoy_smc_syn_option,
};

char LICENSE[] SEC("license") = "GPL";
