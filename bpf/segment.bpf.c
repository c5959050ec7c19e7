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
 * Every decision has a verdict; each verdict has a per-CPU counter, and every drop
 * (or, in observe mode, every would-be drop) is reported through a ring buffer behind
 * an in-kernel token bucket, whose refusals are counted too.
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
/* last_seen of an edge is rewritten at most once per millisecond per edge: idle
 * timeouts are seconds-scale, and fewer writes keep the cache line shared. */
#define LAST_SEEN_GRANULARITY_NS 1000000ULL

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
};

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
	e->ts_ns = now;
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

/* First live edge wins; when none is live, the reason of the first dead one found
 * (expired / idle) is more useful than "no edge". */
#define TRY_EDGE(map, key)                                        \
	do {                                                      \
		struct edge_val *v = bpf_map_lookup_elem(map, key); \
		if (v) {                                          \
			__u32 s = edge_state(v, now);             \
			if (s == V_PASS_EDGE)                     \
				return V_PASS_EDGE;               \
			if (reason == V_DROP_NO_EDGE)             \
				reason = s;                       \
		}                                                 \
	} while (0)

static __always_inline __u32 match_edges(const struct config *cfg, const struct pkt *p, __u64 now)
{
	__u32 kinds = cfg->edge_kinds;
	__u32 reason = V_DROP_NO_EDGE;
	__u16 port = p->proto == IPPROTO_ICMP ? 0 : p->dport;
	struct edge_key k = { .src = p->src, .dst = p->dst, .dport = port, .proto = p->proto };
	struct edge_lpm_key lk = {
		.prefixlen = 96, .proto = p->proto, .dport = port, .dst = p->dst, .src = p->src,
	};

	if (kinds & KIND_SRC_DST)
		TRY_EDGE(&seg_edges, &k);
	if (kinds & KIND_ANY_DST) {
		k.src = 0;
		TRY_EDGE(&seg_edges, &k);
	}
	if (kinds & KIND_SRC_ANYDST) {
		k.src = p->src;
		k.dst = 0;
		TRY_EDGE(&seg_edges, &k);
	}
	if (kinds & KIND_ANY_ANYDST) {
		k.src = 0;
		k.dst = 0;
		TRY_EDGE(&seg_edges, &k);
	}
	if (kinds & KIND_CIDR_DST)
		TRY_EDGE(&seg_edges_lpm, &lk);
	if (kinds & KIND_CIDR_ANYDST) {
		lk.dst = 0;
		TRY_EDGE(&seg_edges_lpm, &lk);
	}
	return reason;
}

static __always_inline int mgmt_match(__u8 proto, __u16 lport, __u16 rport, __u32 peer)
{
	struct mgmt_key k = { .prefixlen = 64, .proto = proto, .port = lport, .peer = peer };

	if (bpf_map_lookup_elem(&seg_mgmt, &k))
		return 1;
	k.port = rport;
	if (bpf_map_lookup_elem(&seg_mgmt, &k))
		return 1;
	k.port = 0;
	if (bpf_map_lookup_elem(&seg_mgmt, &k))
		return 1;
	k.proto = 0;
	return bpf_map_lookup_elem(&seg_mgmt, &k) != NULL;
}

static __always_inline __u32 decide_ingress(const struct config *cfg, struct pkt *p, __u64 now)
{
	struct flow_key fk = {
		.remote = p->src, .local = p->dst, .rport = p->sport, .lport = p->dport,
		.proto = p->proto,
	};
	struct flow_val *f;
	__u32 v;

	if (cfg->quarantine)
		return mgmt_match(p->proto, p->dport, p->sport, p->src) ? V_PASS_MGMT
									: V_DROP_QUARANTINE;
	if (p->proto == IPPROTO_ICMP && p->icmp_type != ICMP_ECHOREPLY)
		fk.lport = 0; /* only echo replies belong to a flow */
	f = bpf_map_lookup_elem(&seg_flows, &fk);
	if (f && f->outbound && now - f->last_seen_ns < cfg->flow_timeout_ns) {
		f->last_seen_ns = now;
		return V_PASS_FLOW;
	}
	v = match_edges(cfg, p, now);
	/* the management path is never cut by the default drop either (the SSH a play
	 * runs over, the controller); looked up only for packets no edge let through */
	if (v != V_PASS_EDGE && mgmt_match(p->proto, p->dport, p->sport, p->src))
		return V_PASS_MGMT;
	if (v == V_PASS_EDGE && p->proto == IPPROTO_UDP) {
		/* mark the inbound UDP flow so the service's replies do not open an
		 * outbound flow that would outlive the edge */
		struct flow_val marker = { .last_seen_ns = now, .outbound = 0 };

		if (!f)
			bpf_map_update_elem(&seg_flows, &fk, &marker, BPF_NOEXIST);
		else if (!f->outbound)
			f->last_seen_ns = now;
	}
	return v;
}

static __always_inline __u32 decide_egress(const struct config *cfg, struct pkt *p, __u64 now)
{
	struct flow_key fk = {
		.remote = p->dst, .local = p->src, .rport = p->dport, .lport = p->sport,
		.proto = p->proto,
	};
	struct flow_val fresh = { .last_seen_ns = now, .outbound = 1 };
	struct flow_val *f;

	if (cfg->quarantine)
		return mgmt_match(p->proto, p->sport, p->dport, p->dst) ? V_PASS_MGMT
									: V_DROP_QUARANTINE;
	switch (p->proto) {
	case IPPROTO_TCP:
		f = bpf_map_lookup_elem(&seg_flows, &fk);
		if (f && f->outbound)
			f->last_seen_ns = now;
		else if ((p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN)
			bpf_map_update_elem(&seg_flows, &fk, &fresh, BPF_ANY);
		break;
	case IPPROTO_UDP:
		f = bpf_map_lookup_elem(&seg_flows, &fk);
		if (f && f->outbound)
			f->last_seen_ns = now;
		else if (!f || now - f->last_seen_ns >= cfg->flow_timeout_ns)
			bpf_map_update_elem(&seg_flows, &fk, &fresh, BPF_ANY);
		break;
	case IPPROTO_ICMP:
		if (p->icmp_type == ICMP_ECHO) {
			/* the reply comes back with type 0 and the same identifier */
			fk.rport = 0;
			fk.lport = p->dport;
			bpf_map_update_elem(&seg_flows, &fk, &fresh, BPF_ANY);
		}
		break;
	default:
		break;
	}
	return V_PASS_EGRESS;
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

/* Returns 1 to pass, 0 to drop. */
static __always_inline int segment(void *data, void *data_end, __u32 pkt_len, __u32 dir,
				   __u32 ifindex)
{
	__u32 zero = 0, v, slot;
	const struct config *cfg = bpf_map_lookup_elem(&seg_config, &zero);
	struct pkt p = {};
	__u64 now = bpf_ktime_get_ns();
	int observe;

	if (!cfg)
		cfg = &default_config;
	v = parse(data, data_end, pkt_len, &p);
	if (v == V_PASS_ARP || v == V_PASS_IPV6)
		v = decide_l2(cfg, v, &p);
	else if (v == V_PASS_EDGE)
		v = dir == DIR_INGRESS ? decide_ingress(cfg, &p, now) : decide_egress(cfg, &p, now);

	observe = cfg->mode == MODE_OBSERVE && v >= V_FIRST_DROP;
	slot = dir * SLOT_DIR + (observe ? SLOT_OBSERVED : 0) + (v & 31);
	count(slot);
	if (v < V_FIRST_DROP)
		return 1;
	report(cfg, &p, v, dir, observe, ifindex, pkt_len, now);
	return observe;
}

SEC("xdp")
int seg_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	return segment(data, data_end, data_end - data, DIR_INGRESS, ctx->ingress_ifindex)
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
		    len, DIR_EGRESS, skb->ifindex))
		return TC_ACT_OK;
	return TC_ACT_SHOT;
}

char LICENSE[] SEC("license") = "GPL";
