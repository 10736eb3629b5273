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

/* The slots shared with the client (enum teredo_counter, teredo_encap.h; C_ENCAP_STALE: no
 * reception for RELAY_VALID_UNITS), then the relay's own. */
enum relay_counter {
	C_DECAP_CHECKSUM = C_SHARED, /* a UDP checksum nobody verified that is wrong, or too long
				      * to check */
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
	struct ipv6hdr *ip6 = teredo_ip6_at(skb, l2); /* the core's checks of receive_tun */
	struct teredo_peer *peer;
	__u32 now;
	int ret;

	if (!ip6) {
		teredo_count(&relay_counters, C_ENCAP_OTHER);
		return TC_ACT_OK;
	}
	peer = teredo_encap_peer(&relay_peers, &relay_counters, ip6);
	if (!peer)
		return TC_ACT_OK;
	now = teredo_stamp(); /* once: the validity check and the last_tx stamp */
	if ((__u32)(now - peer->last_rx) >= RELAY_VALID_UNITS) {
		teredo_count(&relay_counters, C_ENCAP_STALE);
		return TC_ACT_OK;
	}
	/* Segmenting is the TUN path's job (validate_xmit_skb). */
	if (skb->gso_segs > 1 || skb->gso_size || teredo_l4_partial(skb, l2, ip6)) {
		teredo_count(&relay_counters, C_ENCAP_PARTIAL);
		return TC_ACT_OK;
	}
	ret = teredo_encap_send(skb, l2, skb->len - l2, peer, cfg->ipv4, cfg->port, 0,
				&relay_counters, now);
	if (ret != TC_ACT_UNSPEC)
		return ret;
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
	__u32 ulen;
	struct iphdr *ip = teredo_outer_at(skb, l2, cfg->ipv4, cfg->port, &ulen);
	struct udphdr *udp;
	struct ipv6hdr *ip6;
	struct teredo_peer *peer;
	struct teredo_key key;
	__be32 saddr, daddr;
	int verify, ret;
	__u8 d0;

	/* Outer: IPv4 without options, not a fragment, UDP, to the relay's own address and port. */
	if (!ip)
		goto other;
	udp = (void *)(ip + 1);
	ip6 = (void *)(udp + 1);
	/* The UDP checksum: the stack would verify it. Accepted here when there is none, or a device
	 * verified it or will complete it (teredo_udp4_unverified); otherwise verified below
	 * (udp4_checksum_ok) before the packet is decapsulated. */
	verify = teredo_udp4_unverified(skb, ip, udp);
	saddr = ip->saddr;
	daddr = ip->daddr;
	/* Inner: a bare TCP or UDP IPv6 packet filling the datagram exactly, hop limit > 1. */
	if (!teredo_inner_ok(ip6, ulen) || ip6->hop_limit <= 1)
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
	peer = teredo_decap_peer(&relay_peers, &relay_counters, ip, udp, ip6);
	if (!peer)
		return TC_ACT_OK;
	/* Last, once everything else says "forward": a checksum no device verified (CHECKSUM_NONE,
	 * or CHECKSUM_COMPLETE from some NICs), which the stack would check on the Python path. */
	if (verify && !udp4_checksum_ok(skb, l2 + sizeof(*ip), ulen, saddr, daddr)) {
		teredo_count(&relay_counters, C_DECAP_CHECKSUM);
		return TC_ACT_OK;
	}
	ret = teredo_decap_forward(skb, l2, peer, &relay_counters, teredo_stamp());
	if (ret != TC_ACT_UNSPEC)
		return ret;
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
