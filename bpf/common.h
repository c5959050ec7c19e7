/* SPDX-License-Identifier: GPL-2.0 */
/* What every Aegis monitor program shares: its ring buffer and per-CPU stats map,
 * counting into it, and reserving a ring-buffer record (a full ring counts as ST_LOST).
 *
 * The stats slots are mirrored by agent/src/aegis_agent/bpf/layout.py (MONITOR_STATS).
 */
#ifndef AEGIS_COMMON_H
#define AEGIS_COMMON_H

enum aegis_stat { ST_EVENTS = 0, ST_LOST, ST_DENIED, N_STATS };

#define AEGIS_STATS_MAP(name, slots)                                                  \
	struct {                                                                        \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                                \
		__uint(max_entries, slots);                                             \
		__type(key, __u32);                                                     \
		__type(value, __u64);                                                   \
	} name SEC(".maps")

#define AEGIS_RING_MAP(name, bytes)                                                   \
	struct {                                                                        \
		__uint(type, BPF_MAP_TYPE_RINGBUF);                                     \
		__uint(max_entries, bytes);                                             \
	} name SEC(".maps")

/* Add one to ``slot`` of a per-CPU array of __u64 counters. */
static __always_inline void aegis_count(void *stats, __u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(stats, &slot);

	if (v)
		*v += 1;
}

/* A ``size``-byte record in ``ring``, or NULL (then ``lost_slot`` of ``stats`` counts it). */
static __always_inline void *aegis_reserve(void *ring, void *stats, __u64 size, __u32 lost_slot)
{
	void *e = bpf_ringbuf_reserve(ring, size, 0);

	if (!e)
		aegis_count(stats, lost_slot);
	return e;
}

#endif
