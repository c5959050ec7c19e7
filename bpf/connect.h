/* SPDX-License-Identifier: GPL-2.0 */
/* The connect monitor's kernel/user-space records (libbpf-bootstrap's shared header):
 * included by connect.bpf.c, mirrored field by field by
 * agent/src/aegis_agent/bpf/layout.py (CONNECT_EVENT, CONNECT_MGMT_KEY), which a unit
 * test checks against this file with the compiler.
 */
#ifndef AEGIS_CONNECT_H
#define AEGIS_CONNECT_H

#define CONNECT_DENIED 1 /* flags: a quarantined cgroup's connect() was refused */

struct connect_event {
	__u64 ktime_ns;
	__u64 cgroup_id;
	__u32 pid;
	__u32 uid;
	__u32 family;
	__u32 proto;
	__u32 dport; /* host order */
	__u32 flags;
	__u8 daddr[16];
	char comm[16];
};

/* A management destination allowed out of a quarantined cgroup: IPv4-mapped or
 * IPv6 address and port (0: any port). */
struct connect_mgmt_key {
	__u8 addr[16];
	__u32 port;
};

#endif
