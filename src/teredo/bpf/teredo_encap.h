/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Shared helpers of the Teredo tc programs (docs/kernel.md): the peer map's layout, IPv4/UDP
 * encapsulation and decapsulation of IPv6 (RFC 4380 section 3: a Teredo packet is an IPv6
 * packet as the payload of a UDP datagram, nothing in between), checksum helpers.
 *
 * Used by the relay's programs (teredo_relay.bpf.c) and the client's. Everything here is
 * static inline: each program stays one small function the verifier reads once.
 *
 * The rule of every program: forward only what the sans-I/O core would forward the same way,
 * byte for byte; anything else returns TC_ACT_OK *unchanged*, so it takes the Python path
 * exactly as before. Checks that can fail are all made before the packet is touched. */
#ifndef TEREDO_ENCAP_H
#define TEREDO_ENCAP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Kernel 6.3+ (Debian 12's uapi header is 6.1's): decapsulation sets skb->protocol. */
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV6
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

#define TEREDO_ENCAP_LEN (sizeof(struct iphdr) + sizeof(struct udphdr)) /* 28 */
#define TEREDO_IP6_LEN 40
#define TEREDO_TTL 64 /* net.ipv4.ip_default_ttl, what the daemon's UDP socket would use */

/* A trusted peer as the core decided it (io/kmirror.py writes it): IPv6 address (the key) ->
 * its mapping, and the last use the kernel saw, in units of 2**20 ns of CLOCK_BOOTTIME (the
 * daemon's clock, io/loop.py), which the mirror reads back as use (a peer in use stays alive).
 * The client's programs also read last_rx as the peer's validity date (section 5.2.4: the
 * mirror writes the core's last reception there). 16 bytes. */
struct teredo_peer {
	__be32 ipv4;      /* mapped IPv4, network order */
	__be16 port;      /* mapped UDP port, network order */
	__u16 flags;      /* TEREDO_PEER_LOCAL; other bits 0 */
	__u32 last_tx;    /* kernel sent to the peer (ns >> 20) */
	__u32 last_rx;    /* kernel forwarded from the peer (ns >> 20) */
};

/* A client's local peer (RFC 4380 section 5.2.8): valid 600 s after its last reception. */
#define TEREDO_PEER_LOCAL 1

struct teredo_key {
	__u8 addr[16];
};

static __always_inline __u32 teredo_stamp(void)
{
	return (__u32)(bpf_ktime_get_boot_ns() >> 20);
}

/* Stamp `now` (teredo_stamp, read once per packet by the caller: a clock read is 0.1-0.2 us of
 * a packet's cost on a virtual machine, docs/benchmarks.md) without dirtying the cache line on
 * every packet. */
static __always_inline void teredo_touch(__u32 *field, __u32 now)
{
	if (*field != now)
		*field = now;
}

static __always_inline __u16 teredo_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* The 16-bit words of `n` bytes (n a multiple of 4, read as network-order words). */
static __always_inline __u64 teredo_sum_words(const __u8 *p, int n)
{
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < n; i += 2)
		sum += ((__u32)p[i] << 8) | p[i + 1];
	return sum;
}

/* A CHECKSUM_PARTIAL packet (sent by a socket of this host or a veth peer, checksum left to
 * the device) carries only the folded pseudo-header sum in its L4 checksum field. Such a packet
 * must not be encapsulated by us: nothing would complete the inner checksum for a receiver in
 * user space (the TUN path does it, in validate_xmit_skb). `__sk_buff` does not show ip_summed,
 * so the field is compared with the pseudo-header sum; a complete checksum equal to it by chance
 * (1 in 65536) only sends that packet the Python path, which is always right. */
static __always_inline int teredo_ip6_l4_looks_partial(const struct ipv6hdr *ip6, __u16 check)
{
	__u64 sum = teredo_sum_words(ip6->saddr.in6_u.u6_addr8, 16) +
		    teredo_sum_words(ip6->daddr.in6_u.u6_addr8, 16) +
		    bpf_ntohs(ip6->payload_len) + ip6->nexthdr;
	__u16 pseudo = teredo_fold(sum);

	return bpf_ntohs(check) == pseudo || (pseudo == 0xffff && check == 0);
}

/* The same for the outer UDP header of a received datagram (IPv4 pseudo header). */
static __always_inline int teredo_udp4_looks_partial(const struct iphdr *ip, const struct udphdr *udp)
{
	__u64 sum = teredo_sum_words((const __u8 *)&ip->saddr, 4) +
		    teredo_sum_words((const __u8 *)&ip->daddr, 4) + IPPROTO_UDP +
		    bpf_ntohs(udp->len);

	return bpf_ntohs(udp->check) == teredo_fold(sum);
}

/* The outer header of a Teredo packet from (saddr, sport) to the peer: IPv4 without options, no
 * DF (as a UDP socket with the default PMTU discovery of a Teredo daemon may fragment), TTL 64,
 * a random ID, UDP checksum 0 (allowed for IPv4, RFC 768; the inner packet has its own). */
struct teredo_outer {
	struct iphdr ip;
	struct udphdr udp;
} __attribute__((packed));

static __always_inline void teredo_outer_fill(struct teredo_outer *h, __be32 saddr, __be16 sport,
					      __be32 daddr, __be16 dport, __u32 inner_len)
{
	__u64 sum;

	h->ip.version = 4;
	h->ip.ihl = 5;
	h->ip.tos = 0;
	h->ip.tot_len = bpf_htons((__u16)(inner_len + TEREDO_ENCAP_LEN));
	h->ip.id = (__be16)bpf_get_prandom_u32();
	h->ip.frag_off = 0;
	h->ip.ttl = TEREDO_TTL;
	h->ip.protocol = IPPROTO_UDP;
	h->ip.check = 0;
	h->ip.saddr = saddr;
	h->ip.daddr = daddr;
	sum = teredo_sum_words((const __u8 *)&h->ip, sizeof(h->ip));
	h->ip.check = bpf_htons((__u16)~teredo_fold(sum));
	h->udp.source = sport;
	h->udp.dest = dport;
	h->udp.len = bpf_htons((__u16)(inner_len + sizeof(struct udphdr)));
	h->udp.check = 0;
}

/* Grow room for the outer header in front of the IPv6 packet at `l2` and write it; skb->protocol
 * becomes IPv4. `flags`: BPF_F_ADJ_ROOM_FIXED_GSO for a GSO packet (the segment size kept), or 0.
 * Returns 0 or a negative errno (the packet is then unchanged). */
static __always_inline int teredo_encap(struct __sk_buff *skb, __u32 l2, const struct teredo_outer *h,
					__u64 flags)
{
	int err = bpf_skb_adjust_room(skb, TEREDO_ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				      BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | flags);

	if (err)
		return err;
	return bpf_skb_store_bytes(skb, l2, h, sizeof(*h), 0);
}

/* Remove the outer IPv4/UDP header in front of the IPv6 packet; skb->protocol becomes IPv6. */
static __always_inline int teredo_decap(struct __sk_buff *skb)
{
	return bpf_skb_adjust_room(skb, -(__s32)TEREDO_ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				   BPF_F_ADJ_ROOM_DECAP_L3_IPV6);
}

/* The Ethernet type at offset 12, after a change of protocol (L2 programs only). */
static __always_inline int teredo_set_ethertype(struct __sk_buff *skb, __u16 proto)
{
	__be16 p = bpf_htons(proto);

	return bpf_skb_store_bytes(skb, 12, &p, sizeof(p), 0);
}

/* Per-CPU counters: one slot each, summed by the daemon. */
static __always_inline void teredo_count(void *map, __u32 slot)
{
	__u64 *c = bpf_map_lookup_elem(map, &slot);

	if (c)
		*c += 1;
}

/* The first slots of the client's and the relay's counters (io/kmirror.py SHARED_COUNTERS
 * names them in this order); each program's own enum goes on from C_SHARED. */
enum teredo_counter {
	C_ENCAP = 0,        /* encapsulated and redirected */
	C_ENCAP_NO_PEER,    /* destination not in the map: Python */
	C_ENCAP_PARTIAL,    /* checksum left to the device, or GSO: Python */
	C_ENCAP_OTHER,      /* malformed, not IPv6 (the client: not from our address...): Python */
	C_ENCAP_ERROR,      /* a helper failed: Python */
	C_DECAP,            /* decapsulated and handed to the IPv6 stack */
	C_DECAP_NO_PEER,    /* inner source not in the map: Python */
	C_DECAP_MAPPING,    /* in the map, but from another IPv4:port: Python (the core decides) */
	C_DECAP_OTHER,      /* not ours, bubbles, ICMPv6, options, fragments...: Python */
	C_DECAP_ERROR,      /* a helper failed: Python */
	C_ENCAP_STALE,      /* in the map, last reception too old (section 5.2.4): Python */
	C_SHARED,
};

/* The IPv6 packet at `l2` of an encapsulating program, or NULL (then the caller counts
 * C_ENCAP_OTHER and passes it up): within the packet, Ethernet type IPv6 on an L2 device, and
 * the core's first checks of receive_tun, version 6 and a payload length within the packet. */
static __always_inline struct ipv6hdr *teredo_ip6_at(struct __sk_buff *skb, __u32 l2)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + l2;

	if ((void *)(ip6 + 1) > data_end || skb->len < l2 + TEREDO_IP6_LEN)
		return NULL;
	if (l2 && *(__be16 *)(data + 12) != bpf_htons(ETH_P_IPV6))
		return NULL;
	if (ip6->version != 6 || TEREDO_IP6_LEN + bpf_ntohs(ip6->payload_len) > skb->len - l2)
		return NULL;
	return ip6;
}

/* The trusted peer the destination names (sections 5.2.4 case 1 and 5.4.1), or NULL, counted
 * C_ENCAP_NO_PEER. */
static __always_inline struct teredo_peer *teredo_encap_peer(void *peers, void *counters,
							     const struct ipv6hdr *ip6)
{
	struct teredo_peer *peer;
	struct teredo_key key;

	__builtin_memcpy(key.addr, ip6->daddr.in6_u.u6_addr8, 16);
	peer = bpf_map_lookup_elem(peers, &key);
	if (!peer)
		teredo_count(counters, C_ENCAP_NO_PEER);
	return peer;
}

/* 1 when the TCP or UDP checksum of the packet is left to the device (then counted as
 * C_ENCAP_PARTIAL where no device completes it after us: teredo_ip6_l4_looks_partial). */
static __always_inline int teredo_l4_partial(struct __sk_buff *skb, __u32 l2,
					     const struct ipv6hdr *ip6)
{
	__u32 at = ip6->nexthdr == IPPROTO_TCP ? 16 : 6;
	__u16 check;

	if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
		return 0;
	return bpf_skb_load_bytes(skb, l2 + TEREDO_IP6_LEN + at, &check, sizeof(check)) == 0 &&
	       teredo_ip6_l4_looks_partial(ip6, check);
}

/* What every encapsulating program does once the core's rule says "send to this trusted peer"
 * (sections 5.2.4 case 1 and 5.4.1): the `len`-byte IPv6 packet at `l2` in a datagram from
 * (saddr, sport) to the peer's mapping (`flags`: more bpf_skb_adjust_room flags), an L2 header
 * for bpf_redirect_neigh, the peer's last_tx stamped and C_ENCAP counted. TC_ACT_UNSPEC then
 * (the caller redirects the packet), else the verdict to return: TC_ACT_OK when it is unchanged
 * (too long, or a helper failed first), TC_ACT_SHOT when half made. */
static __always_inline int teredo_encap_send(struct __sk_buff *skb, __u32 l2, __u32 len,
					     struct teredo_peer *peer, __be32 saddr, __be16 sport,
					     __u64 flags, void *counters, __u32 now)
{
	struct teredo_outer outer;

	if (len > 0xffff - TEREDO_ENCAP_LEN) {
		teredo_count(counters, C_ENCAP_OTHER);
		return TC_ACT_OK;
	}
	teredo_outer_fill(&outer, saddr, sport, peer->ipv4, peer->port, len);
	if (teredo_encap(skb, l2, &outer, flags)) {
		teredo_count(counters, C_ENCAP_ERROR);
		return TC_ACT_OK; /* adjust_room failed before changing the packet */
	}
	if (l2) {
		if (teredo_set_ethertype(skb, ETH_P_IP))
			return TC_ACT_SHOT; /* the packet is half made: nothing else may see it */
	} else {
		/* From an L3 device (the TUN) to an Ethernet one: an L2 header for
		 * bpf_redirect_neigh, which fills in the addresses (Cilium's add_l2_hdr). */
		__be16 proto = bpf_htons(ETH_P_IP);

		if (bpf_skb_change_head(skb, ETH_HLEN, 0) ||
		    bpf_skb_store_bytes(skb, 12, &proto, sizeof(proto), 0))
			return TC_ACT_SHOT;
	}
	teredo_touch(&peer->last_tx, now);
	teredo_count(counters, C_ENCAP);
	return TC_ACT_UNSPEC;
}

/* The IPv4 header at `l2` of a datagram for the daemon's socket at (ipv4, or any when 0; port),
 * with room for the UDP and inner IPv6 headers behind it, or NULL (then the caller counts
 * C_DECAP_OTHER and passes it up unchanged): Ethernet type IPv4 on an L2 device, IPv4 without
 * options, not a fragment, UDP, the IPv4 and UDP lengths consistent and within the packet.
 * *ulen is then the UDP length. */
static __always_inline struct iphdr *teredo_outer_at(struct __sk_buff *skb, __u32 l2, __be32 ipv4,
						     __be16 port, __u32 *ulen)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + l2;
	struct udphdr *udp = (void *)(ip + 1);
	struct ipv6hdr *ip6 = (void *)(udp + 1);
	__u32 tot;

	if ((void *)(ip6 + 1) > data_end)
		return NULL;
	if (l2 && *(__be16 *)(data + 12) != bpf_htons(ETH_P_IP))
		return NULL;
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(0x3fff)))
		return NULL;
	if (ipv4 && ip->daddr != ipv4)
		return NULL;
	if (udp->dest != port)
		return NULL;
	tot = bpf_ntohs(ip->tot_len);
	*ulen = bpf_ntohs(udp->len);
	if (tot + l2 > skb->len || *ulen + sizeof(*ip) != tot)
		return NULL;
	return ip;
}

/* 1 when nobody verified the datagram's UDP checksum: there is one, no device verified it
 * (CHECKSUM_UNNECESSARY) and no sender of this host or a veth peer left it to the device
 * (CHECKSUM_PARTIAL, which the stack trusts as well). The stack would check it. */
static __always_inline int teredo_udp4_unverified(struct __sk_buff *skb, const struct iphdr *ip,
						  const struct udphdr *udp)
{
	return udp->check && bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY) < 0 &&
	       !teredo_udp4_looks_partial(ip, udp);
}

/* 1 when the inner packet is one a decapsulating program may forward: a bare IPv6 packet
 * filling the `ulen`-byte datagram exactly (no authentication, origin indication or trailer),
 * TCP or UDP (not a bubble, not ICMPv6). */
static __always_inline int teredo_inner_ok(const struct ipv6hdr *ip6, __u32 ulen)
{
	if (ip6->version != 6 ||
	    TEREDO_IP6_LEN + bpf_ntohs(ip6->payload_len) + sizeof(struct udphdr) != ulen)
		return 0;
	return ip6->nexthdr == IPPROTO_TCP || ip6->nexthdr == IPPROTO_UDP;
}

/* The trusted peer the inner source names, heard at its recorded mapping (reception case 1 of
 * sections 5.2.3 and 5.4.2), or NULL, counted C_DECAP_NO_PEER or C_DECAP_MAPPING. */
static __always_inline struct teredo_peer *teredo_decap_peer(void *peers, void *counters,
							     const struct iphdr *ip,
							     const struct udphdr *udp,
							     const struct ipv6hdr *ip6)
{
	struct teredo_peer *peer;
	struct teredo_key key;

	__builtin_memcpy(key.addr, ip6->saddr.in6_u.u6_addr8, 16);
	peer = bpf_map_lookup_elem(peers, &key);
	if (!peer) {
		teredo_count(counters, C_DECAP_NO_PEER);
		return NULL;
	}
	if (peer->ipv4 != ip->saddr || peer->port != udp->source) {
		teredo_count(counters, C_DECAP_MAPPING);
		return NULL;
	}
	return peer;
}

/* What every decapsulating program does once it forwards the packet of `peer`: the outer header
 * removed, the Ethernet type IPv6 on an L2 device, the peer's last_rx stamped and C_DECAP
 * counted. TC_ACT_UNSPEC then (the caller hands the packet on), else the verdict to return:
 * TC_ACT_OK when the helper failed before changing the packet, TC_ACT_SHOT when half made. */
static __always_inline int teredo_decap_forward(struct __sk_buff *skb, __u32 l2,
						struct teredo_peer *peer, void *counters, __u32 now)
{
	if (teredo_decap(skb)) {
		teredo_count(counters, C_DECAP_ERROR);
		return TC_ACT_OK;
	}
	if (l2 && teredo_set_ethertype(skb, ETH_P_IPV6))
		return TC_ACT_SHOT;
	teredo_touch(&peer->last_rx, now);
	teredo_count(counters, C_DECAP);
	return TC_ACT_UNSPEC;
}

#endif
