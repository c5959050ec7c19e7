// SPDX-License-Identifier: GPL-2.0
/* Aegis connect monitor and quarantine for workloads.
 *
 *   connect_trace  tp_btf/inet_sock_set_state: an outbound TCP connect (CLOSE ->
 *                  SYN_SENT, IPv4 and IPv6) runs in the connecting task's context, so
 *                  pid, uid and comm are the caller's. No tracefs needed.
 *   connect4/6     cgroup/connect4 and cgroup/connect6, attached only to the cgroups of
 *                  quarantined workloads: connect() (TCP and UDP) fails with EPERM unless
 *                  the destination is on the management allow-list; each refusal is an
 *                  event.
 *
 * Records are in connect.h, shared with agent/src/aegis_agent/bpf/layout.py.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "scope.h"
#include "common.h"
#include "connect.h"

#define AF_INET 2
#define AF_INET6 10
#define TCP_CLOSE_STATE 7
#define TCP_SYN_SENT_STATE 2

AEGIS_RING_MAP(connect_events, 512 * 1024);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct connect_mgmt_key);
	__type(value, __u32);
} connect_mgmt SEC(".maps");

AEGIS_STATS_MAP(connect_stats, N_STATS);

AEGIS_SCOPE_MAP(connect_scope);

static __always_inline struct connect_event *reserve(__u32 tgid)
{
	struct connect_event *e = aegis_reserve(&connect_events, &connect_stats, sizeof(*e),
						ST_LOST);
	if (!e)
		return NULL;
	__builtin_memset(e, 0, sizeof(*e));
	e->ktime_ns = bpf_ktime_get_ns();
	e->pid = tgid;
	e->uid = (__u32)bpf_get_current_uid_gid();
	e->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

static __always_inline void mapped4(__u8 *out, __u32 addr_be)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &addr_be, 4);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(connect_trace, const struct sock *sk, const int oldstate, const int newstate)
{
	__u32 tgid;

	if (oldstate != TCP_CLOSE_STATE || newstate != TCP_SYN_SENT_STATE)
		return 0;
	if (!aegis_in_scope(&connect_scope, &tgid))
		return 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	struct connect_event *e = reserve(tgid);
	if (!e)
		return 0;
	e->family = family;
	e->proto = BPF_CORE_READ(sk, sk_protocol);
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET)
		mapped4(e->daddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
	else
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	bpf_ringbuf_submit(e, 0);
	aegis_count(&connect_stats, ST_EVENTS);
	return 0;
}

static __always_inline int decide(struct bpf_sock_addr *ctx, struct connect_mgmt_key *key)
{
	__u32 any = key->port;

	if (bpf_map_lookup_elem(&connect_mgmt, key))
		return 1;
	key->port = 0;
	if (bpf_map_lookup_elem(&connect_mgmt, key))
		return 1;
	key->port = any;
	aegis_count(&connect_stats, ST_DENIED);
	/* attached to the quarantined cgroup itself: already in scope; pids as the
	 * host sees them (this hook has no PID-namespace helper) */
	struct connect_event *e = reserve(bpf_get_current_pid_tgid() >> 32);
	if (e) {
		e->family = ctx->user_family;
		e->proto = ctx->protocol;
		e->dport = key->port;
		e->flags = CONNECT_DENIED;
		__builtin_memcpy(e->daddr, key->addr, 16);
		bpf_ringbuf_submit(e, 0);
	}
	return 0;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	struct connect_mgmt_key key = {};

	mapped4(key.addr, ctx->user_ip4);
	key.port = bpf_ntohs(ctx->user_port);
	return decide(ctx, &key);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	struct connect_mgmt_key key = {};

	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2],
	      w3 = ctx->user_ip6[3];
	__builtin_memcpy(key.addr, &w0, 4);
	__builtin_memcpy(key.addr + 4, &w1, 4);
	__builtin_memcpy(key.addr + 8, &w2, 4);
	__builtin_memcpy(key.addr + 12, &w3, 4);
	key.port = bpf_ntohs(ctx->user_port);
	return decide(ctx, &key);
}

char LICENSE[] SEC("license") = "GPL";
