// SPDX-License-Identifier: GPL-2.0
/* The baseline for the benchmark: an XDP program that passes everything. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("xdp")
int empty_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
