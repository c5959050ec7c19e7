/* SPDX-License-Identifier: GPL-2.0 */
/* The exec monitor's kernel/user-space records (libbpf-bootstrap's shared header):
 * included by exec.bpf.c, mirrored field by field by
 * agent/src/aegis_agent/bpf/layout.py (EXEC_KEY, EXEC_EVENT), which a unit test
 * checks against this file with the compiler.
 */
#ifndef AEGIS_EXEC_H
#define AEGIS_EXEC_H

#define EXEC_DENIED 1 /* flags: the exec was denied */
#define EXEC_LSM 2    /* flags: denied by BPF-LSM (else SIGKILL) */
#define EXEC_INTERP 4 /* flags: an interpreter runs filename (a #! script, binfmt_misc):
		       * ino and dev name the interpreter's file, not filename's */
#define FILENAME_LEN 256
#define EXEC_ARGS_LEN 256 /* argv bytes kept for an exec in an sshd session */

struct exec_key {
	__u64 dev; /* kernel encoding: major << 20 | minor */
	__u64 ino;
};

struct exec_event {
	__u64 ktime_ns;
	__u64 ino;
	__u64 dev;
	__u32 pid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u32 flags;
	__u32 ssh_pid;	     /* the nearest sshd session (monitor) process above this one,
			      * as its PID namespace sees it (what sshd logs); 0: none */
	__u32 ssh_pid_outer; /* the next sshd session further up (an sshd started inside a
			      * session, or a process named sshd made by the user); 0: none */
	__u32 _pad;
	char comm[16];
	char filename[FILENAME_LEN];
};

/* The record of an exec inside an sshd session (ssh_pid != 0, seen by exec_trace): the
 * same, followed by the start of its argv (NUL-separated as the process has it, zero
 * padded; at most EXEC_ARGS_LEN - 1 bytes). The ring record's size tells them apart. */
struct exec_event_args {
	struct exec_event e;
	char args[EXEC_ARGS_LEN];
};

#endif
