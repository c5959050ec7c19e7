/* SPDX-License-Identifier: GPL-2.0 */
/* Aegis monitors' scope: which processes a monitor sees.
 *
 * An agent that runs inside a node (a container with its own PID namespace on a
 * shared kernel) must see and act on its node's processes only; the tracing hooks are
 * kernel-wide. The loader writes the (device, inode) of the agent's PID namespace
 * into <prefix>_scope before it attaches anything; a process whose active PID
 * namespace is another one is then ignored (no event, no deny), and pids are reported
 * as the node sees them. on == 0 (the agent in the host's namespace): everything.
 */
#ifndef AEGIS_SCOPE_H
#define AEGIS_SCOPE_H

struct aegis_scope {
	__u64 dev; /* kernel encoding of the nsfs device: major << 20 | minor */
	__u64 ino;
	__u32 on;
	__u32 _pad;
};

#define AEGIS_SCOPE_MAP(name)                                                         \
	struct {                                                                        \
		__uint(type, BPF_MAP_TYPE_ARRAY);                                       \
		__uint(max_entries, 1);                                                 \
		__type(key, __u32);                                                     \
		__type(value, struct aegis_scope);                                      \
	} name SEC(".maps")

/* 1 when the current task is in scope; *tgid gets its pid as the scope sees it. */
static __always_inline int aegis_in_scope(void *scope_map, __u32 *tgid)
{
	__u32 zero = 0;
	struct aegis_scope *s = bpf_map_lookup_elem(scope_map, &zero);
	struct bpf_pidns_info ns = {};

	if (!s || !s->on) {
		*tgid = bpf_get_current_pid_tgid() >> 32;
		return 1;
	}
	if (bpf_get_ns_current_pid_tgid(s->dev, s->ino, &ns, sizeof(ns)))
		return 0;
	*tgid = ns.tgid;
	return 1;
}

/* The parent's tgid as seen from the task's own PID namespace (0: the parent is
 * outside it, e.g. the container runtime). */
static __always_inline __u32 aegis_ns_ppid(struct task_struct *task)
{
	struct pid *own = BPF_CORE_READ(task, thread_pid);
	struct pid *par = BPF_CORE_READ(task, real_parent, group_leader, thread_pid);
	unsigned int level = BPF_CORE_READ(own, level);
	unsigned int plevel = BPF_CORE_READ(par, level);
	struct upid up = {};

	if (!par || plevel < level || level > 32)
		return 0;
	bpf_probe_read_kernel(&up, sizeof(up),
			      (void *)par + bpf_core_field_offset(struct pid, numbers) +
				      level * bpf_core_type_size(struct upid));
	return up.nr;
}

#endif
