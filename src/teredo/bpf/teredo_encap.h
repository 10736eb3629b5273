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

/* Stamp without dirtying the cache line on every packet. */
static __always_inline void teredo_touch(__u32 *field)
{
	__u32 now = teredo_stamp();

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
 * becomes IPv4. Returns 0 or a negative errno (the packet is then unchanged). */
static __always_inline int teredo_encap(struct __sk_buff *skb, __u32 l2, const struct teredo_outer *h)
{
	int err = bpf_skb_adjust_room(skb, TEREDO_ENCAP_LEN, BPF_ADJ_ROOM_MAC,
				      BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP);

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

#endif
