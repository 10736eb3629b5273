// SPDX-License-Identifier: GPL-2.0-or-later
/* The server's XDP program (issue 8, docs/kernel.md "Server"): answers a plain Router
 * Solicitation with the Router Advertisement that teredo.core.server would send (RFC 4380
 * sections 5.3.1, 5.3.2; RFC 5991 nonce echo), rate-limited as the core limits it, by
 * rewriting the frame in place and sending it back out (XDP_TX).
 *
 * The core stays the single source of truth: the adapter (teredo.io.kserver) writes into
 * `server_cfg` the two server addresses, the TTL of the host's own UDP datagrams, the limits,
 * and the RA that the core builds for destination :: (its IPv6 header, prefix option, MTU
 * option and checksum). This program only fills in what varies per RS, in the RFC's fixed way:
 * the RA's destination (the RS source) with the checksum adjusted for it, the Authentication
 * header's nonce, the origin indication (RFC 4380 5.1.1: the client's port and IPv4, each
 * XOR all ones), the outer IPv4/UDP headers, and which server address answers (the other one
 * for a cone RS, 5.3.2).
 *
 * Anything else goes up to Python unchanged (XDP_PASS): not IPv4/UDP to port 3544 of a
 * server address, IPv4 options or fragments, a bad IPv4 or UDP checksum (the stack drops it),
 * an RS with options, trailers, an origin indication, an Authentication header with a client
 * id or value, a Teredo or non-link-local source, a destination other than ff02::2, hop
 * limit not 255, a bad ICMPv6 checksum, a non-global IPv4 source, our own port 3544: the
 * core checks and counts all those. An RS over a limit is dropped here and counted
 * (rs_rate_limited), as the core drops and counts it: passing it up would let the Python
 * path's own buckets answer it. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define TEREDO_PORT 3544
#define RA_LEN 96 /* IPv6 40 + RA 16 + prefix information 32 + MTU 8 (core.ipv6.build_ra) */
#define RS_LEN 48 /* IPv6 40 + RS 8, no option */
#define AUTH_LEN 13 /* 00 01 00 00, nonce (8), confirmation (1) */
#define ORIGIN_LEN 8
#define HDRS (14 + 20 + 8)
#define IN_MAX (HDRS + AUTH_LEN + RS_LEN)
#define OUT_MAX (HDRS + AUTH_LEN + ORIGIN_LEN + RA_LEN)
#define GROWTH (ORIGIN_LEN + RA_LEN - RS_LEN)

/* One token bucket kind (core.ratelimit): tokens in units of 1e-12 token, so that a rate r
 * per second refills r * 1000 units per nanosecond. */
struct limit {
	__u64 rate;    /* units per ns */
	__u64 burst;   /* units */
	__u64 full_ns; /* after this long idle the bucket is full whatever it held */
};

struct server_cfg {
	__be32 primary;
	__be32 secondary;
	__u32 ttl;
	__u32 enabled;
	struct limit socket; /* per client IPv4:port */
	struct limit ipv4;   /* per client IPv4 */
	struct limit total;  /* all RS together */
	__u8 ra[RA_LEN];     /* the core's RA to ::, checksum included */
};

struct bucket {
	__u64 stamp; /* ktime ns of the last refill */
	__u64 tokens;
};

struct socket_key {
	__be32 ipv4;
	__be16 port;
	__u16 pad;
};

enum { C_RA = 0, C_RATE_LIMITED = 1, C_PASSED = 2, C_COUNT = 3 };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct server_cfg);
} server_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536); /* ServerLimits.bucket_slots, set by the adapter */
	__type(key, struct socket_key);
	__type(value, struct bucket);
} rs_socket SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __be32);
	__type(value, struct bucket);
} rs_ipv4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bucket);
} rs_total SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} server_counters SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *n = bpf_map_lookup_elem(&server_counters, &which);

	if (n)
		*n += 1;
}

static __always_inline int pass(void)
{
	count(C_PASSED);
	return XDP_PASS;
}

/* TokenBucket.allow / BucketTable.allow: refill if time went forward, then take one token. */
static __always_inline int take(struct bucket *b, const struct limit *l, __u64 now)
{
	__u64 tokens = b->tokens;

	if (now > b->stamp) {
		__u64 idle = now - b->stamp;

		if (idle >= l->full_ns)
			tokens = l->burst;
		else {
			tokens += idle * l->rate; /* idle * rate < burst < 2^63: no overflow */
			if (tokens > l->burst)
				tokens = l->burst;
		}
		b->stamp = now;
	}
	if (tokens >= 1000000000000ULL) {
		b->tokens = tokens - 1000000000000ULL;
		return 1;
	}
	b->tokens = tokens;
	return 0;
}

/* A bucket never seen holds a full burst (BucketTable's stamp -1, TokenBucket's None). */
static __always_inline int take_keyed(void *map, const void *key, const struct limit *l,
				      __u64 now)
{
	struct bucket *b = bpf_map_lookup_elem(map, key);
	struct bucket fresh;

	if (b)
		return take(b, l, now);
	fresh.stamp = now;
	fresh.tokens = l->burst - 1000000000000ULL;
	bpf_map_update_elem(map, key, &fresh, BPF_ANY);
	return 1;
}

static __always_inline __u16 fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* RFC 4861 6.1.1 via the core's checks: ICMPv6 checksum over the pseudo-header. */
static __always_inline int icmpv6_ok(const __u8 *ip6)
{
	__u32 pseudo[2] = { bpf_htonl(8), bpf_htonl(58) };
	__u8 copy[40];
	__u64 sum;

	__builtin_memcpy(copy, ip6 + 8, 32);
	__builtin_memcpy(copy + 32, ip6 + 40, 8);
	sum = bpf_csum_diff(0, 0, (__be32 *)copy, 40, 0);
	sum += bpf_csum_diff(0, 0, pseudo, 8, 0);
	return fold(sum) == 0xffff;
}

/* A global unicast IPv4 (core.addr.is_global_ipv4, RFC 4380 5.2.4, Miredo's list). */
static __always_inline int global_ipv4(__u32 a)
{
	__u32 top = a >> 24;

	if (top == 0 || top == 10 || top == 127 || (top >= 224 && top < 240))
		return 0;
	if ((a & 0xfff00000) == 0xac100000 || (a & 0xffff0000) == 0xc0a80000 ||
	    (a & 0xffff0000) == 0xa9fe0000 || (a & 0xffffff00) == 0xc0586300)
		return 0;
	return a != 0xffffffff;
}

/* The UDP checksum of `udp` (header + payload, `len` bytes, zero-padded to a multiple of 4 in
 * its buffer) from `saddr` to `daddr`, as the sum before complement. */
static __always_inline __u16 udp_sum(__u8 *udp, __u32 buflen, __be32 saddr, __be32 daddr,
				     __u16 len)
{
	__u32 pseudo[3] = { saddr, daddr, bpf_htonl((IPPROTO_UDP << 16) | len) };
	__u64 sum = bpf_csum_diff(0, 0, (__be32 *)udp, buflen, 0);

	sum += bpf_csum_diff(0, 0, pseudo, 12, 0);
	return fold(sum);
}

/* The folded pseudo-header sum (RFC 768), as a CHECKSUM_PARTIAL sender leaves it. */
static __always_inline __u16 pseudo_sum(__be32 saddr, __be32 daddr, __u16 len)
{
	__u32 pseudo[3] = { saddr, daddr, bpf_htonl((IPPROTO_UDP << 16) | len) };

	return fold(bpf_csum_diff(0, 0, pseudo, 12, 0));
}

SEC("xdp")
int server_rs(struct xdp_md *ctx)
{
	__u8 *data = (void *)(long)ctx->data;
	__u8 *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct server_cfg *cfg = bpf_map_lookup_elem(&server_cfg, &zero);
	/* The answer frame, padded for the checksum; 2 bytes in so that its IPv4 and UDP headers
	 * are 4-aligned (the verifier refuses misaligned stack stores). */
	__u8 store[OUT_MAX + 8] __attribute__((aligned(8)));
	__u8 *buf = store + 2;
	__u32 len = end - data, auth, ip6at;
	struct ethhdr *eth = (void *)data;
	struct iphdr *ip = (void *)(data + 14);
	struct udphdr *udp = (void *)(data + 34);
	__u8 *ip6, *p;
	__be32 saddr, daddr, from;
	__u32 client;
	__u16 port, sum, ulen, olen;
	__u64 now;
	int secondary, cone;

	if (!cfg || !cfg->enabled)
		return XDP_PASS;
	if (len == HDRS + AUTH_LEN + RS_LEN)
		auth = AUTH_LEN;
	else if (len == HDRS + RS_LEN)
		auth = 0;
	else
		return pass();
	if (data + HDRS + RS_LEN > end)
		return pass();
	if (auth && data + HDRS + AUTH_LEN + RS_LEN > end)
		return pass();
	/* IPv4 without options or fragments, UDP to 3544 of a server address (5.3.1). */
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->version != 4 || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x3fff)) ||
	    bpf_ntohs(ip->tot_len) != len - 14 || udp->dest != bpf_htons(TEREDO_PORT) ||
	    bpf_ntohs(udp->len) != len - 34)
		return pass();
	daddr = ip->daddr;
	saddr = ip->saddr;
	if (daddr == cfg->primary)
		secondary = 0;
	else if (daddr == cfg->secondary)
		secondary = 1;
	else
		return pass();
	if (fold(bpf_csum_diff(0, 0, (__be32 *)ip, 20, 0)) != 0xffff)
		return pass(); /* the stack drops it, and counts it */
	client = bpf_ntohl(saddr);
	port = bpf_ntohs(udp->source);
	if (!global_ipv4(client) || port == 0)
		return pass();
	if (port == TEREDO_PORT && (saddr == cfg->primary || saddr == cfg->secondary))
		return pass(); /* Miredo's loop guard, the core counts it */

	/* The UDP payload: [Authentication, nonce only] IPv6 + RS, nothing else. */
	p = data + HDRS;
	if (auth) {
		if (p + AUTH_LEN > end || p[0] != 0 || p[1] != 1 || p[2] != 0 || p[3] != 0)
			return pass();
	}
	ip6at = HDRS + auth;
	ip6 = data + ip6at;
	if (ip6 + RS_LEN > end)
		return pass();
	/* Version 6, payload length 8 (no option, no trailer), ICMPv6, hop limit 255, source
	 * fe80::/10 (not Teredo), destination ff02::2, type 133 code 0. */
	if ((ip6[0] >> 4) != 6 || ip6[4] != 0 || ip6[5] != 8 || ip6[6] != 58 || ip6[7] != 255 ||
	    ip6[8] != 0xfe || (ip6[9] & 0xc0) != 0x80 || ip6[24] != 0xff || ip6[25] != 0x02 ||
	    ip6[40] != 133 || ip6[41] != 0)
		return pass();
	for (int i = 26; i < 39; i++)
		if (ip6[i] != 0)
			return pass();
	if (ip6[39] != 2)
		return pass();

	/* Checksums: a bad UDP checksum is the stack's to drop (0: none, RFC 768). */
	if (udp->check) {
		__builtin_memset(store, 0, sizeof(store));
		ulen = len - 34;
		if (auth) {
			if (data + 34 + 8 + AUTH_LEN + RS_LEN > end)
				return pass();
			__builtin_memcpy(buf, data + 34, 8 + AUTH_LEN + RS_LEN);
			sum = udp_sum(buf, 72, saddr, daddr, ulen);
		} else {
			if (data + 34 + 8 + RS_LEN > end)
				return pass();
			__builtin_memcpy(buf, data + 34, 8 + RS_LEN);
			sum = udp_sum(buf, 56, saddr, daddr, ulen);
		}
		/* A datagram from a socket of this host or across a veth (the lab) carries only the
		 * pseudo-header sum, the rest left to a device (CHECKSUM_PARTIAL, which XDP cannot
		 * see): the stack accepts it, so does this. A wire checksum equal to it by chance (1
		 * in 65536 of corrupted ones) is answered, as the relay's programs do. */
		if (sum != 0xffff && udp->check != pseudo_sum(saddr, daddr, ulen))
			return pass();
	}
	if (!icmpv6_ok(ip6))
		return pass();

	/* The limits, in the core's order: per IPv4:port, per IPv4, overall (7.4). */
	now = bpf_ktime_get_ns();
	{
		struct socket_key sk = { .ipv4 = saddr, .port = udp->source, .pad = 0 };
		struct bucket *total;

		if (!take_keyed(&rs_socket, &sk, &cfg->socket, now) ||
		    !take_keyed(&rs_ipv4, &saddr, &cfg->ipv4, now)) {
			count(C_RATE_LIMITED);
			return XDP_DROP;
		}
		total = bpf_map_lookup_elem(&rs_total, &zero);
		if (!total || !take(total, &cfg->total, now)) {
			count(C_RATE_LIMITED);
			return XDP_DROP;
		}
	}

	/* The answer, built in `buf` then copied over the frame. */
	cone = ip6[16] & 0x80; /* the C bit of the RS source (5.3.2) */
	from = (secondary ^ !!cone) ? cfg->secondary : cfg->primary;
	__builtin_memset(store, 0, sizeof(store));
	__builtin_memcpy(buf, eth->h_source, 6);
	__builtin_memcpy(buf + 6, eth->h_dest, 6);
	buf[12] = 0x08;
	buf[13] = 0x00;
	olen = auth + ORIGIN_LEN + RA_LEN;
	{
		struct iphdr *oip = (void *)(buf + 14);
		struct udphdr *oudp = (void *)(buf + 34);
		__u8 *o = buf + HDRS;
		__u8 *ra;
		__u64 csum;
		__u16 ck;

		oip->version = 4;
		oip->ihl = 5;
		oip->tot_len = bpf_htons(20 + 8 + olen);
		/* No DF and an id, as our sockets send (io/udp.py: IP_PMTUDISC_DONT). */
		oip->id = (__u16)bpf_get_prandom_u32();
		oip->frag_off = 0;
		oip->ttl = cfg->ttl;
		oip->protocol = IPPROTO_UDP;
		oip->saddr = from;
		oip->daddr = saddr;
		oip->check = ~fold(bpf_csum_diff(0, 0, (__be32 *)oip, 20, 0));
		oudp->source = bpf_htons(TEREDO_PORT);
		oudp->dest = udp->source;
		oudp->len = bpf_htons(8 + olen);
		if (auth) {
			/* 00 01 00 00, the RS nonce, confirmation 0 (RFC 5991; RFC 4380 5.2.2). */
			if (data + HDRS + AUTH_LEN > end)
				return pass();
			__builtin_memcpy(o, data + HDRS, 12);
			o[12] = 0;
			o += AUTH_LEN;
		}
		/* Origin indication: 00 00, ~port, ~IPv4 (5.1.1). */
		o[0] = 0;
		o[1] = 0;
		{
			__u16 oport = ~udp->source;
			__u32 oaddr = ~saddr;

			__builtin_memcpy(o + 2, &oport, 2); /* o is not aligned after the auth header */
			__builtin_memcpy(o + 4, &oaddr, 4);
		}
		ra = o + ORIGIN_LEN;
		__builtin_memcpy(ra, cfg->ra, RA_LEN);
		/* Destination: the RS source; the template's checksum covered :: there. */
		__builtin_memcpy(ra + 24, ip6 + 8, 16);
		csum = (__u16)~(((__u16)ra[42] << 8) | ra[43]);
		for (int i = 0; i < 16; i += 2)
			csum += ((__u16)ra[24 + i] << 8) | ra[25 + i];
		ck = ~fold(csum);
		ra[42] = ck >> 8;
		ra[43] = ck & 0xff;
		/* UDP checksum last, over the finished payload (0 is sent as all ones). */
		if (auth)
			ck = ~udp_sum(buf + 34, 8 + AUTH_LEN + ORIGIN_LEN + RA_LEN + 3, from, saddr,
				      8 + olen);
		else
			ck = ~udp_sum(buf + 34, 8 + ORIGIN_LEN + RA_LEN, from, saddr, 8 + olen);
		oudp->check = ck ? ck : 0xffff;
	}

	if (bpf_xdp_adjust_tail(ctx, GROWTH))
		return pass();
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (auth) {
		if (data + OUT_MAX > end)
			return XDP_DROP; /* cannot happen: the frame grew by GROWTH */
		__builtin_memcpy(data, buf, OUT_MAX);
	} else {
		if (data + OUT_MAX - AUTH_LEN > end)
			return XDP_DROP;
		__builtin_memcpy(data, buf, OUT_MAX - AUTH_LEN);
	}
	count(C_RA);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
