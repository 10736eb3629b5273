// SPDX-License-Identifier: GPL-2.0-or-later
/* The relay's kernel data path (RFC 4380 section 5.4; docs/kernel.md). Two programs, one job
 * each; the sans-I/O core (core/relay.py) decides everything and io/kmirror.py copies its
 * trusted peers into `relay_peers`:
 *
 * relay_encap, tcx egress of the relay's TUN: native IPv6 routed to a trusted peer (section
 *   5.4.1 case 1) is encapsulated to the peer's mapping, from the relay's own IPv4:port, and
 *   redirected out of the IPv4 interface. At this point the IPv6 stack has routed the packet
 *   and applied the hop limit rule (decrement; ICMPv6 time exceeded at <= 1) exactly as on the
 *   Python path, which reads the same packet from the TUN and sends it unchanged. Locally sent
 *   packets of a host-specific relay pass here too.
 * relay_decap, tcx ingress of the IPv4 interface: a datagram to the relay's port whose inner
 *   IPv6 source is a trusted peer heard at its recorded mapping (section 5.4.2, the core's
 *   reception case 1) and whose destination the relay serves is decapsulated and handed to the
 *   IPv6 stack, which routes it as it would have routed it from the TUN.
 *
 * Everything else returns TC_ACT_OK unchanged: the Python path, exactly as without us. */
#include "teredo_encap.h"

#define CFG_HOST_SPECIFIC 1
/* Section 5.2.4: a trusted peer is sent to directly only while valid, 30 s after its last
 * reception. The mirror keeps last_rx at the newest reception either path saw (at most one sync
 * late, so the kernel's view is never the newer); one second of margin for the clocks' units:
 * 29 s in units of 2**20 ns. A stale peer goes up to Python, which decides (ping test). */
#define RELAY_VALID_UNITS 27656

/* Written once by the daemon (one entry). Addresses and ports in network order. */
struct relay_config {
	__be32 ipv4;        /* the relay's IPv4 (outer source; decap: outer destination) */
	__be16 port;        /* the relay's UDP port; 0 = programs pass everything */
	__u8 encap_l2;      /* bytes of L2 header at relay_encap: 0 on a TUN, 14 on Ethernet */
	__u8 decap_l2;      /* the same at relay_decap */
	__u32 out_ifindex;  /* where encapsulated packets go (bpf_redirect_neigh routes there) */
	__u32 flags;        /* CFG_HOST_SPECIFIC */
	__u8 prefix[4];     /* the Teredo prefix, 2001:0000::/32 */
};

enum relay_counter {
	C_ENCAP = 0,        /* encapsulated and redirected */
	C_ENCAP_NO_PEER,    /* destination not in the map: Python */
	C_ENCAP_PARTIAL,    /* checksum left to the device, or GSO: Python */
	C_ENCAP_OTHER,      /* malformed or not IPv6: Python */
	C_ENCAP_ERROR,      /* a helper failed: Python */
	C_DECAP,            /* decapsulated and handed to the IPv6 stack */
	C_DECAP_NO_PEER,    /* inner source not in the map: Python */
	C_DECAP_MAPPING,    /* in the map, but from another IPv4:port: Python (the core drops) */
	C_DECAP_OTHER,      /* not ours, bubbles, ICMPv6, options, fragments...: Python */
	C_DECAP_ERROR,
	C_ENCAP_STALE,      /* in the map, but no reception for RELAY_VALID_UNITS: Python */
	C_DECAP_CHECKSUM,   /* a UDP checksum nobody verified that is wrong, or too long to check */
	C_MAX,
};

/* The active trusted peers (issue 8 memory; bench/kmap.py, docs/peers.md "Kernel maps"): an LRU
 * hash of a fixed 16,384 entries (1.5 MiB, paid at load, never growing). When more peers are
 * trusted, the kernel keeps the most recently used and evicts the others, which then take the
 * Python path: an entry missing only ever means "Python". io/krelay.py may set it smaller. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct teredo_key);
	__type(value, struct teredo_peer);
} relay_peers SEC(".maps");

/* A host-specific relay's own global addresses (section 5.4): the only destinations it serves. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct teredo_key);
	__type(value, __u8);
} relay_own SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct relay_config);
} relay_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} relay_counters SEC(".maps");

static __always_inline int encap_at(struct __sk_buff *skb, const struct relay_config *cfg, const __u32 l2)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + l2;
	struct teredo_peer *peer;
	struct teredo_outer outer;
	struct teredo_key key;
	__u32 len = skb->len - l2;
	__u16 check;

	if ((void *)(ip6 + 1) > data_end || skb->len < l2 + TEREDO_IP6_LEN) {
		teredo_count(&relay_counters, C_ENCAP_OTHER);
		return TC_ACT_OK;
	}
	if (l2 && *(__be16 *)(data + 12) != bpf_htons(ETH_P_IPV6)) {
		teredo_count(&relay_counters, C_ENCAP_OTHER);
		return TC_ACT_OK;
	}
	/* The core's checks of receive_tun: version 6, payload length within the packet. */
	if (ip6->version != 6 || TEREDO_IP6_LEN + bpf_ntohs(ip6->payload_len) > len) {
		teredo_count(&relay_counters, C_ENCAP_OTHER);
		return TC_ACT_OK;
	}
	__builtin_memcpy(key.addr, ip6->daddr.in6_u.u6_addr8, 16);
	peer = bpf_map_lookup_elem(&relay_peers, &key);
	if (!peer) {
		teredo_count(&relay_counters, C_ENCAP_NO_PEER);
		return TC_ACT_OK;
	}
	if ((__u32)(teredo_stamp() - peer->last_rx) >= RELAY_VALID_UNITS) {
		teredo_count(&relay_counters, C_ENCAP_STALE);
		return TC_ACT_OK;
	}
	if (skb->gso_segs > 1 || skb->gso_size) {
		/* Segmenting is the TUN path's job (validate_xmit_skb). */
		teredo_count(&relay_counters, C_ENCAP_PARTIAL);
		return TC_ACT_OK;
	}
	if (ip6->nexthdr == IPPROTO_TCP || ip6->nexthdr == IPPROTO_UDP) {
		__u32 at = ip6->nexthdr == IPPROTO_TCP ? 16 : 6;

		if (bpf_skb_load_bytes(skb, l2 + TEREDO_IP6_LEN + at, &check, sizeof(check)) == 0 &&
		    teredo_ip6_l4_looks_partial(ip6, check)) {
			teredo_count(&relay_counters, C_ENCAP_PARTIAL);
			return TC_ACT_OK;
		}
	}
	if (len > 0xffff - TEREDO_ENCAP_LEN) {
		teredo_count(&relay_counters, C_ENCAP_OTHER);
		return TC_ACT_OK;
	}
	teredo_outer_fill(&outer, cfg->ipv4, cfg->port, peer->ipv4, peer->port, len);
	if (teredo_encap(skb, l2, &outer)) {
		teredo_count(&relay_counters, C_ENCAP_ERROR);
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
	teredo_touch(&peer->last_tx);
	teredo_count(&relay_counters, C_ENCAP);
	return bpf_redirect_neigh(cfg->out_ifindex, NULL, 0, 0);
}

SEC("tc")
int relay_encap(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct relay_config *cfg = bpf_map_lookup_elem(&relay_cfg, &zero);

	if (!cfg || !cfg->port)
		return TC_ACT_OK;
	if (cfg->encap_l2)
		return encap_at(skb, cfg, ETH_HLEN);
	return encap_at(skb, cfg, 0);
}

/* Scratch space for checking a datagram's UDP checksum (one per CPU; tc programs do not nest). */
#define CSUM_CHUNK 512 /* bpf_csum_diff's limit */
#define CSUM_CHUNKS 3  /* datagrams up to 1536 bytes: the lab's and the Internet's MTU */
struct relay_scratch {
	__u8 b[CSUM_CHUNK];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct relay_scratch);
} relay_scratch SEC(".maps");

/* 1 when the UDP checksum of the `ulen`-byte datagram at `off` verifies (RFC 768: the one's
 * complement sum over the IPv4 pseudo header, the header and the data is 0xffff), as the
 * stack's UDP receive path would check it before the daemon's socket saw the datagram. */
static __always_inline int udp4_checksum_ok(struct __sk_buff *skb, __u32 off, __u32 ulen,
					    __be32 saddr, __be32 daddr)
{
	__u32 zero = 0;
	struct relay_scratch *buf = bpf_map_lookup_elem(&relay_scratch, &zero);
	__u64 sum = teredo_sum_words((const __u8 *)&saddr, 4) +
		    teredo_sum_words((const __u8 *)&daddr, 4) + IPPROTO_UDP + ulen;

	if (!buf || ulen < 8 || ulen > CSUM_CHUNK * CSUM_CHUNKS)
		return 0;
#pragma unroll
	for (int i = 0; i < CSUM_CHUNKS; i++) {
		__u32 done = i * CSUM_CHUNK;
		__u32 n, pad;
		__s64 part;

		if (done >= ulen)
			break;
		n = ulen - done;
		if (n > CSUM_CHUNK)
			n = CSUM_CHUNK;
		if (n < 1)
			return 0;
		/* The last 4-byte word, zeroed first: the pad to a multiple of 4 adds nothing. */
		pad = (n - 1) & ~3U;
		if (pad > CSUM_CHUNK - 4)
			return 0;
		*(__u32 *)(buf->b + pad) = 0;
		if (bpf_skb_load_bytes(skb, off + done, buf->b, n))
			return 0;
		part = bpf_csum_diff(NULL, 0, (__be32 *)buf->b, pad + 4, 0);
		if (part < 0)
			return 0;
		/* bpf_csum_diff adds the bytes as host-order words: its folded sum is the network-order
		 * sum byte-swapped (one's complement sums commute with the swap; chunks are even). */
		sum += bpf_ntohs(teredo_fold((__u32)part));
	}
	return teredo_fold(sum) == 0xffff;
}

static __always_inline int decap_at(struct __sk_buff *skb, const struct relay_config *cfg, const __u32 l2)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + l2;
	struct udphdr *udp = (void *)(ip + 1);
	struct ipv6hdr *ip6 = (void *)(udp + 1);
	struct teredo_peer *peer;
	struct teredo_key key;
	__u32 tot, ulen;
	__be32 saddr, daddr;
	int verify;
	__u8 d0;

	if ((void *)(ip6 + 1) > data_end)
		goto other;
	if (l2 && *(__be16 *)(data + 12) != bpf_htons(ETH_P_IP))
		goto other;
	/* Outer: IPv4 without options, not a fragment, UDP, to the relay's own address and port. */
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP ||
	    (ip->frag_off & bpf_htons(0x3fff)))
		goto other;
	if (cfg->ipv4 && ip->daddr != cfg->ipv4)
		goto other;
	if (udp->dest != cfg->port)
		goto other;
	tot = bpf_ntohs(ip->tot_len);
	ulen = bpf_ntohs(udp->len);
	if (tot + l2 > skb->len || ulen + sizeof(*ip) != tot)
		goto other;
	/* The UDP checksum: the stack would verify it. Accepted here when there is none, when the
	 * device verified it (CHECKSUM_UNNECESSARY), or when it is left to the device by a sender
	 * on this host or a veth peer (CHECKSUM_PARTIAL, which the stack trusts as well); otherwise
	 * verified below (udp4_checksum_ok) before the packet is decapsulated. */
	verify = udp->check && bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY) < 0 &&
		 !teredo_udp4_looks_partial(ip, udp);
	saddr = ip->saddr;
	daddr = ip->daddr;
	/* Inner: a bare IPv6 packet filling the datagram exactly (no origin indication or
	 * authentication, no trailers), TCP or UDP (not a bubble, not ICMPv6), hop limit > 1. */
	if (ip6->version != 6 || TEREDO_IP6_LEN + bpf_ntohs(ip6->payload_len) + sizeof(*udp) != ulen)
		goto other;
	if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
		goto other;
	if (ip6->hop_limit <= 1)
		goto other;
	/* Destination: one the relay serves (core/relay.py _from_teredo). */
	if (cfg->flags & CFG_HOST_SPECIFIC) {
		__builtin_memcpy(key.addr, ip6->daddr.in6_u.u6_addr8, 16);
		if (!bpf_map_lookup_elem(&relay_own, &key))
			goto other;
	} else {
		d0 = ip6->daddr.in6_u.u6_addr8[0];
		if ((d0 & 0xe0) != 0x20 || __builtin_memcmp(ip6->daddr.in6_u.u6_addr8, cfg->prefix, 4) == 0)
			goto other;
	}
	/* Source: a trusted peer, heard at its recorded mapping (section 5.4.2, reception case 1). */
	__builtin_memcpy(key.addr, ip6->saddr.in6_u.u6_addr8, 16);
	peer = bpf_map_lookup_elem(&relay_peers, &key);
	if (!peer) {
		teredo_count(&relay_counters, C_DECAP_NO_PEER);
		return TC_ACT_OK;
	}
	if (peer->ipv4 != ip->saddr || peer->port != udp->source) {
		teredo_count(&relay_counters, C_DECAP_MAPPING);
		return TC_ACT_OK;
	}
	/* Last, once everything else says "forward": a checksum no device verified (CHECKSUM_NONE,
	 * or CHECKSUM_COMPLETE from some NICs), which the stack would check on the Python path. */
	if (verify && !udp4_checksum_ok(skb, l2 + sizeof(*ip), ulen, saddr, daddr)) {
		teredo_count(&relay_counters, C_DECAP_CHECKSUM);
		return TC_ACT_OK;
	}
	if (teredo_decap(skb)) {
		teredo_count(&relay_counters, C_DECAP_ERROR);
		return TC_ACT_OK;
	}
	if (l2 && teredo_set_ethertype(skb, ETH_P_IPV6))
		return TC_ACT_SHOT;
	teredo_touch(&peer->last_rx);
	teredo_count(&relay_counters, C_DECAP);
	return TC_ACT_OK; /* now an IPv6 packet: the stack routes it */
other:
	teredo_count(&relay_counters, C_DECAP_OTHER);
	return TC_ACT_OK;
}

SEC("tc")
int relay_decap(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct relay_config *cfg = bpf_map_lookup_elem(&relay_cfg, &zero);

	if (!cfg || !cfg->port)
		return TC_ACT_OK;
	if (cfg->decap_l2)
		return decap_at(skb, cfg, ETH_HLEN);
	return decap_at(skb, cfg, 0);
}

char LICENSE[] SEC("license") = "GPL";
