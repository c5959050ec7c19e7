// SPDX-License-Identifier: GPL-2.0
/* Aegis micro-segmentation data plane.
 *
 * Two programs share one set of maps:
 *   seg_ingress  XDP on the node's interface: default drop; a packet passes when it
 *                matches a live edge, a flow the node opened itself, or the
 *                management allow-list (in quarantine: only the allow-list).
 *   seg_egress   tc/tcx on the same interface: records the node's own outbound flows
 *                so their replies pass, and cuts egress in quarantine.
 *
 * Egress by domain (issue 15 part 5): on a node an FQDN policy restricts (CFG_EGRESS),
 * a new outbound flow passes only to the management path or to an address of seg_fqdn
 * (the policy's DNS resolvers, and what DNS answers for allowed names gave, until their
 * TTL ends). Those answers come from seg_ingress: a reply to a UDP flow the node opened
 * to port 53 is copied to the seg_dns ring, where the agent parses it.
 *
 * Every decision has a verdict; each verdict has a per-CPU counter, and every drop
 * (or, in observe mode, every would-be drop) is reported through a ring buffer behind
 * an in-kernel token bucket, whose refusals are counted too.
 *
 * The fast path (issue 15): an inbound packet of a flow an edge already admitted finds
 * its flow entry first (one LRU lookup), which names the edge shape that admitted it;
 * that one edge is then looked up and checked live (revoked: gone; expiry, idle timeout
 * and quarantine: checked on every packet), so the cache never passes what the edges
 * would not.
 *
 * Time: flows and the event rate limit run on the coarse monotonic clock (the time of
 * the last tick; a fraction of the cost of bpf_ktime_get_ns). Edges never do: the full
 * lookup reads the precise clock once it has found an edge, and a cache hit reads it
 * whenever the coarse clock cannot settle the question alone: within COARSE_HORIZON_NS
 * of the edge's expiry or idle deadline, or when its last-seen time is due a refresh.
 * Deadlines are therefore exact, as before the cache.
 *
 * The maps' key/value structs and the event record live in segment.h, shared with the
 * loader's mirror (agent/src/aegis_agent/bpf/layout.py).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define ETH_P_IPV6 0x86DD
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define IPPROTO_ICMPV6 58
#define IPV4_FRAG_OFFSET 0x1fff
/* How far the coarse clock may lag the precise one (it lags by up to a tick, 1-10 ms,
 * a little more under load): a cache hit this close to a deadline reads the precise
 * clock. */
#define COARSE_HORIZON_NS 1000000000LL

#include "common.h"
#include "segment.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} seg_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct edge_key);
	__type(value, struct edge_val);
} seg_edges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct edge_lpm_key);
	__type(value, struct edge_val);
} seg_edges_lpm SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mgmt_key);
	__type(value, __u32);
} seg_mgmt SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mgmt_net_key);
	__type(value, __u32);
} seg_mgmt_nets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct edge_key);
	__type(value, struct pol_val);
} seg_pol_edges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct pol_policy);
} seg_policies SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct pol_counters);
} seg_pol_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct fqdn_key);
	__type(value, struct fqdn_val);
} seg_fqdn SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct fqdn_rule);
} seg_fqdn_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} seg_dns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} seg_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, N_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} seg_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} seg_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ratelimit);
} seg_ratelimit SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct attach_state);
} seg_attach SEC(".maps");

/* What the parser extracted from one packet. */
struct pkt {
	__u32 src;
	__u32 dst;
	__u16 sport;     /* ICMP echo: 0 */
	__u16 dport;     /* ICMP echo: identifier */
	__u16 l3_proto;
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 pol_flags;   /* POLF_*: set with pol_counter by a label policy's entry */
	__u16 pol_index;  /* that entry's policy (seg_policies index) */
	__u32 pol_counter; /* the policy edge whose counters this packet goes to, 0: none */
	__u16 l4_off;     /* IPv4: the L4 header's offset from the frame's start */
	__u16 l4_len;     /* IPv4: its length with the payload */
};

#define POLF_OBSERVE 1 /* the policy is in observe mode */
#define POLF_LOG 2     /* action log: pass and report */

static const struct config default_config = {};

static __always_inline void count(__u32 slot)
{
	aegis_count(&seg_counters, slot);
}

static __always_inline int event_allowed(const struct config *cfg, __u64 now)
{
	__u32 zero = 0;
	struct ratelimit *rl;
	int ok = 0;

	if (!cfg->event_cost_ns)
		return 1;
	rl = bpf_map_lookup_elem(&seg_ratelimit, &zero);
	if (!rl)
		return 0;
	bpf_spin_lock(&rl->lock);
	if (now > rl->last_ns) {
		rl->credit_ns += now - rl->last_ns;
		rl->last_ns = now;
	}
	if (rl->credit_ns > cfg->event_burst_ns)
		rl->credit_ns = cfg->event_burst_ns;
	if (rl->credit_ns >= cfg->event_cost_ns) {
		rl->credit_ns -= cfg->event_cost_ns;
		ok = 1;
	}
	bpf_spin_unlock(&rl->lock);
	return ok;
}

static __always_inline void report(const struct config *cfg, const struct pkt *p, __u32 verdict,
				   __u32 dir, __u32 observed, __u32 ifindex, __u32 len, __u64 now)
{
	struct seg_event *e;

	if (!event_allowed(cfg, now)) {
		count(SLOT_EVENTS_SUPPRESSED);
		return;
	}
	e = aegis_reserve(&seg_events, &seg_counters, sizeof(*e), SLOT_EVENTS_LOST);
	if (!e)
		return;
	e->ts_ns = bpf_ktime_get_ns(); /* events carry the precise clock */
	e->src = p->src;
	e->dst = p->dst;
	e->sport = p->sport;
	e->dport = p->dport;
	e->proto = p->proto;
	e->verdict = verdict;
	e->direction = dir;
	e->observed = observed;
	e->ifindex = ifindex;
	e->l3_proto = p->l3_proto;
	e->pkt_len = len > 0xffff ? 0xffff : len;
	e->policy = p->pol_counter ? p->pol_index : 0;
	e->_pad = 0;
	bpf_ringbuf_submit(e, 0);
	count(SLOT_EVENTS_SENT);
}

/* Parse Ethernet + IPv4 + L4 headers. data_end bounds what may be read; pkt_len is
 * the whole packet's length (an skb's linear part can be shorter than the packet). */
static __always_inline __u32 parse(void *data, void *data_end, __u32 pkt_len, struct pkt *p)
{
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 hlen, tot;
	void *l4;

	if ((void *)(eth + 1) > data_end)
		return V_DROP_MALFORMED;
	p->l3_proto = bpf_ntohs(eth->h_proto);
	if (p->l3_proto == ETH_P_ARP) {
		if ((void *)(eth + 1) + sizeof(struct arphdr) > data_end)
			return V_DROP_MALFORMED;
		return V_PASS_ARP; /* policy decided by the caller */
	}
	if (p->l3_proto == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end || ip6->version != 6)
			return V_DROP_MALFORMED;
		p->proto = ip6->nexthdr;
		if (p->proto == IPPROTO_ICMPV6) {
			__u8 *type = (void *)(ip6 + 1);

			if ((void *)(type + 1) > data_end)
				return V_DROP_MALFORMED;
			p->icmp_type = *type;
		}
		return V_PASS_IPV6; /* policy decided by the caller */
	}
	if (p->l3_proto != ETH_P_IP)
		return V_DROP_OTHER_L3;

	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return V_DROP_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return V_DROP_MALFORMED;
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < hlen || pkt_len < sizeof(*eth) || tot > pkt_len - sizeof(*eth))
		return V_DROP_MALFORMED;
	p->src = ip->saddr;
	p->dst = ip->daddr;
	p->proto = ip->protocol;
	if (bpf_ntohs(ip->frag_off) & IPV4_FRAG_OFFSET)
		return V_DROP_FRAGMENT; /* no L4 header to match: later fragments never pass */

	l4 = (void *)ip + hlen;
	p->l4_off = sizeof(*eth) + hlen;
	p->l4_len = tot - hlen;
	switch (p->proto) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end)
			return V_DROP_MALFORMED;
		if (tcp->doff < 5 || tcp->doff * 4 > tot - hlen)
			return V_DROP_MALFORMED;
		p->sport = tcp->source;
		p->dport = tcp->dest;
		p->tcp_flags = ((__u8 *)tcp)[13];
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end)
			return V_DROP_MALFORMED;
		if (bpf_ntohs(udp->len) < sizeof(*udp) || bpf_ntohs(udp->len) > tot - hlen)
			return V_DROP_MALFORMED;
		p->sport = udp->source;
		p->dport = udp->dest;
		break;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *icmp = l4;

		if ((void *)(icmp + 1) > data_end)
			return V_DROP_MALFORMED;
		if (tot - hlen < sizeof(*icmp))
			return V_DROP_MALFORMED;
		p->icmp_type = icmp->type;
		if (icmp->type == ICMP_ECHO || icmp->type == ICMP_ECHOREPLY)
			p->dport = icmp->un.echo.id;
		break;
	}
	default:
		break; /* other protocols match edges on (proto, port 0) */
	}
	return V_PASS_EDGE; /* parsed: the caller decides */
}

/* ``now``: the precise clock (bpf_ktime_get_ns, CLOCK_MONOTONIC). */
static __always_inline __u32 edge_state(struct edge_val *v, __u64 now)
{
	__u64 last;

	if (v->expires_ns && now >= v->expires_ns)
		return V_DROP_EXPIRED;
	last = v->last_seen_ns;
	if (v->idle_ns && now > last && now - last > v->idle_ns)
		return V_DROP_IDLE;
	if (now > last && now - last >= LAST_SEEN_GRANULARITY_NS)
		v->last_seen_ns = now;
	return V_PASS_EDGE;
}

/* Map keys are written as whole 32-bit words: a key assembled from byte and halfword
 * stores makes the hash's word loads wait for the stores to retire (a failed
 * store-to-load forward), which cost more than the lookup itself here. Little-endian
 * layouts, checked against segment.h's structs by the static asserts below. */
#define W16(lo, hi) ((__u32)(lo) | ((__u32)(hi) << 16))
_Static_assert(sizeof(struct flow_key) == 16 && __builtin_offsetof(struct flow_key, lport) == 10,
	       "flow_key words");
_Static_assert(sizeof(struct edge_key) == 12 && __builtin_offsetof(struct edge_key, proto) == 10,
	       "edge_key words");
_Static_assert(sizeof(struct edge_lpm_key) == 16 &&
	       __builtin_offsetof(struct edge_lpm_key, dport) == 6, "edge_lpm_key words");
_Static_assert(sizeof(struct mgmt_key) == 12 && __builtin_offsetof(struct mgmt_key, port) == 6,
	       "mgmt_key words");

static __always_inline void edge_key_set(struct edge_key *k, __u32 src, __u32 dst, __u16 dport,
					 __u8 proto)
{
	__u32 *w = (__u32 *)k;

	w[0] = src;
	w[1] = dst;
	w[2] = W16(dport, proto);
}

static __always_inline void edge_lpm_key_set(struct edge_lpm_key *k, __u32 src, __u32 dst,
					     __u16 dport, __u8 proto)
{
	__u32 *w = (__u32 *)k;

	w[0] = 96; /* exact proto, pad, port, destination; the source as a prefix */
	w[1] = W16(proto, dport);
	w[2] = dst;
	w[3] = src;
}

static __always_inline void mgmt_key_set(struct mgmt_key *k, __u8 proto, __u16 port, __u32 peer)
{
	__u32 *w = (__u32 *)k;

	w[0] = 64;
	w[1] = W16(proto, port);
	w[2] = peer;
}

static __always_inline void flow_key_set(struct flow_key *k, __u32 remote, __u32 local,
					 __u16 rport, __u16 lport, __u8 proto)
{
	__u32 *w = (__u32 *)k;

	w[0] = remote;
	w[1] = local;
	w[2] = W16(rport, lport);
	w[3] = proto;
}

static __always_inline __u16 edge_port(const struct pkt *p)
{
	return p->proto == IPPROTO_ICMP ? 0 : p->dport;
}

/* The edge of shape ``kind`` that would match ``p`` (one lookup), or NULL. */
static __always_inline struct edge_val *edge_of_kind(const struct pkt *p, __u32 kind)
{
	__u16 port = edge_port(p);
	struct edge_key k;
	struct edge_lpm_key lk;

	switch (kind) {
	case KIND_SRC_DST:
		edge_key_set(&k, p->src, p->dst, port, p->proto);
		return bpf_map_lookup_elem(&seg_edges, &k);
	case KIND_ANY_DST:
		edge_key_set(&k, 0, p->dst, port, p->proto);
		return bpf_map_lookup_elem(&seg_edges, &k);
	case KIND_SRC_ANYDST:
		edge_key_set(&k, p->src, 0, port, p->proto);
		return bpf_map_lookup_elem(&seg_edges, &k);
	case KIND_ANY_ANYDST:
		edge_key_set(&k, 0, 0, port, p->proto);
		return bpf_map_lookup_elem(&seg_edges, &k);
	case KIND_CIDR_DST:
		edge_lpm_key_set(&lk, p->src, p->dst, port, p->proto);
		return bpf_map_lookup_elem(&seg_edges_lpm, &lk);
	case KIND_CIDR_ANYDST:
		edge_lpm_key_set(&lk, p->src, 0, port, p->proto);
		return bpf_map_lookup_elem(&seg_edges_lpm, &lk);
	}
	return NULL;
}

/* edge_state for a cache hit, with ``coarse`` (<= the precise clock): the precise clock
 * is read only when the coarse one cannot decide (see COARSE_HORIZON_NS). */
static __always_inline __u32 edge_state_coarse(struct edge_val *v, __u64 coarse)
{
	__s64 since = coarse - v->last_seen_ns; /* at most the real time since */

	if ((v->expires_ns && (__s64)(v->expires_ns - coarse) <= COARSE_HORIZON_NS) ||
	    (v->idle_ns && since + COARSE_HORIZON_NS > (__s64)v->idle_ns) ||
	    since >= (__s64)LAST_SEEN_GRANULARITY_NS)
		return edge_state(v, bpf_ktime_get_ns());
	return V_PASS_EDGE; /* far from every deadline, and seen within the granularity */
}

/* First live edge wins (its shape goes to *kind); when none is live, the reason of the
 * first dead one found (expired / idle) is more useful than "no edge". The precise
 * clock is read once an edge is found. */
#define TRY_EDGE(map, key, shape)                                 \
	do {                                                      \
		struct edge_val *v = bpf_map_lookup_elem(map, key); \
		if (v) {                                          \
			__u32 s;                                  \
			if (!now)                                 \
				now = bpf_ktime_get_ns();         \
			s = edge_state(v, now);                   \
			if (s == V_PASS_EDGE) {                   \
				*kind = shape;                    \
				return V_PASS_EDGE;               \
			}                                         \
			if (reason == V_DROP_NO_EDGE)             \
				reason = s;                       \
		}                                                 \
	} while (0)

static __always_inline __u32 match_edges(const struct config *cfg, const struct pkt *p,
					 __u32 *kind)
{
	__u64 now = 0; /* the precise clock, read at the first edge found */
	__u32 kinds = cfg->edge_kinds;
	__u32 reason = V_DROP_NO_EDGE;
	__u16 port = edge_port(p);
	struct edge_key k;
	struct edge_lpm_key lk;

	if (kinds & KIND_SRC_DST) {
		edge_key_set(&k, p->src, p->dst, port, p->proto);
		TRY_EDGE(&seg_edges, &k, KIND_SRC_DST);
	}
	if (kinds & KIND_ANY_DST) {
		edge_key_set(&k, 0, p->dst, port, p->proto);
		TRY_EDGE(&seg_edges, &k, KIND_ANY_DST);
	}
	if (kinds & KIND_SRC_ANYDST) {
		edge_key_set(&k, p->src, 0, port, p->proto);
		TRY_EDGE(&seg_edges, &k, KIND_SRC_ANYDST);
	}
	if (kinds & KIND_ANY_ANYDST) {
		edge_key_set(&k, 0, 0, port, p->proto);
		TRY_EDGE(&seg_edges, &k, KIND_ANY_ANYDST);
	}
	if (kinds & KIND_CIDR_DST) {
		edge_lpm_key_set(&lk, p->src, p->dst, port, p->proto);
		TRY_EDGE(&seg_edges_lpm, &lk, KIND_CIDR_DST);
	}
	if (kinds & KIND_CIDR_ANYDST) {
		edge_lpm_key_set(&lk, p->src, 0, port, p->proto);
		TRY_EDGE(&seg_edges_lpm, &lk, KIND_CIDR_ANYDST);
	}
	return reason;
}

static __always_inline void fqdn_key_set(struct fqdn_key *k, __u32 dst, __u16 dport,
					 __u8 proto)
{
	__u32 *w = (__u32 *)k;

	w[0] = dst;
	w[1] = W16(dport, proto);
}
_Static_assert(sizeof(struct fqdn_key) == 8 && __builtin_offsetof(struct fqdn_key, dport) == 4,
	       "fqdn_key words");

static __always_inline int mgmt_match(__u8 proto, __u16 lport, __u16 rport, __u32 peer)
{
	struct mgmt_net_key nk = { .prefixlen = 32, .peer = peer };
	struct mgmt_key k;

	if (!bpf_map_lookup_elem(&seg_mgmt_nets, &nk))
		return 0; /* not in any management peer's network: one lookup */
	mgmt_key_set(&k, proto, lport, peer);
	if (bpf_map_lookup_elem(&seg_mgmt, &k))
		return 1;
	mgmt_key_set(&k, proto, rport, peer);
	if (bpf_map_lookup_elem(&seg_mgmt, &k))
		return 1;
	mgmt_key_set(&k, proto, 0, peer);
	if (bpf_map_lookup_elem(&seg_mgmt, &k))
		return 1;
	mgmt_key_set(&k, 0, 0, peer);
	return bpf_map_lookup_elem(&seg_mgmt, &k) != NULL;
}

/* The label policy entry (src, dst, port, proto) of ``p``; on a hit its counter and the
 * policy's mode go to ``p`` and its action is returned, else -1. */
static __always_inline int policy_entry(struct pkt *p, __u16 port, __u8 proto)
{
	struct edge_key k;
	struct pol_val *pv;
	struct pol_policy *pol;
	__u32 idx;

	edge_key_set(&k, p->src, p->dst, port, proto);
	pv = bpf_map_lookup_elem(&seg_pol_edges, &k);
	if (!pv)
		return -1;
	idx = pv->policy;
	pol = bpf_map_lookup_elem(&seg_policies, &idx);
	p->pol_counter = pv->counter;
	p->pol_index = pv->policy;
	p->pol_flags = pol && pol->mode == MODE_OBSERVE ? POLF_OBSERVE : 0;
	return pv->action;
}

/* ``now``: the coarse clock (flows); edges read the precise one themselves. */
static __always_inline __u32 decide_ingress(const struct config *cfg, struct pkt *p, __u64 now)
{
	struct flow_key fk;
	struct flow_val *f;
	__u32 v, kind = 0;
	int action;

	if (cfg->quarantine)
		return mgmt_match(p->proto, p->dport, p->sport, p->src) ? V_PASS_MGMT
									: V_DROP_QUARANTINE;
	/* only echo replies belong to a flow */
	flow_key_set(&fk, p->src, p->dst, p->sport,
		     p->proto == IPPROTO_ICMP && p->icmp_type != ICMP_ECHOREPLY ? 0 : p->dport,
		     p->proto);
	f = bpf_map_lookup_elem(&seg_flows, &fk);
	if (f) {
		if (f->outbound) {
			__s64 since = now - f->last_seen_ns;

			if (since < (__s64)cfg->flow_timeout_ns) {
				if (since >= (__s64)LAST_SEEN_GRANULARITY_NS)
					f->last_seen_ns = now;
				return V_PASS_FLOW;
			}
		} else if (f->kind && !(cfg->flags & CFG_NO_FLOW_CACHE)) {
			/* established inbound flow: the one edge that admitted it, live */
			struct edge_val *e = edge_of_kind(p, f->kind);

			if (e && edge_state_coarse(e, now) == V_PASS_EDGE) {
				if ((__s64)(now - f->last_seen_ns) >= (__s64)LAST_SEEN_GRANULARITY_NS)
					f->last_seen_ns = now;
				count(SLOT_FLOW_CACHE_HIT);
				return V_PASS_EDGE;
			}
			/* revoked, expired or idle: the full lookup says what now */
		}
	}
	/* label policies: an explicit rule decides first (allow, log, drop); else the edges;
	 * a packet no edge passes between a policy's pair is that policy's drop */
	action = cfg->flags & CFG_POLICY ? policy_entry(p, edge_port(p), p->proto) : -1;
	if (action == POL_ALLOW || action == POL_LOG) {
		if (action == POL_LOG)
			p->pol_flags |= POLF_LOG;
		v = V_PASS_EDGE;
	} else if (action == POL_DROP) {
		v = V_DROP_POLICY;
	} else {
		v = match_edges(cfg, p, &kind);
		if (v != V_PASS_EDGE && (cfg->flags & CFG_POLICY) && policy_entry(p, 0, 0) >= 0)
			v = V_DROP_POLICY;
	}
	/* the management path is never cut by the default drop either (the SSH a play
	 * runs over, the controller), nor by a policy; looked up only for packets no edge
	 * let through */
	if (v != V_PASS_EDGE && mgmt_match(p->proto, p->dport, p->sport, p->src)) {
		p->pol_counter = 0; /* not the policy's doing */
		return V_PASS_MGMT;
	}
	if (v == V_PASS_EDGE) {
		/* remember the inbound flow: its next packets look up the edge that admitted
		 * it first, and (UDP) the service's replies do not open an outbound flow
		 * that would outlive the edge */
		struct flow_val in = { .last_seen_ns = now, .outbound = 0, .kind = kind };

		if (!f)
			bpf_map_update_elem(&seg_flows, &fk, &in, BPF_NOEXIST);
		else if (!f->outbound) {
			f->last_seen_ns = now;
			f->kind = kind;
		}
	}
	return v;
}

/* Whether a restricted node may open a flow to ``p``'s destination: the management path,
 * or a live seg_fqdn entry for its port (or for any port). ``now``: the coarse clock (a
 * learned entry may outlive its TTL by a tick). */
static __always_inline int egress_allowed(const struct pkt *p, __u64 now)
{
	struct fqdn_key k;
	struct fqdn_val *v;

	fqdn_key_set(&k, p->dst, edge_port(p), p->proto);
	v = bpf_map_lookup_elem(&seg_fqdn, &k);
	if (!v) {
		fqdn_key_set(&k, p->dst, 0, 0);
		v = bpf_map_lookup_elem(&seg_fqdn, &k);
	}
	if (v && (!v->expires_ns || (__s64)(v->expires_ns - now) > 0))
		return 1;
	return mgmt_match(p->proto, p->sport, p->dport, p->dst);
}

/* A restricted node's new flow to ``p``: V_PASS_EGRESS when allowed, else V_DROP_EGRESS
 * (in observe mode the caller passes it, and its flow is still recorded below, so the
 * replies pass as they would without the restriction). */
#define EGRESS_CHECK(cfg, p, now)                                                     \
	((((cfg)->flags & CFG_EGRESS) && !egress_allowed(p, now)) ? V_DROP_EGRESS           \
								     : V_PASS_EGRESS)

static __always_inline __u32 decide_egress(const struct config *cfg, struct pkt *p, __u64 now)
{
	struct flow_key fk;
	struct flow_val fresh = { .last_seen_ns = now, .outbound = 1 };
	struct flow_val *f;
	__u32 v = V_PASS_EGRESS;

	if (cfg->quarantine)
		return mgmt_match(p->proto, p->sport, p->dport, p->dst) ? V_PASS_MGMT
									: V_DROP_QUARANTINE;
	flow_key_set(&fk, p->dst, p->src, p->dport, p->sport, p->proto);
	/* a flow the node opened, or the reply to an inbound flow an edge admitted, is no
	 * new flow: only new ones meet the egress restriction */
	switch (p->proto) {
	case IPPROTO_TCP:
		f = bpf_map_lookup_elem(&seg_flows, &fk);
		if (f && f->outbound) {
			f->last_seen_ns = now;
			break;
		}
		if (!f)
			v = EGRESS_CHECK(cfg, p, now);
		if ((p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN &&
		    (v == V_PASS_EGRESS || (cfg->flags & CFG_EGRESS_OBSERVE)))
			bpf_map_update_elem(&seg_flows, &fk, &fresh, BPF_ANY);
		break;
	case IPPROTO_UDP:
		f = bpf_map_lookup_elem(&seg_flows, &fk);
		if (f && f->outbound) {
			f->last_seen_ns = now;
			break;
		}
		if (f && (__s64)(now - f->last_seen_ns) < (__s64)cfg->flow_timeout_ns)
			break; /* the reply of an inbound flow */
		v = EGRESS_CHECK(cfg, p, now);
		if (v == V_PASS_EGRESS || (cfg->flags & CFG_EGRESS_OBSERVE))
			bpf_map_update_elem(&seg_flows, &fk, &fresh, BPF_ANY);
		break;
	case IPPROTO_ICMP:
		/* echo requests open flows; other messages answer something ingress decided */
		if (p->icmp_type == ICMP_ECHO) {
			v = EGRESS_CHECK(cfg, p, now);
			/* the reply comes back with type 0 and the same identifier */
			flow_key_set(&fk, p->dst, p->src, 0, p->dport, p->proto);
			if (v == V_PASS_EGRESS || (cfg->flags & CFG_EGRESS_OBSERVE))
				bpf_map_update_elem(&seg_flows, &fk, &fresh, BPF_ANY);
		}
		break;
	default:
		v = EGRESS_CHECK(cfg, p, now);
		break;
	}
	return v;
}

static __always_inline __u32 decide_l2(const struct config *cfg, __u32 parsed, struct pkt *p)
{
	if (parsed == V_PASS_ARP)
		return cfg->arp == ARP_ALLOW ? V_PASS_ARP : V_DROP_ARP;
	/* IPv6 */
	if (cfg->quarantine)
		return V_DROP_QUARANTINE;
	if (cfg->ipv6 == IPV6_ALLOW)
		return V_PASS_IPV6;
	if (cfg->ipv6 == IPV6_FILTER && p->proto == IPPROTO_ICMPV6 &&
	    p->icmp_type >= 133 && p->icmp_type <= 137)
		return V_PASS_IPV6; /* router/neighbour discovery only */
	return V_DROP_IPV6;
}

static __always_inline void pol_count(__u32 counter, __u32 verdict, int observe, __u32 len)
{
	struct pol_counters *c = bpf_map_lookup_elem(&seg_pol_counters, &counter);

	if (!c)
		return;
	if (verdict < V_FIRST_DROP) {
		c->allowed_pkts++;
		c->allowed_bytes += len;
	} else if (observe) {
		c->observed_pkts++;
		c->observed_bytes += len;
	} else {
		c->dropped_pkts++;
		c->dropped_bytes += len;
	}
}

/* Copy a DNS answer (the UDP payload of ``p``, at most DNS_CAPTURE_MAX bytes) to seg_dns
 * for the agent. */
static __always_inline void dns_capture(struct xdp_md *ctx, const struct pkt *p)
{
	__u32 off, n;
	struct dns_rec *r;

	if (p->l4_len < sizeof(struct udphdr) + 12)
		return; /* shorter than a DNS header */
	off = p->l4_off + sizeof(struct udphdr);
	n = p->l4_len - sizeof(struct udphdr);
	r = aegis_reserve(&seg_dns, &seg_counters, sizeof(*r), SLOT_DNS_LOST);
	if (!r)
		return;
	r->ts_ns = bpf_ktime_get_ns();
	r->server = p->src;
	r->client = p->dst;
	r->orig_len = n;
	r->ifindex = ctx->ingress_ifindex;
	if (n > DNS_CAPTURE_MAX)
		n = DNS_CAPTURE_MAX;
	r->len = n;
	if (n < 1 || bpf_xdp_load_bytes(ctx, off, r->data, n)) {
		bpf_ringbuf_discard(r, 0);
		return;
	}
	bpf_ringbuf_submit(r, 0);
	count(SLOT_DNS_SENT);
}

/* Returns 1 to pass, 0 to drop. ``xdp``: the ingress program's context (NULL on egress),
 * for copying DNS answers. */
static __always_inline int segment(void *data, void *data_end, __u32 pkt_len, __u32 dir,
				   __u32 ifindex, struct xdp_md *xdp)
{
	__u32 zero = 0, v, slot;
	const struct config *cfg = bpf_map_lookup_elem(&seg_config, &zero);
	struct pkt p = {};
	__u64 now;
	int observe;

	if (!cfg)
		cfg = &default_config;
	now = bpf_ktime_get_coarse_ns(); /* flows and the rate limit; edges read their own */
	v = parse(data, data_end, pkt_len, &p);
	if (v == V_PASS_ARP || v == V_PASS_IPV6)
		v = decide_l2(cfg, v, &p);
	else if (v == V_PASS_EDGE)
		v = dir == DIR_INGRESS ? decide_ingress(cfg, &p, now) : decide_egress(cfg, &p, now);

	/* a policy in observe mode passes its own drops (V_DROP_POLICY) only; an egress
	 * restriction in observe mode its own (V_DROP_EGRESS) */
	observe = v >= V_FIRST_DROP && (cfg->mode == MODE_OBSERVE ||
					(v == V_DROP_POLICY && (p.pol_flags & POLF_OBSERVE)) ||
					(v == V_DROP_EGRESS && (cfg->flags & CFG_EGRESS_OBSERVE)));
	slot = dir * SLOT_DIR + (observe ? SLOT_OBSERVED : 0) + (v & 31);
	count(slot);
	if (p.pol_counter)
		pol_count(p.pol_counter, v, observe, pkt_len);
	if (v < V_FIRST_DROP) {
		if (p.pol_flags & POLF_LOG)
			report(cfg, &p, v, dir, 0, ifindex, pkt_len, now);
		/* a reply to a UDP flow this node opened to port 53, when an FQDN policy
		 * asks for DNS answers */
		if (xdp && v == V_PASS_FLOW && p.proto == IPPROTO_UDP &&
		    p.sport == bpf_htons(53) && (cfg->flags & CFG_DNS_LEARN))
			dns_capture(xdp, &p);
		return 1;
	}
	report(cfg, &p, v, dir, observe, ifindex, pkt_len, now);
	return observe;
}

SEC("xdp")
int seg_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	return segment(data, data_end, data_end - data, DIR_INGRESS, ctx->ingress_ifindex, ctx)
		       ? XDP_PASS
		       : XDP_DROP;
}

/* Read a 32-bit __sk_buff field with one load at a fixed offset: clang may otherwise
 * keep ctx+offset in a register across the helper call, which the verifier refuses. */
#define SKB_FIELD(skb, field)                                                   \
	({                                                                      \
		__u64 __v;                                                      \
		asm volatile("%0 = *(u32 *)(%1 + %2)"                           \
			     : "=r"(__v)                                        \
			     : "r"(skb), "i"(__builtin_offsetof(struct __sk_buff, field))); \
		__v;                                                            \
	})

SEC("tc")
int seg_egress(struct __sk_buff *skb)
{
	__u32 len = skb->len;
	__u32 want = len < 128 ? len : 128;

	/* headers of locally built packets are linear; pull if a driver left them paged */
	if (skb->data_end - skb->data < want)
		bpf_skb_pull_data(skb, want);

	if (segment((void *)(long)SKB_FIELD(skb, data), (void *)(long)SKB_FIELD(skb, data_end),
		    len, DIR_EGRESS, skb->ifindex, NULL))
		return TC_ACT_OK;
	return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "GPL";
