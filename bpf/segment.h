/* SPDX-License-Identifier: GPL-2.0 */
/* The segment filter's maps and records (libbpf-bootstrap's shared header): included by
 * segment.bpf.c, mirrored field by field by agent/src/aegis_agent/bpf/layout.py, which a
 * unit test checks against this file with the compiler; the loader also checks every
 * pinned map's key and value size when it re-opens them.
 */
#ifndef AEGIS_SEGMENT_H
#define AEGIS_SEGMENT_H

enum direction { DIR_INGRESS = 0, DIR_EGRESS = 1 };

enum mode { MODE_ENFORCE = 0, MODE_OBSERVE = 1 };
enum arp_policy { ARP_ALLOW = 0, ARP_DENY = 1 };
enum ipv6_policy { IPV6_DENY = 0, IPV6_ALLOW = 1, IPV6_FILTER = 2 };

/* Which edge key shapes exist (set by user space on grant, never cleared by revoke):
 * lookups for shapes that were never granted are skipped. */
enum edge_kind {
	KIND_SRC_DST = 1 << 0,     /* exact source, exact destination (hash) */
	KIND_ANY_DST = 1 << 1,     /* any source, exact destination (hash) */
	KIND_SRC_ANYDST = 1 << 2,  /* exact source, any destination (hash) */
	KIND_ANY_ANYDST = 1 << 3,  /* any source, any destination (hash) */
	KIND_CIDR_DST = 1 << 4,    /* source CIDR, exact destination (LPM) */
	KIND_CIDR_ANYDST = 1 << 5, /* source CIDR, any destination (LPM) */
};

enum verdict {
	V_PASS_EDGE = 0,
	V_PASS_FLOW,
	V_PASS_MGMT,
	V_PASS_ARP,
	V_PASS_IPV6,
	V_PASS_EGRESS,
	V_DROP_NO_EDGE,
	V_DROP_EXPIRED,
	V_DROP_IDLE,
	V_DROP_QUARANTINE,
	V_DROP_ARP,
	V_DROP_IPV6,
	V_DROP_MALFORMED,
	V_DROP_FRAGMENT,
	V_DROP_OTHER_L3,
	V_DROP_POLICY, /* a label policy's drop: its explicit rule, or its pair's default */
	V_DROP_EGRESS, /* egress restricted (FQDN policy): a destination no DNS answer named */
	V__COUNT,
};
#define V_FIRST_DROP V_DROP_NO_EDGE

/* counters: slot = direction * 64 + observed * 32 + verdict; event slots after that */
#define SLOT_DIR 64
#define SLOT_OBSERVED 32
#define SLOT_EVENTS_SENT 128
#define SLOT_EVENTS_SUPPRESSED 129
#define SLOT_EVENTS_LOST 130
#define SLOT_FLOW_CACHE_HIT 131 /* inbound packets passed by the established-flow cache */
#define SLOT_DNS_SENT 132       /* DNS answers copied to seg_dns */
#define SLOT_DNS_LOST 133       /* DNS answers not copied: seg_dns full */
#define N_SLOTS 136
/* last_seen of an edge is rewritten at most once per millisecond per edge: idle
 * timeouts are seconds-scale, and fewer writes keep the cache line shared. The agent sets
 * a new grant's last_seen this far before the grant, so a packet in its first millisecond
 * still marks it used. */
#define LAST_SEEN_GRANULARITY_NS 1000000ULL

struct config {
	__u32 mode;
	__u32 quarantine;
	__u32 arp;
	__u32 ipv6;
	__u32 edge_kinds;
	__u32 flags;          /* CFG_* */
	__u64 flow_timeout_ns;
	__u64 event_cost_ns;  /* 0: no rate limit */
	__u64 event_burst_ns; /* bucket depth = burst * cost */
};

/* config.flags */
enum config_flags {
	CFG_NO_FLOW_CACHE = 1 << 0, /* every inbound packet takes the full edge lookup */
	CFG_POLICY = 1 << 1,        /* label policies are installed: look them up */
	CFG_EGRESS = 1 << 2,        /* egress restricted: new flows only to seg_fqdn / mgmt */
	CFG_EGRESS_OBSERVE = 1 << 3, /* ... in observe mode: pass and report would-be drops */
	CFG_DNS_LEARN = 1 << 4,     /* copy DNS answers (replies from port 53) to seg_dns */
};

/* Egress by domain (issue 15 part 5): the addresses a node with an FQDN policy may open
 * flows to. User space writes the DNS resolvers the policy names (never expire) and the
 * addresses DNS answers gave for allowed names (expire at max(record TTL, a floor));
 * port 0 with proto 0 is any port. */
struct fqdn_key {
	__u32 dst;
	__u16 dport;
	__u8 proto;
	__u8 _pad;
};

enum fqdn_flags { FQDN_RESOLVER = 1 << 0, FQDN_LEARNED = 1 << 1 };

struct fqdn_val {
	__u64 expires_ns; /* absolute CLOCK_MONOTONIC ns, 0: never (resolvers) */
	__u16 policy;     /* seg_policies index of the policy that allowed it */
	__u8 flags;       /* enum fqdn_flags */
	__u8 _pad;
	__u32 rule;       /* seg_fqdn_rules index of the name pattern that matched, 0: none */
};

/* A name pattern of an FQDN policy: read by user space only (kept pinned, so a restarted
 * agent learns from the same patterns without its controller). */
#define FQDN_PATTERN_LEN 256
struct fqdn_rule {
	__u16 policy;  /* seg_policies index, 0: slot unused */
	__u16 dport;   /* network order, 0: any */
	__u8 proto;    /* 0: any */
	__u8 _pad[3];
	char pattern[FQDN_PATTERN_LEN]; /* api.example.test or *.pkg.example.test */
};

/* One DNS answer as it arrived (the UDP payload, cut at DNS_CAPTURE_MAX bytes). */
#define DNS_CAPTURE_MAX 1232 /* the EDNS buffer size DNS Flag Day 2020 settled on */
struct dns_rec {
	__u64 ts_ns;
	__u32 server;  /* the resolver that answered */
	__u32 client;  /* this node's address */
	__u16 len;     /* bytes in data */
	__u16 orig_len; /* the whole payload's length */
	__u32 ifindex;
	__u8 data[DNS_CAPTURE_MAX];
};

/* Label policies (issue 15 part 4): compiled by the controller into per-node entries of
 * seg_pol_edges, keyed like seg_edges (exact source and destination). An entry with
 * proto 0 and port 0 is the policy's pair default: a packet between the two that no
 * rule of the policy allows is the policy's drop (or would-be drop in observe mode). */
enum pol_action { POL_ALLOW = 0, POL_DROP = 1, POL_LOG = 2 };

struct pol_val {
	__u32 counter; /* index into seg_pol_counters (per edge) */
	__u16 policy;  /* index into seg_policies */
	__u8 action;   /* enum pol_action */
	__u8 _pad;
};

#define POL_NAME_LEN 56
struct pol_policy {
	__u32 mode; /* enum mode: observe passes the policy's drops and counts them */
	__u32 _pad;
	char name[POL_NAME_LEN]; /* user space only */
};

struct pol_counters {
	__u64 allowed_pkts;
	__u64 allowed_bytes;
	__u64 dropped_pkts;
	__u64 dropped_bytes;
	__u64 observed_pkts; /* observe mode: would have been dropped, passed */
	__u64 observed_bytes;
};

/* IPv4 addresses and ports in network byte order, as on the wire. */
struct edge_key {
	__u32 src; /* 0: any source */
	__u32 dst; /* 0: any destination */
	__u16 dport;
	__u8 proto;
	__u8 _pad;
};

struct edge_val {
	__u64 expires_ns;   /* absolute CLOCK_MONOTONIC ns, 0: never */
	__u64 idle_ns;      /* inactivity timeout, 0: none */
	__u64 last_seen_ns; /* set at grant, refreshed on hit */
	__u64 granted_ns;
};

/* LPM data: proto, pad, dport, dst are exact (64 bits), then the source prefix. */
struct edge_lpm_key {
	__u32 prefixlen;
	__u8 proto;
	__u8 _pad;
	__u16 dport;
	__u32 dst;
	__u32 src;
};

/* seg_mgmt_nets: every management peer's network alone, so a packet from anywhere
 * else is told apart with one lookup before the four of seg_mgmt. */
struct mgmt_net_key {
	__u32 prefixlen;
	__u32 peer;
};

struct mgmt_key {
	__u32 prefixlen; /* 32 + peer prefix length */
	__u8 proto;      /* 0: any protocol (then port 0) */
	__u8 _pad;
	__u16 port;      /* 0: any port; matches the local or the remote port */
	__u32 peer;
};

struct flow_key {
	__u32 remote;
	__u32 local;
	__u16 rport;
	__u16 lport;
	__u8 proto;
	__u8 _pad[3];
};

/* One entry per flow: either a flow this node opened (its replies pass), or an inbound
 * flow an edge admitted (the established-flow cache: ``kind`` names the edge shape that
 * admitted it, so its next packet looks up that one edge, live, instead of the whole
 * chain; the entry itself never passes a packet). */
struct flow_val {
	__u64 last_seen_ns;
	__u32 outbound; /* 1: opened by this node; 0: inbound (never passes by itself) */
	__u32 kind;     /* inbound: the enum edge_kind bit that admitted it, 0: none */
};

struct ratelimit {
	struct bpf_spin_lock lock;
	__u32 _pad;
	__u64 credit_ns;
	__u64 last_ns;
};

struct seg_event {
	__u64 ts_ns;
	__u32 src;
	__u32 dst;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 verdict;
	__u8 direction;
	__u8 observed;
	__u32 ifindex;
	__u16 l3_proto;
	__u16 pkt_len;
	__u32 policy; /* the label policy (seg_policies index) that decided, 0: none */
	__u32 _pad;
};

/* Attach bookkeeping for the loader (user space only). */
struct attach_state {
	__u32 ifindex;
	__u32 xdp_mode;
	__u32 tc_mode;
	__u32 tc_handle;
	__u32 tc_priority;
	__u32 tc_hook_created;
	__u64 attached_ns;
	__u64 netns_ino; /* the network namespace the links were made in */
};

#endif
