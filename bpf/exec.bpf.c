// SPDX-License-Identifier: GPL-2.0
/* Aegis exec monitor.
 *
 *   exec_trace  tp_btf/sched_process_exec: one event per exec (pid, ppid, uid, gid,
 *               comm, filename, inode, device; for a #! script the inode and device
 *               are its interpreter's, flagged EXEC_INTERP). An exec whose image (device, inode) is
 *               in exec_deny gets SIGKILL from here: the signal is delivered on the way
 *               back to user space, so the new image never runs its first instruction.
 *   exec_lsm    lsm/bprm_check_security: refuses a denied exec with EPERM before the
 *               image is even mapped. Loaded only where the kernel allows BPF-LSM; the
 *               loader tries it first and falls back to SIGKILL, reporting which mode
 *               is active.
 *
 * Each record names the sshd session processes above the exec'ing process (ssh_pid,
 * ssh_pid_outer; see ssh_sessions below): the agent joins them with sshd's log, which
 * names the certificate (key ID, serial) each session process accepted. An exec inside a
 * session also carries the start of its argv (struct exec_event_args).
 *
 * Records are in exec.h, shared with agent/src/aegis_agent/bpf/layout.py.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "scope.h"
#include "common.h"
#include "exec.h"

#define SIGKILL 9
#define EPERM 1

AEGIS_RING_MAP(exec_events, 1024 * 1024);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct exec_key);
	__type(value, __u32);
} exec_deny SEC(".maps");

AEGIS_STATS_MAP(exec_stats, N_STATS);

AEGIS_SCOPE_MAP(exec_scope);

static __always_inline int denied(struct linux_binprm *bprm, struct exec_key *key)
{
	struct inode *inode = BPF_CORE_READ(bprm, file, f_inode);
	key->ino = BPF_CORE_READ(inode, i_ino);
	key->dev = BPF_CORE_READ(inode, i_sb, s_dev);
	return bpf_map_lookup_elem(&exec_deny, key) != NULL;
}

#define SSH_WALK 24 /* ancestors looked at: a session's commands nest deeper rarely */

/* 1 when the task's comm is sshd's (OpenSSH's listener, its per-connection monitor and
 * the session child keep the name across fork; OpenSSH 9.8+ calls them sshd-session). */
static __always_inline int sshd_comm(struct task_struct *t)
{
	char c[6] = {};

	bpf_probe_read_kernel(c, 5, __builtin_preserve_access_index(&t->comm));
	return c[0] == 's' && c[1] == 's' && c[2] == 'h' && c[3] == 'd' &&
	       (c[4] == 0 || c[4] == '-');
}

/* The tgid of task t at PID-namespace level ``level``; 0 when t is outside it. */
static __always_inline __u32 pid_at(struct task_struct *t, unsigned int level)
{
	struct pid *p = BPF_CORE_READ(t, group_leader, thread_pid);
	struct upid up = {};

	if (!p || BPF_CORE_READ(p, level) < level || level > 32)
		return 0;
	bpf_probe_read_kernel(&up, sizeof(up),
			      (void *)p + bpf_core_field_offset(struct pid, numbers) +
				      level * bpf_core_type_size(struct upid));
	return up.nr;
}

/* The sshd session processes above ``task``, nearest first. Going up the parents, a run
 * of sshd processes is [session child,] monitor, listener: the listener's parent is
 * not sshd (init, the container runtime), the monitor is the one just below the
 * listener, and it is the process that logs "Accepted publickey ... ID <key id>".
 * Inherited through fork and exec, so pipelines, subshells, setsid and renamed
 * processes of the session all find it; a process outside every session finds none. */
static __always_inline void ssh_sessions(struct task_struct *task, __u32 *ssh, __u32 *outer)
{
	unsigned int level = BPF_CORE_READ(task, thread_pid, level);
	struct task_struct *t = BPF_CORE_READ(task, real_parent);
	__u32 top = 0, below = 0, found = 0;

	*ssh = 0;
	*outer = 0;
	for (int i = 0; i < SSH_WALK && t; i++) {
		__u32 nr = pid_at(t, level);

		if (nr && sshd_comm(t)) {
			below = top;
			top = nr;
		} else {
			if (below) {
				if (!found)
					*ssh = below;
				else
					*outer = below;
				if (++found == 2)
					break;
			}
			top = below = 0;
			if (!nr || nr == 1)
				break; /* outside the namespace, or its init */
		}
		t = BPF_CORE_READ(t, real_parent);
	}
}

/* The start of the new image's argv (current->mm is the new one at sched_process_exec;
 * the kernel has just copied the strings there) into args, zero padded. */
static __always_inline void read_args(struct task_struct *task, char *args)
{
	unsigned long start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long len = BPF_CORE_READ(task, mm, arg_end) - start;

	__builtin_memset(args, 0, EXEC_ARGS_LEN);
	if (len > EXEC_ARGS_LEN - 1)
		len = EXEC_ARGS_LEN - 1;
	len &= EXEC_ARGS_LEN - 1;
	if (len)
		bpf_probe_read_user(args, len, (void *)start);
}

static __always_inline void report(struct task_struct *task, struct linux_binprm *bprm,
				   struct exec_key *key, __u32 flags, __u32 tgid, int with_args)
{
	__u32 ssh, outer;
	struct exec_event *e;

	ssh_sessions(task, &ssh, &outer);
	if (ssh && with_args) {
		struct exec_event_args *ea = aegis_reserve(&exec_events, &exec_stats,
							   sizeof(*ea), ST_LOST);
		if (!ea)
			return;
		read_args(task, ea->args);
		e = &ea->e;
	} else {
		e = aegis_reserve(&exec_events, &exec_stats, sizeof(*e), ST_LOST);
		if (!e)
			return;
	}
	__u64 ugid = bpf_get_current_uid_gid();
	e->ktime_ns = bpf_ktime_get_ns();
	e->ino = key->ino;
	e->dev = key->dev;
	e->pid = tgid;
	e->ppid = (tgid == bpf_get_current_pid_tgid() >> 32) ? BPF_CORE_READ(task, real_parent, tgid)
							     : aegis_ns_ppid(task);
	e->uid = (__u32)ugid;
	e->gid = ugid >> 32;
	/* binfmt_script and binfmt_misc point bprm->interp away from bprm->filename when
	 * they hand the exec to an interpreter (bprm_change_interp); bprm->file is then the
	 * interpreter, the script itself is no longer held */
	e->flags = flags | (BPF_CORE_READ(bprm, interp) != BPF_CORE_READ(bprm, filename)
				    ? EXEC_INTERP : 0);
	e->ssh_pid = ssh;
	e->ssh_pid_outer = outer;
	e->_pad = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));
	bpf_ringbuf_submit(e, 0);
	aegis_count(&exec_stats, ST_EVENTS);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(exec_trace, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	struct exec_key key = {};
	__u32 flags = 0, tgid;

	if (!aegis_in_scope(&exec_scope, &tgid))
		return 0;
	if (denied(bprm, &key)) {
		bpf_send_signal(SIGKILL);
		aegis_count(&exec_stats, ST_DENIED);
		flags |= EXEC_DENIED;
	}
	report(task, bprm, &key, flags, tgid, 1);
	return 0;
}

SEC("lsm/bprm_check_security")
int BPF_PROG(exec_lsm, struct linux_binprm *bprm, int ret)
{
	struct exec_key key = {};
	__u32 tgid;

	if (ret || !aegis_in_scope(&exec_scope, &tgid))
		return ret;
	if (!denied(bprm, &key))
		return 0;
	aegis_count(&exec_stats, ST_DENIED);
	/* before the exec: current's mm is still the old image's, no argv to read */
	report(bpf_get_current_task_btf(), bprm, &key, EXEC_DENIED | EXEC_LSM, tgid, 0);
	return -EPERM;
}

char LICENSE[] SEC("license") = "GPL";
